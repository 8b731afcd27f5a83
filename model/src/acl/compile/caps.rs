//! The capacities of one generation's tables that the configuration sets
//! (`[acl]`): the long-prefix table, the phased tables' cells and the
//! bitmap walk's class tables. The datapath's maps are sized from them when
//! it is loaded and the compiler refuses a rule set that does not fit them,
//! naming the key. Defaults are the largest tables (see the README,
//! "Capacities").
use xdpgate_common::acl::{
    MIN_PREFIX_BUCKET_BITS, PHASE_CELLS, PREFIX_BUCKET_BITS, PREFIX_BUCKET_SLOTS, V6_BLOCKS,
    WALK_ADDR_CLASSES, WALK_PORT_CLASSES, leaf, prefix_entries,
};

use super::{
    super::model::{AclError, Exceeded},
    phases::{Dims, Phases},
};

/// Fewest address classes of the walk tables: every rule set has the two
/// "no rule condition" classes of IPv4 and IPv6.
pub const MIN_WALK_ADDR_CLASSES: u32 = 2;
/// Fewest port classes of the walk tables: the class of packets without
/// ports.
pub const MIN_WALK_PORT_CLASSES: u32 = 1;

/// Capacities of one generation's ACL tables (`[acl]`; fixed when the
/// datapath is loaded, a change needs a restart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacities {
    /// Index bits of the long-prefix table: `1 << bits` buckets of
    /// [`PREFIX_BUCKET_SLOTS`] slots (`[acl] prefix_slots`, rounded up to a
    /// power of two).
    pub prefix_bucket_bits: u32,
    /// `u16` cells of the phased tables (`[acl] phase_cells`; 0: never
    /// phased, every cache miss walks the rule bitmaps).
    pub phase_cells: u32,
    /// Address classes of the walk tables (`[acl] walk_addr_classes`).
    pub walk_addr_classes: u32,
    /// Port classes of each port dimension's walk table (`[acl]
    /// walk_port_classes`).
    pub walk_port_classes: u32,
    /// Blocks of the IPv6 address trie (`[acl] v6_blocks`; 1 KiB each).
    /// Not a limit: when they run out, regions keep the length search.
    pub v6_blocks: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        Capacities::MAX
    }
}

impl Capacities {
    /// The largest tables (the defaults).
    pub const MAX: Capacities = Capacities {
        prefix_bucket_bits: PREFIX_BUCKET_BITS,
        phase_cells: PHASE_CELLS,
        walk_addr_classes: WALK_ADDR_CLASSES,
        walk_port_classes: WALK_PORT_CLASSES,
        v6_blocks: V6_BLOCKS,
    };

    /// Fewest slots `[acl] prefix_slots` accepts.
    pub const MIN_PREFIX_SLOTS: u32 = (1 << MIN_PREFIX_BUCKET_BITS) * PREFIX_BUCKET_SLOTS as u32;
    /// Most slots `[acl] prefix_slots` accepts.
    pub const MAX_PREFIX_SLOTS: u32 = (1 << PREFIX_BUCKET_BITS) * PREFIX_BUCKET_SLOTS as u32;

    /// The index bits of a long-prefix table of at least `slots` slots (a
    /// power of two buckets), or `None` outside
    /// [`MIN_PREFIX_SLOTS`](Self::MIN_PREFIX_SLOTS)`..=`[`MAX_PREFIX_SLOTS`](Self::MAX_PREFIX_SLOTS).
    pub fn prefix_bits_for(slots: u32) -> Option<u32> {
        if !(Self::MIN_PREFIX_SLOTS..=Self::MAX_PREFIX_SLOTS).contains(&slots) {
            return None;
        }
        let buckets = slots
            .div_ceil(PREFIX_BUCKET_SLOTS as u32)
            .next_power_of_two();
        Some(buckets.trailing_zeros())
    }

    /// Buckets of the long-prefix table.
    pub fn prefix_buckets(&self) -> u32 {
        1 << self.prefix_bucket_bits
    }

    /// Slots of the long-prefix table (what `[acl] prefix_slots` rounds to).
    pub fn prefix_slots(&self) -> u32 {
        self.prefix_buckets() * PREFIX_BUCKET_SLOTS as u32
    }

    /// Most entries the long-prefix table is filled to (95% of its slots).
    pub fn prefix_entries(&self) -> u32 {
        prefix_entries(self.prefix_bucket_bits)
    }

    /// Elements of the phased cell array (four `u16` cells each; at least
    /// one, as the kernel has no empty arrays).
    pub fn phase_quads(&self) -> u32 {
        self.phase_cells.div_ceil(4).max(1)
    }

    /// Whether the datapath can be loaded with these capacities.
    pub fn is_valid(&self) -> bool {
        (MIN_PREFIX_BUCKET_BITS..=PREFIX_BUCKET_BITS).contains(&self.prefix_bucket_bits)
            && self.phase_cells <= PHASE_CELLS
            && (MIN_WALK_ADDR_CLASSES..=WALK_ADDR_CLASSES).contains(&self.walk_addr_classes)
            && (MIN_WALK_PORT_CLASSES..=WALK_PORT_CLASSES).contains(&self.walk_port_classes)
            && (1..=V6_BLOCKS).contains(&self.v6_blocks)
    }

