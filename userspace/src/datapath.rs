//! Loading the XDP program, registering interfaces in its maps, attaching it in
//! an explicit mode, pinning its maps, and tearing everything down again.
use std::{collections::HashSet, io, path::PathBuf};

use std::os::fd::AsFd as _;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{ProgramError, Xdp, XdpMode as AyaMode, xdp::XdpLinkId},
};
use thiserror::Error;
use xdpgate_common::{
    Action, Counter, EventConfig,
    acl::{
        ACL_NO_CACHE, AclConfig, DPORT_QUADS, LENSETS, MAX_ADDR_CLASSES, MAX_PORT_CLASSES,
        MAX_RULES, PREFIX_BUCKETS, Pair, Quad, RULE_BITS, RuleInfo, SPORT_QUADS, V4_TBL24_PAIRS,
    },
    maps::GEN_TABLES,
};
use xdpgate_common::{
    IFACE_DECAP, IFACE_DROP_UNBOUND, IFACE_LB, IFACE_PASS_MALFORMED, IfaceConfig, LOCAL_ADDR_BOUND,
    LocalAddrKey, MAX_IFACES, PROGRAM_NAME,
    lb::{
        Backend, DEFAULT_RING_SERVICES, DEFAULT_RING_SIZE, LbConfig, MAX_SERVICES, PROG_STEER,
        ServiceInfo, ServiceKey, ServiceStat, decap_stat_index, ring_entries, service_stat_index,
    },
    maps,
};

/// Name of the steering program in the object (tail-called by the main one).
pub const STEER_PROGRAM_NAME: &str = "xdpgate_steer";

/// Sizes fixed when the object is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Service slots that have ring storage (at most `MAX_SERVICES`).
    pub ring_services: u32,
    /// Maglev ring size (a prime).
    pub ring_size: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            ring_services: DEFAULT_RING_SERVICES,
            ring_size: DEFAULT_RING_SIZE,
        }
    }
}

use crate::{
    acl::{Verdict, compile::Image},
    netlink::{self, XdpMode},
    paths::Paths,
    stats::{self, CacheStats},
    sys::{self, SysError},
    tables::{self, RcuBarrier},
};

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

