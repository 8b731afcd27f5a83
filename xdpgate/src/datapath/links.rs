//! Where the program enforces: XDP links per interface, pinned when the
//! datapath runs on pins. A start adopts the links an earlier run pinned
//! ([`Datapath::enforce`]: `BPF_LINK_UPDATE` of each, new links for new
//! interfaces, old ones retired), a reload changes the set
//! ([`Datapath::set_interfaces`]), and [`Datapath::commit`] records the
//! program in the pinned `meta` record.
use std::{
    collections::BTreeMap,
    io,
    os::fd::{AsFd as _, OwnedFd},
    path::PathBuf,
    time::SystemTime,
};

use xdpgate_model::iface::XdpMode;

use super::{Datapath, DatapathError, PinnedLink};
use crate::sys::{netlink, object};

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
    /// Since when the interface is enforcing (when its link was pinned).
    pub since: SystemTime,
    pub(super) link: OwnedFd,
}

/// What [`Datapath::enforce`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Enforced {
    /// Interfaces attached now, with a new pinned link.
    pub attached: Vec<String>,
    /// Interfaces whose pinned link now runs this program (`BPF_LINK_UPDATE`).
    pub updated: Vec<String>,
    /// Interfaces pinned by an earlier run that the configuration no longer
    /// names: detached, their pins removed.
    pub retired: Vec<String>,
}

impl Datapath {
    /// Makes the program enforce on exactly `ifaces` (name, ifindex, mode):
    /// an interface with a pinned link from an earlier run gets this program
    /// in one step (`BPF_LINK_UPDATE`, no packet unjudged); a new one gets a
    /// new link, pinned; pinned links of interfaces not in `ifaces` are
    /// detached last. Call it once the state is installed: the first packet
    /// is judged by the whole policy. Then [`Datapath::commit`].
    pub fn enforce(
        &mut self,
        ifaces: &[(String, u32, XdpMode)],
    ) -> Result<Enforced, DatapathError> {
        let mut done = Enforced::default();
        let kernel = netlink::links().unwrap_or_default();
        let mut adopted: BTreeMap<String, PinnedLink> = std::mem::take(&mut self.adopted)
            .into_iter()
            .map(|l| (l.iface.clone(), l))
            .collect();
        // Refuse mode changes before anything is touched.
        for (name, ifindex, mode) in ifaces {
            if let Some(l) = adopted.get(name)
                && l.info.ifindex == *ifindex
                && let Some(found) = kernel
                    .iter()
                    .find(|k| k.ifindex == *ifindex)
                    .and_then(|k| k.xdp.iter().find(|a| a.prog_id == l.info.prog_id))
                && found.mode != *mode
            {
                self.adopted = adopted.into_values().collect();
                return Err(DatapathError::ModeChange {
                    iface: name.clone(),
                    found: found.mode.name(),
                    wanted: mode.name(),
                });
            }
        }
        // New links first: a failure here leaves every adopted link as it was,
        // and the links made so far are detached again.
        let before = self.attached.len();
        let mut updates = Vec::new();
        for (name, ifindex, mode) in ifaces {
            match adopted.remove(name) {
                Some(l) if l.info.ifindex == *ifindex => {
                    updates.push((name.clone(), *ifindex, *mode, l));
                }
                stale => {
                    if let Some(l) = &stale {
                        // The interface was deleted and made again: its old
                        // link enforces nothing any more.
                        log::info!(
                            "{name}: the pinned link was for ifindex {}, the interface is now {ifindex}; attaching anew",
                            l.info.ifindex
                        );
                    }
                    if let Err(e) = self.attach_replacing(name, *ifindex, *mode, stale.is_some()) {
                        self.undo_attached(before);
                        self.adopted = adopted
                            .into_values()
                            .chain(updates.into_iter().map(|u| u.3))
                            .collect();
                        return Err(e);
                    }
                    done.attached.push(name.clone());
                }
            }
        }
        // Then each adopted link gets this program in one step; a failure
        // puts the previous program back on the links already switched.
        let prog = self
            .program()?
            .fd()
            .map_err(DatapathError::Verify)?
            .try_clone()
            .map_err(|source| DatapathError::Io {
                what: "cannot duplicate the program descriptor",
                path: PathBuf::new(),
                source,
            })?;
        let prog_id = self.prog_id()?;
        let mut switched: Vec<Attached> = Vec::new();
        let mut old_progs: Vec<Option<OwnedFd>> = Vec::new();
        for (name, ifindex, mode, l) in updates {
            let old = object::prog_by_id(l.info.prog_id).ok();
            if let Err(e) = object::link_update(l.fd.as_fd(), prog.as_fd()) {
                for (a, old) in switched.iter().zip(&old_progs) {
                    if let Some(old) = old {
                        let _ = object::link_update(a.link.as_fd(), old.as_fd());
                    }
                }
                self.undo_attached(before);
                return Err(DatapathError::Attach {
                    iface: name,
                    mode,
                    reason: format!("BPF_LINK_UPDATE of {}: {e}", l.path.display()),
                });
            }
            old_progs.push(old);
            done.updated.push(name.clone());
            switched.push(Attached {
                iface: name,
                ifindex,
                mode,
                prog_id,
                since: l.since,
                link: l.fd,
            });
        }
        self.attached.extend(switched);
        for (name, l) in adopted {
            let _ = object::link_detach(l.fd.as_fd());
            if let Err(e) = std::fs::remove_file(&l.path) {
                log::warn!("removing {}: {e}", l.path.display());
            }
            done.retired.push(name);
        }
        Ok(done)
    }

