//! The datapath: the XDP object built from `xdp-prog`, loaded and verified,
//! attached to interfaces in an explicit mode, its maps pinned, and torn down
//! again. Everything the controllers write goes through methods of
//! [`Datapath`], one file per group of maps: `ifaces` (interfaces and bound
//! addresses), `acl` (the double-buffered ACL tables and rule counters), `lb`
//! (services, backends, rings), `decap`, `limit` (the bucket table's size,
//! the DDoS program of limits and SYN cookies, the SYN-cookie configuration,
//! the per-rule limit and cookie counters), `counters`, and [`stats`] (the
//! counters as `xdpgate stats` reads them from the pins).
//!
//! The controllers do not name [`Datapath`]: they write through the traits of
//! [`seam`] ([`AclTables`], [`LbMaps`], [`LocalAddrs`], with [`AddrKernel`]
//! for the kernel's addresses), which `Datapath` implements and which the
//! in-memory fake of unit tests (`fake`, `cfg(test)`) implements with
//! failure injection.
use std::{collections::BTreeMap, io, os::fd::AsFd as _, path::PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, MapError},
    programs::{ProgramError, Xdp},
};
use thiserror::Error;
use xdpgate_common::{
    EventConfig, MAX_IFACES, PROGRAM_NAME,
    acl::PREFIX_BITS_GLOBAL,
    lb::{MAX_SERVICES, ring_entries},
    limit::{MAX_BUCKETS, MIN_BUCKETS, maps as limit_maps},
    maps,
    pins::Meta,
};
use xdpgate_model::{acl::compile::Capacities, iface::XdpMode, lb::LoadOptions};

use crate::{
    paths::Paths,
    sys::{self, SysError, bpf::RcuBarrier, object},
};

mod acl;
mod acl_delta;
mod counters;
mod decap;
#[cfg(test)]
pub(crate) mod fake;
mod ifaces;
mod lb;
mod limit;
mod links;
pub mod pins;
pub mod seam;
pub mod stats;
mod timing;

pub use lb::RouteGen;
pub use limit::{MapSizes, RuleLimitStats, limit_totals};
pub use links::{Attached, Enforced};
pub use pins::maps_dir;
pub use pins::{Found, PinDir, PinError, PinnedLink};
pub use seam::{AclTables, AddrKernel, IfaceTable, LbMaps, LocalAddrs, RcuWait, SystemKernel};
pub use timing::Wrapper;

/// Name of the steering program in the object (tail-called by the main one).
pub const STEER_PROGRAM_NAME: &str = "xdpgate_steer";

/// Name of the DDoS program in the object (tail-called by the main one for
/// the packets that rules with a limit or `syncookie` allow).
pub const DDOS_PROGRAM_NAME: &str = "xdpgate_ddos";

/// The XDP object built by `build.rs` from the `xdp-prog` crate.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdpgate-xdp"));

/// Oldest supported kernel (major, minor): the datapath is verified on 6.1 and
/// newer series by `cargo xtask vmtest`.
pub const MIN_KERNEL: (u32, u32) = (6, 1);

