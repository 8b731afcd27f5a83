//! Interfaces in the datapath: registration in `XG_IFACES` (counter slot,
//! flags) with its copy by index in `XG_IFACE_INDEX`, and the local-address
//! map `XG_LOCAL_ADDRS` of bound addresses.
use aya::maps::{Array, HashMap, MapData, MapError};
use xdpgate_common::{
    IFACE_DECAP, IFACE_DROP_UNBOUND, IFACE_INDEX_ENTRIES, IFACE_LB, IFACE_PASS_MALFORMED,
    IfaceConfig, LOCAL_ADDR_BOUND, LocalAddrKey, MAX_IFACES, maps,
};
use xdpgate_model::iface::Malformed;

use super::{
    Datapath, DatapathError,
    seam::{IfaceTable, LocalAddrs},
};

impl Datapath {
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
        let map: HashMap<_, u32, IfaceConfig> =
            HashMap::try_from(map).map_err(|source| DatapathError::Map {
                map: maps::IFACES,
                source,
            })?;
        let old = map.get(&ifindex, 0).ok();
        let kept = old.map_or(0, |c| {
            c.flags & (IFACE_DROP_UNBOUND | IFACE_DECAP | IFACE_LB)
        });
        let flags = kept
            | match malformed {
                Malformed::Drop => 0,
                Malformed::Pass => IFACE_PASS_MALFORMED,
            };
        self.put_iface(ifindex, IfaceConfig { slot, flags }, old)
    }

    /// Writes `cfg` for `ifindex` into `XG_IFACES` and its copy in
    /// `XG_IFACE_INDEX`. All or nothing: if the copy cannot be written, the
    /// hash map gets `old` back (`None`: the entry is removed again).
    fn put_iface(
        &mut self,
        ifindex: u32,
        cfg: IfaceConfig,
        old: Option<IfaceConfig>,
    ) -> Result<(), DatapathError> {
        self.ifaces_map()?
            .insert(ifindex, cfg, 0)
            .map_err(|source| DatapathError::Map {
                map: maps::IFACES,
                source,
            })?;
        if let Err(e) = self.set_iface_index(ifindex, cfg) {
            if let Ok(mut map) = self.ifaces_map() {
                let _ = match old {
                    Some(o) => map.insert(ifindex, o, 0),
                    None => map.remove(&ifindex),
                };
            }
            return Err(e);
        }
        Ok(())
    }

    /// Writes entry `ifindex` of `XG_IFACE_INDEX` (nothing for an ifindex the
    /// array does not cover: the datapath looks those up in `XG_IFACES`).
    fn set_iface_index(&mut self, ifindex: u32, cfg: IfaceConfig) -> Result<(), DatapathError> {
        if ifindex >= IFACE_INDEX_ENTRIES {
            return Ok(());
        }
        let err = |source| DatapathError::Map {
            map: maps::IFACE_INDEX,
            source,
        };
        let map = self
            .ebpf
            .map_mut(maps::IFACE_INDEX)
            .ok_or_else(|| DatapathError::Missing(format!("map {}", maps::IFACE_INDEX)))?;
        let mut array: Array<_, IfaceConfig> = Array::try_from(map).map_err(err)?;
        array.set(ifindex, cfg, 0).map_err(err)
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

    /// Every registered interface: ifindex and configuration.
    pub fn registered(&mut self) -> Result<Vec<(u32, IfaceConfig)>, DatapathError> {
        let map = self.ifaces_map()?;
        let keys: Vec<u32> = map.keys().filter_map(Result::ok).collect();
        Ok(keys
            .into_iter()
            .filter_map(|k| map.get(&k, 0).ok().map(|c| (k, c)))
            .collect())
    }

    /// Removes interface `ifindex` from the interface map (after its link is gone).
    pub fn unregister(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        // The copy first: a failure leaves the interface registered as it was.
        self.set_iface_index(ifindex, IfaceConfig::default())?;
        match self.ifaces_map()?.remove(&ifindex) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(DatapathError::Map {
                map: maps::IFACES,
                source,
            }),
        }
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
        let Some(old) = self.iface_config(ifindex)? else {
            return Err(DatapathError::Missing(format!(
                "registered interface with ifindex {ifindex}"
            )));
        };
        let mut cfg = old;
        if on {
            cfg.flags |= flag;
        } else {
            cfg.flags &= !flag;
        }
        self.put_iface(ifindex, cfg, Some(old))
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
}

/// The interface map as the controllers see it (see [`IfaceTable`]).
impl IfaceTable for Datapath {
    fn iface_config(&mut self, ifindex: u32) -> Result<Option<IfaceConfig>, DatapathError> {
        Datapath::iface_config(self, ifindex)
    }

    fn set_iface_flag(&mut self, ifindex: u32, flag: u32, on: bool) -> Result<(), DatapathError> {
        Datapath::set_iface_flag(self, ifindex, flag, on)
    }
}

/// The binding manager's view of the datapath (see [`LocalAddrs`]).
impl LocalAddrs for Datapath {
    fn insert_local_addrs(&mut self, keys: &[LocalAddrKey]) -> Result<(), DatapathError> {
        Datapath::insert_local_addrs(self, keys)
    }

    fn remove_local_addrs(&mut self, keys: &[LocalAddrKey]) -> Result<(), DatapathError> {
        Datapath::remove_local_addrs(self, keys)
    }

    fn local_addr_keys(&mut self) -> Result<Vec<LocalAddrKey>, DatapathError> {
        Datapath::local_addrs(self)
    }
}

fn undo_inserts(map: &mut HashMap<&mut MapData, LocalAddrKey, u32>, keys: &[LocalAddrKey]) {
    for k in keys {
        if let Err(e) = map.remove(k) {
            log::warn!("rolling back the local-address map: {e}");
        }
    }
}