    /// Why going from these capacities (in force) to `next` needs a restart,
    /// if it does: the tables are sized when the datapath is loaded.
    pub fn needs_restart(&self, next: &Capacities) -> Option<String> {
        let keys = [
            ("prefix_slots", self.prefix_slots(), next.prefix_slots()),
            ("phase_cells", self.phase_cells, next.phase_cells),
            (
                "walk_addr_classes",
                self.walk_addr_classes,
                next.walk_addr_classes,
            ),
            (
                "walk_port_classes",
                self.walk_port_classes,
                next.walk_port_classes,
            ),
            ("v6_blocks", self.v6_blocks, next.v6_blocks),
        ];
        let changed: Vec<String> = keys
            .iter()
            .filter(|k| k.1 != k.2)
            .map(|(key, from, to)| format!("[acl] {key} changed from {from} to {to}"))
            .collect();
        (!changed.is_empty()).then(|| {
            format!(
                "{} (the ACL tables are sized when the datapath is loaded)",
                changed.join(", ")
            )
        })
    }

    /// The long-prefix table's check: `have` entries (prefixes longer than
    /// /24 or /16, and markers) against [`prefix_entries`](Self::prefix_entries).
    pub fn check_prefixes(&self, have: usize) -> Result<(), AclError> {
        let max = self.prefix_entries() as usize;
        if have <= max {
            return Ok(());
        }
        Err(AclError::Configured(Exceeded {
            what: "long-prefix table full (IPv4 prefixes longer than /24, IPv6 longer than /16, and search markers)",
            key: "[acl] prefix_slots",
            setting: self.prefix_slots() as usize,
            have,
            max,
        }))
    }

    /// Without phased tables the datapath walks the rule bitmaps, whose
    /// tables hold [`walk_addr_classes`](Self::walk_addr_classes) and
    /// [`walk_port_classes`](Self::walk_port_classes) classes: a rule set
    /// with more classes and no phased tables is refused, naming the key.
    pub fn walk_fits(&self, p: Option<&Phases>, dims: &Dims) -> Result<(), Vec<AclError>> {
        if p.is_some() {
            return Ok(());
        }
        let walk = |what, key, setting: u32, have: usize| {
            (have > setting as usize).then_some(AclError::Configured(Exceeded {
                what,
                key,
                setting: setting as usize,
                have,
                max: setting as usize,
            }))
        };
        let errs: Vec<AclError> = [
            walk(
                "address classes of a rule set over the phased tables' budget (`[acl] phase_cells`) exceed the bitmap walk's table",
                "[acl] walk_addr_classes",
                self.walk_addr_classes,
                dims.bms[leaf::SRC as usize].len(),
            ),
            walk(
                "source port classes of a rule set over the phased tables' budget (`[acl] phase_cells`) exceed the bitmap walk's table",
                "[acl] walk_port_classes",
                self.walk_port_classes,
                dims.bms[leaf::SPORT as usize].len(),
            ),
            walk(
                "destination port/ICMP classes of a rule set over the phased tables' budget (`[acl] phase_cells`) exceed the bitmap walk's table",
                "[acl] walk_port_classes",
                self.walk_port_classes,
                dims.bms[leaf::DPORT as usize].len(),
            ),
        ]
        .into_iter()
        .flatten()
        .collect();
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_slots_round_up_to_a_power_of_two_buckets() {
        struct Case {
            name: &'static str,
            slots: u32,
            bits: Option<u32>,
        }
        let cases = [
            Case {
                name: "below the smallest table",
                slots: 1023,
                bits: None,
            },
            Case {
                name: "the smallest table",
                slots: 1024,
                bits: Some(8),
            },
            Case {
                name: "one slot more doubles the buckets",
                slots: 1025,
                bits: Some(9),
            },
            Case {
                name: "4,096 slots are 1,024 buckets",
                slots: 4096,
                bits: Some(10),
            },
            Case {
                name: "the largest table",
                slots: 4 << 20,
                bits: Some(20),
            },
            Case {
                name: "above the largest table",
                slots: (4 << 20) + 1,
                bits: None,
            },
        ];
        for c in cases {
            assert_eq!(Capacities::prefix_bits_for(c.slots), c.bits, "{}", c.name);
        }
    }

    #[test]
    fn the_default_capacities_are_the_largest_and_valid() {
        let d = Capacities::default();
        assert!(d.is_valid());
        assert_eq!(d.prefix_slots(), Capacities::MAX_PREFIX_SLOTS);
        assert_eq!(d.prefix_entries(), xdpgate_common::acl::PREFIX_ENTRIES);
        assert_eq!(d.phase_quads(), PHASE_CELLS / 4);
    }

    #[test]
    fn no_phased_cells_still_gives_the_kernel_a_one_element_array() {
        let c = Capacities {
            phase_cells: 0,
            ..Capacities::default()
        };
        assert!(c.is_valid());
        assert_eq!(c.phase_quads(), 1);
    }

    #[test]
    fn a_full_long_prefix_table_names_the_key_and_the_setting() {
        let c = Capacities {
            prefix_bucket_bits: 10,
            ..Capacities::default()
        };
        assert!(c.check_prefixes(3876).is_ok(), "95% of 4,096 slots fits");
        let e = c.check_prefixes(3877).unwrap_err().to_string();
        assert_eq!(
            e,
            "long-prefix table full (IPv4 prefixes longer than /24, IPv6 longer than /16, and search markers): 3877 needed, [acl] prefix_slots = 4096 holds 3876"
        );
    }

    #[test]
    fn only_a_changed_capacity_needs_a_restart() {
        let d = Capacities::default();
        assert_eq!(d.needs_restart(&d), None);
        let small = Capacities {
            prefix_bucket_bits: 10,
            phase_cells: 0,
            ..d
        };
        assert_eq!(
            d.needs_restart(&small).as_deref(),
            Some(
                "[acl] prefix_slots changed from 4194304 to 4096, [acl] phase_cells changed from 16777216 to 0 (the ACL tables are sized when the datapath is loaded)"
            )
        );
    }
}