/// Errors of loading and attaching the datapath.
#[derive(Debug, Error)]
pub enum DatapathError {
    /// The running kernel is older than [`MIN_KERNEL`].
    #[error(
        "xdpgate needs Linux 6.1 or newer; this kernel is {release} (supported: 6.1 through 7.3, tested with `cargo xtask vmtest`)"
    )]
    Kernel {
        /// `uname -r`.
        release: String,
    },
    /// An OS-level precondition failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// The object could not be loaded (map creation, relocation, ...).
    #[error("cannot load the XDP object: {0}")]
    Load(#[source] aya::EbpfError),
    /// The verifier or the kernel refused the program; the message carries the verifier log.
    #[error("the kernel refused the XDP program: {0}")]
    Verify(#[source] ProgramError),
    /// The verifier refused the steering program (log included).
    #[error("the kernel refused the steering program {STEER_PROGRAM_NAME}: {0}")]
    VerifySteer(#[source] ProgramError),
    /// The verifier refused a timing wrapper (measurement only; log included).
    #[error("the kernel refused the benchmark's timing wrapper {name}: {source}")]
    VerifyTiming {
        /// The wrapper's program name.
        name: &'static str,
        /// The kernel's answer.
        #[source]
        source: ProgramError,
    },
    /// `BPF_PROG_TEST_RUN` failed.
    #[error("test run failed: {0}")]
    TestRun(#[source] ProgramError),
    /// The object lacks something the control plane expects (ABI drift).
    #[error("the XDP object has no {0}: common/ and xdp-prog/ disagree")]
    Missing(String),
    /// A map operation failed.
    #[error("map {map}: {source}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// The failure.
        #[source]
        source: MapError,
    },
    /// The pinned datapath cannot be used as it is; nothing was changed.
    #[error(transparent)]
    Pins(#[from] PinError),
    /// The interface is attached in another mode than the configured one.
    #[error(
        "{iface} is enforcing in {found} mode and the configuration asks for {wanted}: changing the mode would leave it unfiltered for a moment, so xdpgate does not do it by itself. Keep --mode {found}, or run `xdpgate down --iface {iface}` and start again"
    )]
    ModeChange {
        /// The interface.
        iface: String,
        /// The mode it runs in.
        found: &'static str,
        /// The mode configured.
        wanted: &'static str,
    },
    /// Attaching in the requested mode failed. xdpgate never falls back silently.
    #[error("cannot attach XDP to {iface} in {mode} mode: {reason}\n{hint}",
        mode = .mode.name(), hint = mode_hint(*.mode))]
    Attach {
        /// The interface.
        iface: String,
        /// The requested mode.
        mode: XdpMode,
        /// Why the kernel refused.
        reason: String,
    },
    /// Too many interfaces.
    #[error("at most {max} interfaces are supported, {0} were given", max = MAX_IFACES - 1)]
    TooManyInterfaces(usize),
    /// The same interface was given twice.
    #[error("interface {0:?} is named more than once")]
    DuplicateInterface(String),
    /// Filesystem failure on the pin directory.
    #[error("{what} {path}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn mode_hint(mode: XdpMode) -> &'static str {
    match mode {
        XdpMode::Native => {
            "xdpgate does not fall back to another mode. The driver may lack native XDP: \
             --mode skb (generic XDP, works on any interface, slower) or --mode hw (NICs with XDP offload)"
        }
        XdpMode::Skb => {
            "xdpgate does not fall back to another mode. Try --mode native (driver XDP) \
             or --mode hw (NICs with XDP offload)"
        }
        XdpMode::Hw => {
            "xdpgate does not fall back to another mode. hw needs a NIC with XDP offload; \
             use --mode native (driver XDP, the default) or --mode skb (generic XDP, any interface)"
        }
    }
}

/// The loaded (and, once started, attached) datapath.
///
/// Opened on pins ([`Datapath::open`]), its maps and links live on bpffs and
/// outlive it: dropping it leaves every interface enforcing, and only
/// [`Datapath::detach_all`] (`xdpgate down`) removes them. Loaded without
/// pins ([`Datapath::load`], for test runs and benchmarks), its links die
/// with it.
#[derive(Debug)]
pub struct Datapath {
    ebpf: Ebpf,
    pins: Option<PinDir>,
    /// Links pinned by an earlier run, not yet taken over by `enforce`.
    adopted: Vec<PinnedLink>,
    /// What dropping it before [`Datapath::commit`] removes.
    uncommitted: Uncommitted,
    /// The program's tag as last committed to the pins.
    committed_tag: Option<[u8; 8]>,
    attached: Vec<Attached>,
    barrier: RcuBarrier,
    sizes: LoadOptions,
    /// Entries of the per-prefix bucket table.
    limit_buckets: u32,
    /// The ACL tables' capacities (`[acl]`) its maps were made with.
    acl_caps: Capacities,
    /// Why the kernel refused the DDoS program, if it did.
    ddos_unavailable: Option<String>,
}

/// What [`Datapath::open`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// Nothing pinned: new maps, to fill before the first attach.
    Cold,
    /// A datapath of this schema (its `meta` record): its maps reused.
    Adopted(Meta),
    /// A datapath of an older schema (its `meta` record): new maps of this
    /// schema beside the old ones, to fill; [`Datapath::enforce`] switches its
    /// links, [`Datapath::commit`] commits and removes the old maps.
    Migrating(Meta),
}

/// What a datapath on pins removes when it is dropped before its commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Uncommitted {
    /// Nothing (committed, adopted, or not on pins).
    Nothing,
    /// A cold start: every link and pin.
    ColdStart,
    /// A migration: the new maps (links it switched were switched back by
    /// `enforce`, or run the new program, which keeps its maps alive).
    Migration,
}

/// The result of one `BPF_PROG_TEST_RUN` of the program on a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRunOutcome {
    /// The XDP verdict (`XDP_*` value).
    pub action: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// Kernel-measured average run time per repetition.
    pub duration: std::time::Duration,
}