    /// Makes a running datapath enforce on exactly `ifaces` (a reload): new
    /// interfaces get a new pinned link, interfaces no longer listed are
    /// detached and their pins removed, the others are left alone. A mode or
    /// ifindex change of a kept interface is refused before anything is done;
    /// a failed attach detaches the links this call made. Call it once the
    /// state of the new interfaces is installed.
    pub fn set_interfaces(
        &mut self,
        ifaces: &[(String, u32, XdpMode)],
    ) -> Result<Enforced, DatapathError> {
        for (name, ifindex, mode) in ifaces {
            if let Some(a) = self.attached.iter().find(|a| a.iface == *name)
                && (a.ifindex != *ifindex || a.mode != *mode)
            {
                return Err(DatapathError::ModeChange {
                    iface: name.clone(),
                    found: a.mode.name(),
                    wanted: mode.name(),
                });
            }
        }
        let mut done = Enforced::default();
        let before = self.attached.len();
        for (name, ifindex, mode) in ifaces {
            if self.attached.iter().any(|a| a.iface == *name) {
                continue;
            }
            if let Err(e) = self.attach(name, *ifindex, *mode) {
                self.undo_attached(before);
                return Err(e);
            }
            done.attached.push(name.clone());
        }
        let (keep, gone): (Vec<Attached>, Vec<Attached>) = std::mem::take(&mut self.attached)
            .into_iter()
            .partition(|a| ifaces.iter().any(|(name, ..)| *name == a.iface));
        self.attached = keep;
        for a in gone {
            if let Err(e) = object::link_detach(a.link.as_fd()) {
                log::warn!("detaching from {}: {e}", a.iface);
            }
            if let Some(p) = &self.pins {
                let _ = std::fs::remove_file(p.link_path(&a.iface));
            }
            done.retired.push(a.iface);
        }
        Ok(done)
    }

    /// [`Datapath::attach`], first removing the pin of a dead link of the
    /// same name when `replace`.
    fn attach_replacing(
        &mut self,
        name: &str,
        ifindex: u32,
        mode: XdpMode,
        replace: bool,
    ) -> Result<(), DatapathError> {
        if replace && let Some(p) = &self.pins {
            let _ = std::fs::remove_file(p.link_path(name));
        }
        self.attach(name, ifindex, mode)
    }