/// How the datapath treats malformed packets on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// Drop them (the default); they are counted under their drop reason.
    Drop,
    /// Pass them to the stack; they are still counted under their drop reason.
    Pass,
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
        if sizes.ring_services == 0
            || sizes.ring_services > MAX_SERVICES
            || !crate::maglev::is_prime(sizes.ring_size)
            || (sizes.ring_services as u64) * 2 * (sizes.ring_size as u64) > u32::MAX as u64 / 4
        {
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
        dp.set_lb_config(&crate::lb::default_lb_config())?;
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
    /// every `sample_every` dropped packets through aya-log (about 30 ns per
    /// report). Off (the default), a drop costs one array lookup more.
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
    pub fn map(&self, name: &str) -> Option<&aya::maps::Map> {
        self.ebpf.map(name)
    }

    fn program(&mut self) -> Result<&mut Xdp, DatapathError> {
        let prog = self
            .ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| DatapathError::Missing(format!("program {PROGRAM_NAME}")))?;
        prog.try_into()
            .map_err(|_| DatapathError::Missing(format!("XDP program {PROGRAM_NAME}")))
    }

    /// Registers interface `ifindex` under counter `slot` (1..MAX_IFACES) with
    /// its malformed-packet policy. A drop-unbound flag set earlier
    /// ([`Datapath::set_drop_unbound`]) is kept.
    pub fn register(
        &mut self,
        ifindex: u32,
        slot: u32,
        malformed: Malformed,
    ) -> Result<(), DatapathError> {
        if slot == 0 || slot >= MAX_IFACES {
            return Err(DatapathError::TooManyInterfaces(slot as usize));
        }
        let map = self
            .ebpf
            .map_mut(maps::IFACES)
            .ok_or_else(|| DatapathError::Missing(format!("map {}", maps::IFACES)))?;
        let mut map: HashMap<_, u32, IfaceConfig> =
            HashMap::try_from(map).map_err(|source| DatapathError::Map {
                map: maps::IFACES,
                source,
            })?;
        let kept = map.get(&ifindex, 0).map_or(0, |c| {
            c.flags & (IFACE_DROP_UNBOUND | IFACE_DECAP | IFACE_LB)
        });
        let flags = kept
            | match malformed {
                Malformed::Drop => 0,
                Malformed::Pass => IFACE_PASS_MALFORMED,
            };
        map.insert(ifindex, IfaceConfig { slot, flags }, 0)
            .map_err(|source| DatapathError::Map {
                map: maps::IFACES,
                source,
            })
    }

    fn ifaces_map(&mut self) -> Result<HashMap<&mut MapData, u32, IfaceConfig>, DatapathError> {
        let map = self
            .ebpf
            .map_mut(maps::IFACES)
            .ok_or_else(|| DatapathError::Missing(format!("map {}", maps::IFACES)))?;
        HashMap::try_from(map).map_err(|source| DatapathError::Map {
            map: maps::IFACES,
            source,
        })
    }

    /// The configuration of registered interface `ifindex` (`None` if it is
    /// not registered).
    pub fn iface_config(&mut self, ifindex: u32) -> Result<Option<IfaceConfig>, DatapathError> {
        match self.ifaces_map()?.get(&ifindex, 0) {
            Ok(c) => Ok(Some(c)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DatapathError::Map {
                map: maps::IFACES,
                source,
            }),
        }
    }

    /// Sets or clears [`IFACE_DROP_UNBOUND`] on registered interface `ifindex`:
    /// with it, unicast packets to addresses not in [`maps::LOCAL_ADDRS`] for
    /// the interface's slot are dropped (reason `not_bound`).
    pub fn set_drop_unbound(&mut self, ifindex: u32, on: bool) -> Result<(), DatapathError> {
        self.set_iface_flag(ifindex, IFACE_DROP_UNBOUND, on)
    }

    /// Sets or clears flag bit(s) `flag` (`IFACE_*`) on registered interface
    /// `ifindex`.
    pub fn set_iface_flag(
        &mut self,
        ifindex: u32,
        flag: u32,
        on: bool,
    ) -> Result<(), DatapathError> {
        let Some(mut cfg) = self.iface_config(ifindex)? else {
            return Err(DatapathError::Missing(format!(
                "registered interface with ifindex {ifindex}"
            )));
        };
        if on {
            cfg.flags |= flag;
        } else {
            cfg.flags &= !flag;
        }
        self.ifaces_map()?
            .insert(ifindex, cfg, 0)
            .map_err(|source| DatapathError::Map {
                map: maps::IFACES,
                source,
            })
    }

    fn local_addrs_map(
        &mut self,
    ) -> Result<HashMap<&mut MapData, LocalAddrKey, u32>, DatapathError> {
        let map = self
            .ebpf
            .map_mut(maps::LOCAL_ADDRS)
            .ok_or_else(|| DatapathError::Missing(format!("map {}", maps::LOCAL_ADDRS)))?;
        HashMap::try_from(map).map_err(|source| DatapathError::Map {
            map: maps::LOCAL_ADDRS,
            source,
        })
    }

    /// Adds `keys` to the local-address map. All or nothing: on an error the
    /// keys this call added are removed again. Keys already present stay.
    pub fn insert_local_addrs(&mut self, keys: &[LocalAddrKey]) -> Result<(), DatapathError> {
        let mut map = self.local_addrs_map()?;
        let mut added = Vec::with_capacity(keys.len());
        for k in keys {
            match map.get(k, 0) {
                Ok(_) => continue,
                Err(MapError::KeyNotFound) => {}
                Err(source) => {
                    undo_inserts(&mut map, &added);
                    return Err(DatapathError::Map {
                        map: maps::LOCAL_ADDRS,
                        source,
                    });
                }
            }
            if let Err(source) = map.insert(k, LOCAL_ADDR_BOUND, 0) {
                undo_inserts(&mut map, &added);
                return Err(DatapathError::Map {
                    map: maps::LOCAL_ADDRS,
                    source,
                });
            }
            added.push(*k);
        }
        Ok(())
    }

    /// Removes `keys` from the local-address map (absent keys are fine). All
    /// or nothing: on an error the keys this call removed are put back.
    pub fn remove_local_addrs(&mut self, keys: &[LocalAddrKey]) -> Result<(), DatapathError> {
        let mut map = self.local_addrs_map()?;
        let mut removed = Vec::with_capacity(keys.len());
        for k in keys {
            match map.remove(k) {
                Ok(()) => removed.push(*k),
                Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(source) => {
                    for k in &removed {
                        let _ = map.insert(k, LOCAL_ADDR_BOUND, 0);
                    }
                    return Err(DatapathError::Map {
                        map: maps::LOCAL_ADDRS,
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Every key of the local-address map.
    pub fn local_addrs(&mut self) -> Result<Vec<LocalAddrKey>, DatapathError> {
        let map = self.local_addrs_map()?;
        map.keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| DatapathError::Map {
                map: maps::LOCAL_ADDRS,
                source,
            })
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

    fn map_data(&self, name: &str) -> Result<&MapData, DatapathError> {
        match self.ebpf.map(name) {
            Some(Map::Array(d) | Map::PerCpuArray(d) | Map::HashMap(d)) => Ok(d),
            _ => Err(DatapathError::Missing(format!("map {name}"))),
        }
    }

    fn write<T: Copy>(
        &self,
        base: &'static str,
        generation: usize,
        entries: u32,
        values: &[T],
    ) -> Result<(), DatapathError> {
        let name = format!("{base}_{generation}");
        let fd = self.map_data(&name)?.fd().as_fd();
        tables::write_array(fd, entries, values).map_err(|source| DatapathError::Io {
            what: "cannot write table",
            path: PathBuf::from(name),
            source,
        })
    }

    /// The live ACL configuration (generation, rule counts).
    pub fn acl_config(&self) -> Result<AclConfig, DatapathError> {
        let map: Array<_, AclConfig> = Array::try_from(
            self.ebpf
                .map(maps::ACL_CONFIG)
                .ok_or_else(|| DatapathError::Missing(maps::ACL_CONFIG.into()))?,
        )
        .map_err(|source| DatapathError::Map {
            map: maps::ACL_CONFIG,
            source,
        })?;
        map.get(&0, 0).map_err(|source| DatapathError::Map {
            map: maps::ACL_CONFIG,
            source,
        })
    }

    fn set_acl_config(&mut self, cfg: AclConfig) -> Result<(), DatapathError> {
        let mut map: Array<_, AclConfig> = Array::try_from(
            self.ebpf
                .map_mut(maps::ACL_CONFIG)
                .ok_or_else(|| DatapathError::Missing(maps::ACL_CONFIG.into()))?,
        )
        .map_err(|source| DatapathError::Map {
            map: maps::ACL_CONFIG,
            source,
        })?;
        map.set(0, cfg, 0).map_err(|source| DatapathError::Map {
            map: maps::ACL_CONFIG,
            source,
        })
    }

    /// Turns the datapath's decision cache on (the default) or off. Off, every
    /// packet walks the rule bitmaps: the worst case, for measurements and
    /// diagnosis. Decisions are the same either way.
    pub fn set_decision_cache(&mut self, on: bool) -> Result<(), DatapathError> {
        let mut cfg = self.acl_config()?;
        if on {
            cfg.flags &= !ACL_NO_CACHE;
        } else {
            cfg.flags |= ACL_NO_CACHE;
        }
        self.set_acl_config(cfg)
    }

    /// Decision-cache hits and misses so far, summed over CPUs.
    pub fn cache_stats(&self) -> Result<CacheStats, DatapathError> {
        let map = self
            .ebpf
            .map(maps::CACHE_STATS)
            .ok_or_else(|| DatapathError::Missing(maps::CACHE_STATS.into()))?;
        stats::cache_stats(map).map_err(|source| DatapathError::Map {
            map: maps::CACHE_STATS,
            source,
        })
    }

    /// Installs `image` as the new ACL generation: writes every table of the
    /// idle generation, zeroes the counters in `fresh_counters`, switches the
    /// live generation with one map update, and waits until no packet can still
    /// be using the old one. `counters[i]` is the counter slot of rule `i`.
    /// On error the live generation is unchanged.
    pub fn apply_acl(
        &mut self,
        image: &Image,
        counters: &[u32],
        fresh_counters: &[u32],
    ) -> Result<(), DatapathError> {
        let cfg = self.acl_config()?;
        let epoch = cfg.next_epoch();
        let t = (epoch & 1) as usize;
        self.write(GEN_TABLES[0], t, MAX_IFACES, &image.iface_bm)?;
        self.write(GEN_TABLES[1], t, 256, &image.proto_bm)?;
        self.write(GEN_TABLES[2], t, MAX_PORT_CLASSES, &image.sport_bm)?;
        self.write(GEN_TABLES[3], t, MAX_PORT_CLASSES, &image.dport_bm)?;
        self.write(GEN_TABLES[4], t, MAX_ADDR_CLASSES, &image.src_bm)?;
        self.write(GEN_TABLES[5], t, MAX_ADDR_CLASSES, &image.dst_bm)?;
        self.write(GEN_TABLES[6], t, SPORT_QUADS, quads(&image.sport_class))?;
        self.write(GEN_TABLES[7], t, DPORT_QUADS, quads(&image.dport_class))?;
        self.write(GEN_TABLES[8], t, V4_TBL24_PAIRS, pairs(&image.v4_tbl24))?;
        self.write(GEN_TABLES[9], t, 65536, &image.v6_buckets)?;
        self.write(GEN_TABLES[10], t, LENSETS, &image.lensets)?;
        self.write(GEN_TABLES[11], t, PREFIX_BUCKETS, &image.prefix_table)?;

        let n = image.rule_ids.len();
        let mut info = Vec::with_capacity(n + MAX_IFACES as usize);
        for (i, v) in image.rule_verdicts.iter().enumerate() {
            info.push(RuleInfo {
                counter: counters[i],
                action: action_of(*v),
                id: image.rule_ids[i],
                _reserved: 0,
            });
        }
        for (slot, v) in image.default_verdicts.iter().enumerate() {
            info.push(RuleInfo {
                counter: MAX_RULES + slot as u32,
                action: action_of(*v),
                id: 0,
                _reserved: 0,
            });
        }
        self.write(maps::RULE_INFO, t, RULE_BITS, &info)?;
        self.zero_rule_counters(fresh_counters)?;

        // The switch: one map update, seen atomically by the next packet.
        let mut next = cfg;
        next.epoch = epoch;
        next.rules[t] = n as u32;
        self.set_acl_config(next)?;
        // Packets that read the old generation before the switch finish before
        // this returns; only then may the next change overwrite it.
        self.barrier.wait().map_err(|source| DatapathError::Io {
            what: "RCU barrier failed",
            path: PathBuf::new(),
            source,
        })
    }

    /// Brings generation `t`'s prefix hash to the image's contents, touching
    /// only entries that differ from what that generation holds, in batches.
    fn zero_rule_counters(&mut self, slots: &[u32]) -> Result<(), DatapathError> {
        if slots.is_empty() {
            return Ok(());
        }
        self.zero_counters(maps::RULE_STATS, slots)
    }

    /// Zeroes entries `indices` of the per-CPU counter array `name` on every CPU.
    fn zero_counters(&mut self, name: &'static str, indices: &[u32]) -> Result<(), DatapathError> {
        let cpus = aya::util::nr_cpus().map_err(|(what, source)| DatapathError::Io {
            what,
            path: PathBuf::new(),
            source,
        })?;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| DatapathError::Missing(format!("map {name}")))?;
        let mut map: PerCpuArray<_, Counter> = PerCpuArray::try_from(map)
            .map_err(|source| DatapathError::Map { map: name, source })?;
        for index in indices {
            let zeros =
                PerCpuValues::try_from(vec![Counter::default(); cpus]).map_err(|source| {
                    DatapathError::Io {
                        what: "per-CPU values",
                        path: PathBuf::new(),
                        source,
                    }
                })?;
            map.set(*index, zeros, 0)
                .map_err(|source| DatapathError::Map { map: name, source })?;
        }
        Ok(())
    }

    /// Packets and bytes of rule counter `slot`, summed over CPUs.
    pub fn rule_counter(&self, slot: u32) -> Result<(u64, u64), DatapathError> {
        let err = |source| DatapathError::Map {
            map: maps::RULE_STATS,
            source,
        };
        let map: PerCpuArray<_, Counter> = PerCpuArray::try_from(
            self.ebpf
                .map(maps::RULE_STATS)
                .ok_or_else(|| DatapathError::Missing(maps::RULE_STATS.into()))?,
        )
        .map_err(err)?;
        let v = map.get(&slot, 0).map_err(err)?;
        Ok(v.iter()
            .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes)))
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
    /// Loads the steering program and installs it as the main program's
    /// tail-call target.
    fn load_steering(&mut self) -> Result<(), DatapathError> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(STEER_PROGRAM_NAME)
            .ok_or_else(|| DatapathError::Missing(format!("program {STEER_PROGRAM_NAME}")))?
            .try_into()
            .map_err(|_| DatapathError::Missing(format!("XDP program {STEER_PROGRAM_NAME}")))?;
        prog.load().map_err(DatapathError::VerifySteer)?;
        let fd = prog
            .fd()
            .map_err(DatapathError::Verify)?
            .try_clone()
            .map_err(|source| DatapathError::Io {
                what: "cannot duplicate the descriptor of",
                path: PathBuf::from(STEER_PROGRAM_NAME),
                source,
            })?;
        let map = self
            .ebpf
            .map_mut(maps::PROGS)
            .ok_or_else(|| DatapathError::Missing(format!("map {}", maps::PROGS)))?;
        let mut progs: aya::maps::ProgramArray<_> = aya::maps::ProgramArray::try_from(map)
            .map_err(|source| DatapathError::Map {
                map: maps::PROGS,
                source,
            })?;
        progs
            .set(PROG_STEER, &fd, 0)
            .map_err(|source| DatapathError::Map {
                map: maps::PROGS,
                source,
            })
    }

    /// Instructions the verifier processed for the steering program.
    pub fn steer_verified_instructions(&mut self) -> Option<u32> {
        let prog: &mut Xdp = self.ebpf.program_mut(STEER_PROGRAM_NAME)?.try_into().ok()?;
        prog.info().ok()?.verified_instruction_count()
    }

    /// The ring sizing the object was loaded with.
    pub fn ring_sizes(&self) -> LoadOptions {
        self.sizes
    }

    /// Waits until no XDP program that started before the call still runs.
    pub fn rcu_wait(&self) -> Result<(), DatapathError> {
        self.barrier.wait().map_err(|source| DatapathError::Io {
            what: "RCU barrier",
            path: PathBuf::new(),
            source,
        })
    }

    fn map_err(map: &'static str) -> impl Fn(MapError) -> DatapathError {
        move |source| DatapathError::Map { map, source }
    }

    fn map_ref(&self, name: &'static str) -> Result<&Map, DatapathError> {
        self.ebpf
            .map(name)
            .ok_or_else(|| DatapathError::Missing(format!("map {name}")))
    }

    fn map_mut_ref(&mut self, name: &'static str) -> Result<&mut Map, DatapathError> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| DatapathError::Missing(format!("map {name}")))
    }

    /// Sets the outer source prefixes and TTL of encapsulated packets.
    pub fn set_lb_config(&mut self, cfg: &LbConfig) -> Result<(), DatapathError> {
        let mut map: Array<_, LbConfig> = Array::try_from(self.map_mut_ref(maps::LB_CONFIG)?)
            .map_err(Self::map_err(maps::LB_CONFIG))?;
        map.set(0, cfg, 0).map_err(Self::map_err(maps::LB_CONFIG))
    }

    /// The outer source prefixes and TTL in force.
    pub fn lb_config(&self) -> Result<LbConfig, DatapathError> {
        let map: Array<_, LbConfig> = Array::try_from(self.map_ref(maps::LB_CONFIG)?)
            .map_err(Self::map_err(maps::LB_CONFIG))?;
        map.get(&0, 0).map_err(Self::map_err(maps::LB_CONFIG))
    }

    /// The ring array's memory mapping, after checking that `len` entries
    /// from index `base` lie inside it. Elements are 8 bytes apart (the
    /// kernel's layout of array maps, even of u32 values):
    /// [`tables::elem_size`].
    fn ring_mmap(&self, base: u32, len: usize) -> Result<tables::ArrayMmap, DatapathError> {
        let entries = ring_entries(self.sizes.ring_services, self.sizes.ring_size);
        if base as u64 + len as u64 > entries as u64 {
            return Err(DatapathError::Missing(format!(
                "ring room for {len} entries at {base} (array of {entries})"
            )));
        }
        let fd = self.map_data(maps::LB_RINGS)?.fd().as_fd();
        tables::ArrayMmap::new(fd, entries, 4).map_err(|source| DatapathError::Io {
            what: "cannot map",
            path: PathBuf::from(maps::LB_RINGS),
            source,
        })
    }

    /// Writes one ring half: `ring` (exactly `ring_size` entries) at index
    /// `base` of the ring array, through its memory mapping.
    pub fn write_ring(&self, base: u32, ring: &[u32]) -> Result<(), DatapathError> {
        let mut mm = self.ring_mmap(base, ring.len())?;
        let bytes = mm.bytes();
        let stride = tables::elem_size(4);
        for (i, slot) in ring.iter().enumerate() {
            let at = (base as usize + i) * stride;
            bytes[at..at + 4].copy_from_slice(&slot.to_ne_bytes());
        }
        Ok(())
    }

    /// Reads `len` ring entries at index `base` (for checks and tests).
    pub fn read_ring(&self, base: u32, len: u32) -> Result<Vec<u32>, DatapathError> {
        let mut mm = self.ring_mmap(base, len as usize)?;
        let bytes = mm.bytes();
        let stride = tables::elem_size(4);
        Ok((0..len as usize)
            .map(|i| {
                let at = (base as usize + i) * stride;
                u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
            })
            .collect())
    }

    /// Writes backend slot `slot`.
    pub fn set_backend(&mut self, slot: u32, backend: &Backend) -> Result<(), DatapathError> {
        let mut map: Array<_, Backend> = Array::try_from(self.map_mut_ref(maps::LB_BACKENDS)?)
            .map_err(Self::map_err(maps::LB_BACKENDS))?;
        map.set(slot, backend, 0)
            .map_err(Self::map_err(maps::LB_BACKENDS))
    }

    /// Zeroes the counters of backend slot `slot` (before it is reused).
    pub fn reset_backend_counter(&mut self, slot: u32) -> Result<(), DatapathError> {
        self.zero_counters(maps::LB_BACKEND_STATS, &[slot])
    }

    fn per_cpu_sum(&self, name: &'static str, index: u32) -> Result<Counter, DatapathError> {
        let map: PerCpuArray<_, Counter> =
            PerCpuArray::try_from(self.map_ref(name)?).map_err(Self::map_err(name))?;
        let values = map.get(&index, 0).map_err(Self::map_err(name))?;
        Ok(values.iter().fold(Counter::default(), |a, c| Counter {
            packets: a.packets + c.packets,
            bytes: a.bytes + c.bytes,
        }))
    }

    /// Packets and bytes sent to backend slot `slot`, summed over CPUs.
    pub fn backend_counter(&self, slot: u32) -> Result<Counter, DatapathError> {
        self.per_cpu_sum(maps::LB_BACKEND_STATS, slot)
    }

    /// Service slot `slot`'s counter of `what`, summed over CPUs.
    pub fn service_counter(&self, slot: u32, what: ServiceStat) -> Result<Counter, DatapathError> {
        self.per_cpu_sum(maps::LB_SERVICE_STATS, service_stat_index(slot, what))
    }

    /// Zeroes every counter of service slot `slot` (before it is reused).
    pub fn reset_service_counters(&mut self, slot: u32) -> Result<(), DatapathError> {
        let indices = ServiceStat::ALL.map(|what| service_stat_index(slot, what));
        self.zero_counters(maps::LB_SERVICE_STATS, &indices)
    }

    /// Decapsulated packets on interface slot `slot` with outer family
    /// `outer` and inner family `inner` (`lb::FAMILY_*`), summed over CPUs.
    pub fn decap_counter(&self, slot: u32, outer: u8, inner: u8) -> Result<Counter, DatapathError> {
        self.per_cpu_sum(maps::DECAP_STATS, decap_stat_index(slot, outer, inner))
    }

    /// Inserts or replaces a service entry (an atomic replace for readers).
    pub fn set_service(
        &mut self,
        key: &ServiceKey,
        info: &ServiceInfo,
    ) -> Result<(), DatapathError> {
        let mut map: HashMap<_, ServiceKey, ServiceInfo> =
            HashMap::try_from(self.map_mut_ref(maps::LB_SERVICES)?)
                .map_err(Self::map_err(maps::LB_SERVICES))?;
        map.insert(key, info, 0)
            .map_err(Self::map_err(maps::LB_SERVICES))
    }

    /// Removes a service entry (absent is fine).
    pub fn remove_service(&mut self, key: &ServiceKey) -> Result<(), DatapathError> {
        let mut map: HashMap<_, ServiceKey, ServiceInfo> =
            HashMap::try_from(self.map_mut_ref(maps::LB_SERVICES)?)
                .map_err(Self::map_err(maps::LB_SERVICES))?;
        match map.remove(key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            Err(source) => Err(DatapathError::Map {
                map: maps::LB_SERVICES,
                source,
            }),
        }
    }

    /// Every service entry.
    pub fn services(&self) -> Result<Vec<(ServiceKey, ServiceInfo)>, DatapathError> {
        let map: HashMap<_, ServiceKey, ServiceInfo> =
            HashMap::try_from(self.map_ref(maps::LB_SERVICES)?)
                .map_err(Self::map_err(maps::LB_SERVICES))?;
        map.iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(Self::map_err(maps::LB_SERVICES))
    }

    fn decap_map(&mut self) -> Result<HashMap<&mut MapData, LocalAddrKey, u32>, DatapathError> {
        HashMap::try_from(self.map_mut_ref(maps::DECAP_DSTS)?)
            .map_err(Self::map_err(maps::DECAP_DSTS))
    }

    /// Replaces the decapsulator's outer destinations with `keys`.
    pub fn set_decap_dsts(&mut self, keys: &[LocalAddrKey]) -> Result<(), DatapathError> {
        let want: HashSet<LocalAddrKey> = keys.iter().copied().collect();
        let mut map = self.decap_map()?;
        let have = map
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(Self::map_err(maps::DECAP_DSTS))?;
        for k in &want {
            map.insert(k, LOCAL_ADDR_BOUND, 0)
                .map_err(Self::map_err(maps::DECAP_DSTS))?;
        }
        for k in have.iter().filter(|k| !want.contains(k)) {
            let _ = map.remove(k);
        }
        Ok(())
    }

    /// The decapsulator's outer destinations.
    pub fn decap_dsts(&mut self) -> Result<Vec<LocalAddrKey>, DatapathError> {
        self.decap_map()?
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .map_err(Self::map_err(maps::DECAP_DSTS))
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

fn undo_inserts(map: &mut HashMap<&mut MapData, LocalAddrKey, u32>, keys: &[LocalAddrKey]) {
    for k in keys {
        if let Err(e) = map.remove(k) {
            log::warn!("rolling back the local-address map: {e}");
        }
    }
}

fn action_of(v: Verdict) -> u32 {
    match v {
        Verdict::Allow => Action::Pass as u32,
        Verdict::Deny => Action::Drop as u32,
    }
}

/// Views a table of `u16` classes as the four-per-element layout of the maps.
fn quads(v: &[u16]) -> &[Quad] {
    assert_eq!(v.len() % 4, 0);
    // SAFETY: [u16; 4] has the alignment of u16 and no padding.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), v.len() / 4) }
}

/// Views the IPv4 first level as the two-per-element layout of its map.
fn pairs(v: &[u32]) -> &[Pair] {
    assert_eq!(v.len() % 2, 0);
    // SAFETY: [u32; 2] has the alignment of u32 and no padding.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), v.len() / 2) }
}