impl Datapath {
    /// Opens the pinned datapath under `paths.bpffs_dir` for a daemon: judges
    /// what is pinned there ([`PinDir::inspect`]; pins this build cannot use
    /// are refused and left as they are), then loads the object on the pinned
    /// maps of this schema (reused as they are, counters included) or, on a
    /// cold start or a migration from an older schema, on new maps pinned
    /// there. Nothing is attached or detached: install the state, then call
    /// [`Datapath::enforce`] and [`Datapath::commit`].
    ///
    /// Pinned maps whose size the configuration sets (`sizes`) and that were
    /// made with another size are refused ([`PinError::Resized`]): the
    /// message names the setting and the way out.
    pub fn open(paths: &Paths, sizes: MapSizes) -> Result<(Self, Opened), DatapathError> {
        check_kernel()?;
        let pins = PinDir::open(&paths.bpffs_dir)?;
        let specs = map_specs(sizes)?;
        let found = pins.inspect(&specs)?;
        if !matches!(found, Found::Ours { .. }) {
            pins.prepare()?;
        }
        let paths_of: Vec<(String, PathBuf)> = specs
            .keys()
            .map(|name| (name.clone(), pins.map_path(name)))
            .collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &paths_of {
            loader.map_pin_path(name.as_str(), path.as_path());
        }
        let mut dp = match Self::load_object(&mut loader, sizes) {
            Ok(dp) => dp,
            Err(e) => {
                // Maps a cold start or a migration pinned for nothing.
                match found {
                    Found::Empty => pins.remove_all()?,
                    Found::Older { .. } => pins.abandon_migration()?,
                    Found::Ours { .. } => {}
                }
                return Err(e);
            }
        };
        dp.pins = Some(pins);
        Ok(match found {
            Found::Empty => {
                dp.uncommitted = Uncommitted::ColdStart;
                (dp, Opened::Cold)
            }
            Found::Ours { meta, links } => {
                dp.adopted = links;
                (dp, Opened::Adopted(meta))
            }
            Found::Older { meta, links } => {
                dp.adopted = links;
                dp.uncommitted = Uncommitted::Migration;
                (dp, Opened::Migrating(meta))
            }
        })
    }

    /// Loads the object and has the kernel verify the program, without
    /// registering, pinning or attaching anything.
    pub fn load() -> Result<Self, DatapathError> {
        Self::load_with(LoadOptions::default())
    }

    /// [`Datapath::load`] with the ring storage sized by `sizes`.
    pub fn load_with(sizes: LoadOptions) -> Result<Self, DatapathError> {
        Self::load_sized(MapSizes {
            rings: sizes,
            ..MapSizes::default()
        })
    }

    /// [`Datapath::load`] with every configurable map sized by `sizes`.
    pub fn load_sized(sizes: MapSizes) -> Result<Self, DatapathError> {
        check_kernel()?;
        let mut dp = Self::load_object(&mut EbpfLoader::new(), sizes)?;
        dp.set_lb_config(&xdpgate_model::lb::default_lb_config())?;
        Ok(dp)
    }

    fn load_object(loader: &mut EbpfLoader<'_>, all: MapSizes) -> Result<Self, DatapathError> {
        let sizes = all.rings;
        if !sizes.is_valid() {
            return Err(DatapathError::Missing(format!(
                "valid ring sizing ({} services x ring {}: services 1..={MAX_SERVICES}, ring size a prime)",
                sizes.ring_services, sizes.ring_size
            )));
        }
        if !all.is_valid() {
            return Err(DatapathError::Missing(format!(
                "valid bucket table size ({} entries: {MIN_BUCKETS}..={MAX_BUCKETS}) and ACL capacities ({:?})",
                all.limit_buckets, all.acl
            )));
        }
        loader
            .map_max_entries(
                maps::LB_RINGS,
                ring_entries(sizes.ring_services, sizes.ring_size),
            )
            .map_max_entries(limit_maps::LIMIT_BUCKETS, all.limit_buckets);
        for (name, entries) in acl::sized_maps(&all.acl) {
            loader.map_max_entries(name, entries);
        }
        let ebpf = loader
            .override_global(PREFIX_BITS_GLOBAL, acl::prefix_bits_ref(&all.acl), true)
            .load(OBJECT)
            .map_err(DatapathError::Load)?;
        let barrier = RcuBarrier::new().map_err(|source| DatapathError::Io {
            what: "cannot create the RCU barrier maps",
            path: PathBuf::new(),
            source,
        })?;
        let mut dp = Datapath {
            ebpf,
            pins: None,
            adopted: Vec::new(),
            uncommitted: Uncommitted::Nothing,
            committed_tag: None,
            attached: Vec::new(),
            barrier,
            sizes,
            limit_buckets: all.limit_buckets,
            acl_caps: all.acl,
            ddos_unavailable: None,
        };
        dp.program()?.load().map_err(DatapathError::Verify)?;
        dp.load_steering()?;
        dp.load_ddos()?;
        Ok(dp)
    }