    /// Detaches (and unpins) the links attached after the first `keep`.
    fn undo_attached(&mut self, keep: usize) {
        for a in self.attached.drain(keep..) {
            let _ = object::link_detach(a.link.as_fd());
            if let Some(p) = &self.pins {
                let _ = std::fs::remove_file(p.link_path(&a.iface));
            }
        }
    }

    /// Records in the pinned `meta` record that the running program and the
    /// state in the maps are committed.
    pub fn commit(&mut self) -> Result<(), DatapathError> {
        let tag = self.prog_tag()?;
        if let Some(p) = &self.pins {
            p.commit(tag)?;
            // A migration's last step: no program uses the older maps now.
            p.remove_older()?;
        }
        self.uncommitted = super::Uncommitted::Nothing;
        self.committed_tag = Some(tag);
        Ok(())
    }

    /// The program's tag as last committed to the pins ([`Datapath::commit`]).
    pub fn committed_tag(&self) -> Option<[u8; 8]> {
        self.committed_tag
    }

    fn prog_id(&mut self) -> Result<u32, DatapathError> {
        self.program()?
            .info()
            .map(|i| i.id())
            .map_err(DatapathError::Verify)
    }

    /// The kernel's tag of the main program.
    pub fn prog_tag(&mut self) -> Result<[u8; 8], DatapathError> {
        let prog = self.program()?.fd().map_err(DatapathError::Verify)?;
        object::prog_info(prog.as_fd())
            .map(|i| i.tag)
            .map_err(|source| DatapathError::Io {
                what: "cannot read the program's info",
                path: PathBuf::new(),
                source,
            })
    }

    /// Attaches the program to `iface` in `mode` through a new bpf_link
    /// (pinned when the datapath runs on pins) and checks with the kernel
    /// that it is attached in that mode.
    pub fn attach(
        &mut self,
        iface: &str,
        ifindex: u32,
        mode: XdpMode,
    ) -> Result<(), DatapathError> {
        let prog = self.program()?.fd().map_err(DatapathError::Verify)?;
        let link =
            object::xdp_link_create(prog.as_fd(), ifindex, mode_flags(mode)).map_err(|e| {
                DatapathError::Attach {
                    iface: iface.to_owned(),
                    mode,
                    reason: attach_reason(&e),
                }
            })?;
        // Ask the kernel what it actually attached, rather than trusting the request.
        let prog_id = self.prog_id()?;
        let got = netlink::links()
            .ok()
            .and_then(|links| links.into_iter().find(|l| l.ifindex == ifindex))
            .and_then(|l| {
                l.xdp
                    .into_iter()
                    .find(|a| a.mode == mode && a.prog_id == prog_id)
            });
        if got.is_none() {
            let _ = object::link_detach(link.as_fd());
            return Err(DatapathError::Attach {
                iface: iface.to_owned(),
                mode,
                reason: "the kernel does not report the program in that mode after attaching"
                    .into(),
            });
        }
        if let Some(p) = &self.pins {
            let path = p.link_path(iface);
            if let Err(source) = object::obj_pin(link.as_fd(), &path) {
                let _ = object::link_detach(link.as_fd());
                return Err(DatapathError::Io {
                    what: "cannot pin the link at",
                    path,
                    source,
                });
            }
        }
        self.attached.push(Attached {
            iface: iface.to_owned(),
            ifindex,
            mode,
            prog_id,
            since: SystemTime::now(),
            link,
        });
        Ok(())
    }
}

/// `XDP_FLAGS_*` for `mode`.
fn mode_flags(mode: XdpMode) -> u32 {
    match mode {
        XdpMode::Skb => 1 << 1,
        XdpMode::Native => 1 << 2,
        XdpMode::Hw => 1 << 3,
    }
}

/// The most useful sentence out of an attach error: the OS error and, for the
/// common cases, what it means.
fn attach_reason(e: &io::Error) -> String {
    let msg = format!("BPF_LINK_CREATE: {e}");
    let errno = e.raw_os_error();
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
