//! `xdpgate down`: the one way to take xdpgate off an interface. Stopping the
//! daemon (SIGTERM, SIGINT, `systemctl stop`) leaves the datapath enforcing
//! the last committed state; `down` detaches the pinned links and removes
//! the pins, for every interface or for one.
use super::CliError;
use crate::{
    datapath::PinDir,
    paths::Paths,
    sys::{self, DaemonLock},
};

/// `xdpgate down [--iface IF]`.
pub fn down(paths: &Paths, iface: Option<&str>) -> Result<(), CliError> {
    sys::require_root("xdpgate down")?;
    // A running daemon would attach again at its next reload: it must be stopped first.
    let _lock = DaemonLock::acquire(&paths.run_dir, &paths.lock_file()).map_err(|e| match e {
        sys::SysError::Locked { pid, .. } => CliError::DaemonRunning { pid },
        other => CliError::Sys(other),
    })?;
    if !paths.bpffs_dir.exists() {
        println!(
            "nothing to do: no pinned datapath in {}",
            paths.bpffs_dir.display()
        );
        return Ok(());
    }
    let pins = PinDir::open(&paths.bpffs_dir).map_err(CliError::Pins)?;
    match iface {
        Some(name) => {
            if !pins.link_path(name).exists() {
                return Err(CliError::BadInput(format!(
                    "{name}: xdpgate is not enforcing there (no pinned link {})",
                    pins.link_path(name).display()
                )));
            }
            pins.remove_link(name).map_err(CliError::Pins)?;
            println!(
                "{name}: detached; its link pin removed (the other interfaces and the maps in {} stay)",
                paths.bpffs_dir.display()
            );
        }
        None => {
            pins.remove_all().map_err(CliError::Pins)?;
            println!(
                "detached from every interface; {} removed",
                paths.bpffs_dir.display()
            );
        }
    }
    Ok(())
}