    /// The interfaces an earlier run left enforcing (pinned links not yet
    /// taken over by [`Datapath::enforce`]).
    pub fn adopted(&self) -> impl Iterator<Item = &PinnedLink> {
        self.adopted.iter()
    }

    /// Instructions the verifier processed to accept the program (its limit is
    /// 1,000,000), when the kernel reports it.
    pub fn verified_instructions(&mut self) -> Option<u32> {
        self.program()
            .ok()?
            .info()
            .ok()?
            .verified_instruction_count()
    }

    /// Turns datapath events on or off: when on, each CPU reports one of
    /// every `sample_every` dropped packets through aya-log (about 170-200 ns
    /// per report, measured). Off (the default), a drop costs one array
    /// lookup more.
    pub fn set_events(&mut self, on: bool, sample_every: u32) -> Result<(), DatapathError> {
        let err = |source| DatapathError::Map {
            map: maps::EVENT_CONFIG,
            source,
        };
        let map = self
            .ebpf
            .map_mut(maps::EVENT_CONFIG)
            .ok_or_else(|| DatapathError::Missing(maps::EVENT_CONFIG.into()))?;
        let mut map: Array<_, EventConfig> = Array::try_from(map).map_err(err)?;
        let cfg = EventConfig {
            enabled: on as u32,
            sample_every: sample_every.max(1),
            _variant: [0; xdpgate_common::EVENT_VARIANT_WORDS],
        };
        map.set(0, cfg, 0).map_err(err)
    }

    /// Takes the program's aya-log ring buffer, whose records the returned
    /// reader logs through the global `log` logger (see `crate::events`).
    /// Possible once per loaded datapath.
    pub fn event_logger(
        &mut self,
    ) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>, DatapathError> {
        aya_log::EbpfLogger::init(&mut self.ebpf)
            .map_err(|e| DatapathError::Missing(format!("aya-log ring buffer ({e})")))
    }

    /// The pin directory, when the datapath runs on pins.
    pub fn pin_dir(&self) -> Option<&std::path::Path> {
        self.pins.as_ref().map(PinDir::root)
    }

    /// The interfaces attached, in the order given.
    pub fn attached(&self) -> &[Attached] {
        &self.attached
    }

    /// A map of the loaded object by name (see `xdpgate_common::maps`).
    pub fn map(&self, name: &str) -> Option<&Map> {
        self.ebpf.map(name)
    }

