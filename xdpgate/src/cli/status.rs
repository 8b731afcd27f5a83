//! `xdpgate status` and `xdpgate stats`: what is attached where, whether a
//! daemon runs, and the packet counters.
use xdpgate_common::PROGRAM_NAME;

use super::{
    CliError, Output, call, print_json,
    render::{self, DaemonView, StatusView, XdpRow},
};
use crate::{
    api::{
        Request,
        protocol::{Stats, Status},
    },
    paths::Paths,
    sys::{self, DaemonLock, netlink},
};

/// `xdpgate status`: XDP programs on this namespace's interfaces, and the daemon.
pub fn status(paths: &Paths, output: Output) -> Result<(), CliError> {
    let links = netlink::links().map_err(CliError::Links)?;
    // Program names need CAP_SYS_ADMIN; without it they stay unknown.
    let names = sys::program_names();
    let mut interfaces = Vec::new();
    for link in &links {
        for a in &link.xdp {
            let program = names.get(&a.prog_id).cloned();
            interfaces.push(XdpRow {
                interface: link.name.clone(),
                ifindex: link.ifindex,
                mode: a.mode,
                prog_id: a.prog_id,
                xdpgate: program.as_deref() == Some(PROGRAM_NAME),
                program,
            });
        }
    }
    let pid = DaemonLock::holder(&paths.lock_file());
    // What the daemon itself says (configuration, state file, last reload).
    let detail = pid.and_then(|_| call::<Status>(paths, &Request::Status).ok());
    let view = StatusView {
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
    Ok(())
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
