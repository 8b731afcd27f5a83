//! The dimensions other than the addresses: interfaces, protocols, ports
//! (shared by the full compile and the incremental compiler's rule changes).
use std::collections::BTreeMap;

use xdpgate_common::{MAX_IFACES, acl::Bitmap};

use super::{Bits, port_dimension};
use crate::acl::model::{AclError, AclState, Rule, Verdict};

/// The tables of the dimensions other than the addresses.
pub(super) struct RuleTables {
    pub(super) iface_bm: Vec<Bitmap>,
    pub(super) default_verdicts: Vec<Verdict>,
    pub(super) proto_bm: Vec<Bitmap>,
    pub(super) sport_class: Vec<u16>,
    pub(super) sport_bm: Vec<Bitmap>,
    pub(super) dport_class: Vec<u16>,
    pub(super) dport_bm: Vec<Bitmap>,
}

/// Builds the interface, protocol and port tables of `rules` (in evaluation
/// order); the errors are capacity errors of the port dimensions.
pub(super) fn rule_tables(
    state: &AclState,
    rules: &[&Rule],
    slots: &BTreeMap<String, u32>,
) -> (RuleTables, Vec<AclError>) {
    let n = rules.len();
    let virtual_bit = |slot: u32| n + slot as usize;
    let mut errs = Vec::new();

    // Interface dimension: one bitmap per slot.
    let mut iface_bm = Vec::with_capacity(MAX_IFACES as usize);
    for slot in 0..MAX_IFACES {
        let mut b = Bits::new();
        for (i, r) in rules.iter().enumerate() {
            let ok = match &r.iface {
                None => true,
                Some(name) => slots.get(name) == Some(&slot),
            };
            if ok {
                b.set(i);
            }
        }
        b.set(virtual_bit(slot));
        iface_bm.push(b.0);
    }
    let mut default_verdicts = vec![Verdict::Allow; MAX_IFACES as usize];
    for (name, slot) in slots {
        default_verdicts[*slot as usize] = state.policy(name);
    }

    // Protocol dimension: one bitmap per protocol number.
    let proto_bm: Vec<Bitmap> = (0..=255u8)
        .map(|p| {
            let mut b = Bits::new();
            for (i, r) in rules.iter().enumerate() {
                if r.proto.is_none_or(|rp| rp == p) {
                    b.set(i);
                }
            }
            for slot in 0..MAX_IFACES {
                b.set(virtual_bit(slot));
            }
            b.0
        })
        .collect();

    // Port dimensions.
    let (sport_class, sport_bm) = match port_dimension(rules, n, false) {
        Ok(v) => v,
        Err(e) => {
            errs.push(e);
            (Vec::new(), Vec::new())
        }
    };
    let (dport_class, dport_bm) = match port_dimension(rules, n, true) {
        Ok(v) => v,
        Err(e) => {
            errs.push(e);
            (Vec::new(), Vec::new())
        }
    };
    let tables = RuleTables {
        iface_bm,
        default_verdicts,
        proto_bm,
        sport_class,
        sport_bm,
        dport_class,
        dport_bm,
    };
    (tables, errs)
}