    pub(super) fn program(&mut self) -> Result<&mut Xdp, DatapathError> {
        let prog = self
            .ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| DatapathError::Missing(format!("program {PROGRAM_NAME}")))?;
        prog.try_into()
            .map_err(|_| DatapathError::Missing(format!("XDP program {PROGRAM_NAME}")))
    }

    /// Runs the program once per repetition on `frame` with `BPF_PROG_TEST_RUN`
    /// (the kernel's test-run path: no interface, counters and maps are live).
    /// The ingress interface the program sees is the loopback device of the
    /// calling thread's network namespace.
    pub fn test_run(&mut self, frame: &[u8], repeat: u32) -> Result<TestRunOutcome, DatapathError> {
        test_run_of(self.program()?, frame, repeat)
    }

    pub(super) fn map_data(&self, name: &str) -> Result<&MapData, DatapathError> {
        match self.ebpf.map(name) {
            Some(Map::Array(d) | Map::PerCpuArray(d) | Map::HashMap(d)) => Ok(d),
            _ => Err(DatapathError::Missing(format!("map {name}"))),
        }
    }

    /// Detaches every interface and, on pins, removes every pin
    /// (`xdpgate down`).
    pub fn shutdown(mut self) -> Result<(), DatapathError> {
        self.detach_all()
    }

    /// Like [`Datapath::shutdown`], in place (the value stays loaded but
    /// detached).
    pub fn detach_all(&mut self) -> Result<(), DatapathError> {
        let mut first_err = None;
        for a in std::mem::take(&mut self.attached) {
            if let Err(e) = object::link_detach(a.link.as_fd()) {
                log::warn!("detaching from {}: {e}", a.iface);
                first_err.get_or_insert(DatapathError::Attach {
                    iface: a.iface,
                    mode: a.mode,
                    reason: format!("detach failed: {e}"),
                });
            }
        }
        self.adopted.clear();
        if let Some(p) = self.pins.take()
            && let Err(e) = p.remove_all()
        {
            first_err.get_or_insert(e.into());
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// A cold start that failed before its commit leaves nothing behind: its
/// links are detached and its pins removed. A migration that failed leaves
/// the older datapath as it was. Anything else stays pinned.
impl Drop for Datapath {
    fn drop(&mut self) {
        let result = match self.uncommitted {
            Uncommitted::Nothing => Ok(()),
            Uncommitted::ColdStart => self.detach_all(),
            Uncommitted::Migration => self
                .pins
                .as_ref()
                .map_or(Ok(()), |p| p.abandon_migration().map_err(Into::into)),
        };
        if let Err(e) = result {
            log::warn!("removing the pins of a failed start: {e}");
        }
    }
}

/// Refuses kernels older than [`MIN_KERNEL`] with a clear message, not a verifier dump.
fn check_kernel() -> Result<(), DatapathError> {
    if let Some((release, version)) = sys::kernel_release()
        && version < MIN_KERNEL
    {
        return Err(DatapathError::Kernel { release });
    }
    Ok(())
}

/// The maps of the object as this build makes them (`XG_*` only: not the
/// log ring or the data sections), by name, with the rings and the bucket
/// table sized by `sizes`.
fn map_specs(all: MapSizes) -> Result<BTreeMap<String, pins::MapSpec>, DatapathError> {
    let sizes = all.rings;
    let obj = aya_obj::Object::parse(OBJECT)
        .map_err(|e| DatapathError::Missing(format!("a readable object ({e})")))?;
    Ok(obj
        .maps
        .iter()
        .filter(|(name, _)| name.starts_with("XG_"))
        .map(|(name, m)| {
            let max_entries = if name == maps::LB_RINGS {
                ring_entries(sizes.ring_services, sizes.ring_size)
            } else if name == limit_maps::LIMIT_BUCKETS {
                all.limit_buckets
            } else if let Some(n) = acl::sized_entries(name, &all.acl) {
                n
            } else {
                m.max_entries()
            };
            (
                name.clone(),
                pins::MapSpec {
                    map_type: m.map_type(),
                    key_size: m.key_size(),
                    value_size: m.value_size(),
                    max_entries,
                    flags: m.map_flags(),
                    sized_by: limit::resizable(name),
                },
            )
        })
        .collect())
}

/// Load balancing and decapsulation maps (see `xdpgate_common::lb`).
impl Datapath {
    /// Waits until no XDP program that started before the call still runs.
    pub fn rcu_wait(&self) -> Result<(), DatapathError> {
        self.barrier.wait().map_err(|source| DatapathError::Io {
            what: "RCU barrier",
            path: PathBuf::new(),
            source,
        })
    }

    pub(super) fn map_err(map: &'static str) -> impl Fn(MapError) -> DatapathError {
        move |source| DatapathError::Map { map, source }
    }

    pub(super) fn map_ref(&self, name: &'static str) -> Result<&Map, DatapathError> {
        self.ebpf
            .map(name)
            .ok_or_else(|| DatapathError::Missing(format!("map {name}")))
    }

    pub(super) fn map_mut_ref(&mut self, name: &'static str) -> Result<&mut Map, DatapathError> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| DatapathError::Missing(format!("map {name}")))
    }
}

/// Runs `prog` `repeat` times (at least once) on `frame` with
/// `BPF_PROG_TEST_RUN`: its action, output frame and average duration.
pub(super) fn test_run_of(
    prog: &mut Xdp,
    frame: &[u8],
    repeat: u32,
) -> Result<TestRunOutcome, DatapathError> {
    use aya::programs::{TestRun as _, TestRunOptions};
    let mut out = vec![0u8; frame.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    opts.repeat = repeat.max(1);
    let result = prog.test_run(opts).map_err(DatapathError::TestRun)?;
    out.truncate(result.data_size_out as usize);
    Ok(TestRunOutcome {
        action: result.return_value,
        frame: out,
        duration: result.duration,
    })
}
