//! The datapath: the XDP object built from `xdp-prog`, loaded and verified,
//! attached to interfaces in an explicit mode, its maps pinned, and torn down
//! again. Everything the controllers write goes through methods of
//! [`Datapath`], one file per group of maps: `ifaces` (interfaces and bound
//! addresses), `acl` (the double-buffered ACL tables and rule counters), `lb`
//! (services, backends, rings), `decap`, `counters`, and [`stats`] (the
//! counters as `xdpgate stats` reads them from the pins).
//!
//! The controllers do not name [`Datapath`]: they write through the traits of
//! [`seam`] ([`AclTables`], [`LbMaps`], [`LocalAddrs`], with [`AddrKernel`]
//! for the kernel's addresses), which `Datapath` implements and which the
//! in-memory fake of unit tests (`fake`, `cfg(test)`) implements with
//! failure injection.
use std::{collections::HashSet, io, path::PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, MapError},
    programs::{ProgramError, Xdp, XdpMode as AyaMode, xdp::XdpLinkId},
};
use thiserror::Error;
use xdpgate_common::{
    EventConfig, MAX_IFACES, PROGRAM_NAME,
    lb::{MAX_SERVICES, ring_entries},
    maps,
};
use xdpgate_model::{
    iface::{Malformed, XdpMode},
    lb::LoadOptions,
};

use crate::{
    paths::Paths,
    sys::{self, SysError, bpf::RcuBarrier, netlink},
};

mod acl;
mod counters;
mod decap;
#[cfg(test)]
pub(crate) mod fake;
mod ifaces;
mod lb;
pub mod seam;
pub mod stats;

pub use seam::{AclTables, AddrKernel, IfaceTable, LbMaps, LocalAddrs, RcuWait, SystemKernel};

