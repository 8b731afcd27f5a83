//! `xdpgate status` and `xdpgate stats`: what is attached where, whether a
//! daemon runs, and the packet counters. `status` is also a health check:
//! [`Health`] is the one place its exit codes are decided.
use std::{os::fd::AsFd as _, time::UNIX_EPOCH};

use xdpgate_common::{
    PROGRAM_NAME,
    pins::{LINKS_DIR, META_PIN, Meta},
};

use super::{
    CliError, Output, call,
    health::Health,
    print_json,
    render::{self, DaemonView, Enforcing, StatusView, XdpRow},
};
use crate::{
    api::{
        Request,
        protocol::{Stats, Status},
    },
    datapath::pins::{read_meta, tag_hex},
    paths::Paths,
    sys::{
        self, DaemonLock, netlink,
        object::{self, LinkInfo},
    },
};

/// `xdpgate status`: XDP programs on this namespace's interfaces, and the
/// daemon. Anything but [`Health::Ok`] is returned as
/// [`CliError::Unhealthy`] after the report is printed, so that the exit
/// code tells it.
pub fn status(paths: &Paths, output: Output) -> Result<(), CliError> {
    let links = netlink::links().map_err(CliError::Links)?;
    // Program names need CAP_SYS_ADMIN; without it they stay unknown.
    let names = sys::program_names();
    let pid = DaemonLock::holder(&paths.lock_file());
    let pinned = pinned(paths);
    let mut interfaces = Vec::new();
    for link in &links {
        for a in &link.xdp {
            let program = names.get(&a.prog_id).cloned();
            let pin = pinned.links.iter().find(|(name, info, _)| {
                *name == link.name && info.ifindex == link.ifindex && info.prog_id == a.prog_id
            });
            interfaces.push(XdpRow {
                interface: link.name.clone(),
                ifindex: link.ifindex,
                mode: a.mode,
                prog_id: a.prog_id,
                xdpgate: program.as_deref() == Some(PROGRAM_NAME),
                program,
                enforcing: pin.map(|_| {
                    if pid.is_some() {
                        Enforcing::WithDaemon
                    } else {
                        Enforcing::WithoutDaemon
                    }
                }),
                schema: pin.and(pinned.meta.map(|m| m.schema)),
                prog_tag: pin.and_then(|_| tag_of(a.prog_id)),
                since_unix: pin.map(|(_, _, since)| *since),
            });
        }
    }
    // What the daemon itself says (configuration, state file, last reload).
    let answer = pid.map(|_| call::<Status>(paths, &Request::Status));
    let unreachable = match &answer {
        Some(Err(e)) => Some(e.report()),
        _ => None,
    };
    let detail = answer.and_then(Result::ok);
    let enforcing = interfaces.iter().any(|r| r.enforcing.is_some());
    let health = Health::judge(pid.is_some(), detail.as_ref(), enforcing);
    let reason = match health {
        Health::Unreachable => unreachable,
        Health::Degraded => detail
            .as_ref()
            .and_then(|s| s.state_not_saved.as_ref())
            .map(|r| format!("state not saved: {r}")),
        _ => None,
    };
    let view = StatusView {
        health,
        exit_code: health.exit_code(),
        daemon: DaemonView {
            running: pid.is_some(),
            pid,
            run_dir: paths.run_dir.clone(),
            bpffs_dir: paths.bpffs_dir.clone(),
            detail,
        },
        interfaces,
    };
    match output {
        Output::Json => print_json(&view)?,
        Output::Text => print!("{}", render::status(&view)),
    }
    if health == Health::Ok {
        return Ok(());
    }
    Err(CliError::Unhealthy {
        code: health.exit_code(),
        message: match reason {
            Some(r) => format!("{} ({r})", health.meaning()),
            None => health.meaning().to_owned(),
        },
    })
}

/// What is pinned under the bpffs directory, read without taking its lock.
struct Pinned {
    meta: Option<Meta>,
    /// Interface name, link, pinned since (Unix seconds).
    links: Vec<(String, LinkInfo, u64)>,
}

fn pinned(paths: &Paths) -> Pinned {
    let meta = read_meta(&paths.bpffs_dir.join(META_PIN)).ok();
    let dir = paths.bpffs_dir.join(LINKS_DIR);
    let mut links = Vec::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let Ok(info) = object::obj_get(&path).and_then(|fd| object::link_info(fd.as_fd())) else {
            continue;
        };
        let since = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        links.push((name, info, since));
    }
    Pinned { meta, links }
}

/// The kernel's tag of program `id`, in hex.
fn tag_of(id: u32) -> Option<String> {
    let fd = object::prog_by_id(id).ok()?;
    object::prog_info(fd.as_fd()).ok().map(|i| tag_hex(&i.tag))
}

/// `xdpgate stats`: the packet counters.
pub fn stats(paths: &Paths, output: Output) -> Result<(), CliError> {
    let stats: Stats = call(paths, &Request::Stats)?;
    match output {
        Output::Json => print_json(&stats.report)?,
        Output::Text => print!("{}", render::stats(&stats.report)),
    }
    Ok(())
}
