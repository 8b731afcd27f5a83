//! `xdpgate check` and `xdpgate reload`: validating a configuration file, and
//! making the running daemon re-read its own.
use xdpgate_model::config;

use super::{CliError, call, render};
use crate::{
    api::{Request, protocol::Message},
    paths::Paths,
};

/// `xdpgate check`: validates a configuration file without touching the kernel.
pub fn check(path: &std::path::Path) -> Result<(), CliError> {
    let cfg = config::load(path)?;
    print!("{}", render::check(path, &cfg));
    Ok(())
}

/// `xdpgate reload`: makes the running daemon re-read its configuration.
pub fn reload(paths: &Paths) -> Result<(), CliError> {
    let r: Message = call(paths, &Request::Reload)?;
    println!("{}", r.message);
    Ok(())
}