/// Name of the steering program in the object (tail-called by the main one).
pub const STEER_PROGRAM_NAME: &str = "xdpgate_steer";

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
    /// Pinning a map failed.
    #[error("cannot pin map {map} at {path}: {source}")]
    Pin {
        /// The map's name.
        map: &'static str,
        /// The pin path.
        path: PathBuf,
        /// The failure.
        #[source]
        source: aya::pin::PinError,
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

fn aya_mode(mode: XdpMode) -> AyaMode {
    match mode {
        XdpMode::Native => AyaMode::Driver,
        XdpMode::Skb => AyaMode::Skb,
        XdpMode::Hw => AyaMode::Hardware,
    }
}

/// One interface the datapath is attached to.
#[derive(Debug)]
pub struct Attached {
    /// Interface name.
    pub iface: String,
    /// Interface index.
    pub ifindex: u32,
    /// Mode the kernel reports for the attachment.
    pub mode: XdpMode,
    /// Kernel program id.
    pub prog_id: u32,
    link: XdpLinkId,
}

/// The loaded (and, once started, attached) datapath. Dropping it detaches every
/// interface and removes the pinned maps; [`Datapath::shutdown`] does the same
/// and reports errors.
#[derive(Debug)]
pub struct Datapath {
    ebpf: Ebpf,
    paths: Option<Paths>,
    attached: Vec<Attached>,
    pinned: Vec<PathBuf>,
    barrier: RcuBarrier,
    sizes: LoadOptions,
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
    /// Loads the program, registers `ifaces` in its interface map, pins its maps
    /// under `paths.bpffs_dir` and attaches it to every interface in `mode`.
    /// On any error everything done so far is undone.
    pub fn start(
        paths: &Paths,
        ifaces: &[String],
        mode: XdpMode,
        malformed: Malformed,
    ) -> Result<Self, DatapathError> {
        if ifaces.len() >= MAX_IFACES as usize {
            return Err(DatapathError::TooManyInterfaces(ifaces.len()));
        }
        let mut seen = HashSet::new();
        let mut resolved = Vec::with_capacity(ifaces.len());
        for name in ifaces {
            if !seen.insert(name.as_str()) {
                return Err(DatapathError::DuplicateInterface(name.clone()));
            }
            resolved.push(sys::ifindex(name)?);
        }
        let mut dp = Self::load()?;
        for (i, ifindex) in resolved.iter().enumerate() {
            dp.register(*ifindex, i as u32 + 1, malformed)?;
        }
        dp.pin(paths)?;
        for (name, ifindex) in ifaces.iter().zip(resolved) {
            dp.attach(name, ifindex, mode)?;
        }
        Ok(dp)
    }

    /// Loads the object and has the kernel verify the program, without
    /// registering, pinning or attaching anything.
    pub fn load() -> Result<Self, DatapathError> {
        Self::load_with(LoadOptions::default())
    }

    /// [`Datapath::load`] with the ring storage sized by `sizes`.
    pub fn load_with(sizes: LoadOptions) -> Result<Self, DatapathError> {
        // Refuse unsupported kernels with a clear message, not a verifier dump.
        if let Some((release, version)) = sys::kernel_release()
            && version < MIN_KERNEL
        {
            return Err(DatapathError::Kernel { release });
        }
        if !sizes.is_valid() {
            return Err(DatapathError::Missing(format!(
                "valid ring sizing ({} services x ring {}: services 1..={MAX_SERVICES}, ring size a prime)",
                sizes.ring_services, sizes.ring_size
            )));
        }
        let ebpf = EbpfLoader::new()
            .map_max_entries(
                maps::LB_RINGS,
                ring_entries(sizes.ring_services, sizes.ring_size),
            )
            .load(OBJECT)
            .map_err(DatapathError::Load)?;
        let barrier = RcuBarrier::new().map_err(|source| DatapathError::Io {
            what: "cannot create the RCU barrier maps",
            path: PathBuf::new(),
            source,
        })?;
        let mut dp = Datapath {
            ebpf,
            paths: None,
            attached: Vec::new(),
            pinned: Vec::new(),
            barrier,
            sizes,
        };
        dp.program()?.load().map_err(DatapathError::Verify)?;
        dp.load_steering()?;
        dp.set_lb_config(&xdpgate_model::lb::default_lb_config())?;
        Ok(dp)
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
        use aya::programs::{TestRun as _, TestRunOptions};
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.repeat = repeat.max(1);
        let result = self
            .program()?
            .test_run(opts)
            .map_err(DatapathError::TestRun)?;
        out.truncate(result.data_size_out as usize);
        Ok(TestRunOutcome {
            action: result.return_value,
            frame: out,
            duration: result.duration,
        })
    }

    /// Pins the maps under `paths.bpffs_dir`, replacing stale pins (the caller
    /// holds the daemon lock, so anything pinned there is stale).
    pub fn pin(&mut self, paths: &Paths) -> Result<(), DatapathError> {
        let dir = &paths.bpffs_dir;
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|source| DatapathError::Io {
                what: "cannot remove stale pins in",
                path: dir.clone(),
                source,
            })?;
        }
        std::fs::create_dir_all(dir).map_err(|source| DatapathError::Io {
            what: "cannot create",
            path: dir.clone(),
            source,
        })?;
        self.paths = Some(paths.clone());
        for name in [
            maps::IFACES,
            maps::STATS,
            maps::REASONS,
            maps::RULE_STATS,
            maps::CACHE_STATS,
        ] {
            let map = self
                .ebpf
                .map(name)
                .ok_or_else(|| DatapathError::Missing(format!("map {name}")))?;
            let path = paths.map_pin(name);
            map.pin(&path).map_err(|source| DatapathError::Pin {
                map: name,
                path: path.clone(),
                source,
            })?;
            self.pinned.push(path);
        }
        Ok(())
    }

    /// Attaches the program to `iface` in `mode` and checks with the kernel that
    /// it is attached in that mode.
    pub fn attach(
        &mut self,
        iface: &str,
        ifindex: u32,
        mode: XdpMode,
    ) -> Result<(), DatapathError> {
        let link = self
            .program()?
            .attach_to_if_index(ifindex, aya_mode(mode))
            .map_err(|e| DatapathError::Attach {
                iface: iface.to_owned(),
                mode,
                reason: attach_reason(&e),
            })?;
        // Ask the kernel what it actually attached, rather than trusting the request.
        let got = netlink::links()
            .ok()
            .and_then(|links| links.into_iter().find(|l| l.ifindex == ifindex))
            .and_then(|l| l.xdp.into_iter().find(|a| a.mode == mode));
        let prog_id = match got {
            Some(a) => a.prog_id,
            None => {
                let _ = self.program()?.detach(link);
                return Err(DatapathError::Attach {
                    iface: iface.to_owned(),
                    mode,
                    reason: "the kernel does not report the program in that mode after attaching"
                        .into(),
                });
            }
        };
        self.attached.push(Attached {
            iface: iface.to_owned(),
            ifindex,
            mode,
            prog_id,
            link,
        });
        Ok(())
    }

    pub(super) fn map_data(&self, name: &str) -> Result<&MapData, DatapathError> {
        match self.ebpf.map(name) {
            Some(Map::Array(d) | Map::PerCpuArray(d) | Map::HashMap(d)) => Ok(d),
            _ => Err(DatapathError::Missing(format!("map {name}"))),
        }
    }

    /// Detaches every interface and removes the pinned maps.
    pub fn shutdown(mut self) -> Result<(), DatapathError> {
        self.teardown()
    }

    /// Like [`Datapath::shutdown`], in place (the value stays loaded but
    /// detached; dropping it later does nothing more).
    pub fn detach_all(&mut self) -> Result<(), DatapathError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), DatapathError> {
        let mut first_err = None;
        let attached = std::mem::take(&mut self.attached);
        for a in attached {
            match self.program() {
                Ok(prog) => {
                    if let Err(e) = prog.detach(a.link) {
                        log::warn!("detaching from {}: {e}", a.iface);
                        first_err.get_or_insert(DatapathError::Attach {
                            iface: a.iface,
                            mode: a.mode,
                            reason: format!("detach failed: {e}"),
                        });
                    }
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        for path in self.pinned.drain(..) {
            if let Err(e) = std::fs::remove_file(&path) {
                log::warn!("removing pin {}: {e}", path.display());
            }
        }
        if let Some(paths) = self.paths.take() {
            let _ = std::fs::remove_dir(&paths.bpffs_dir);
        }
        first_err.map_or(Ok(()), Err)
    }
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

impl Drop for Datapath {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            log::warn!("teardown: {e}");
        }
    }
}

/// The most useful sentence out of an attach error: the OS error and, for the
/// common cases, what it means.
fn attach_reason(e: &ProgramError) -> String {
    let mut msg = e.to_string();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut errno = None;
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            errno = io.raw_os_error();
        }
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    let meaning = match errno {
        Some(libc::EBUSY) | Some(libc::EEXIST) => {
            Some("another XDP program is already attached (see `xdpgate status`)")
        }
        Some(libc::EOPNOTSUPP) => Some("the driver does not support this mode"),
        Some(libc::EINVAL) => Some("the interface does not support this mode"),
        _ => None,
    };
    match meaning {
        Some(m) => format!("{m} ({msg})"),
        None => msg,
    }
}
