//! `xdpgate check` and `xdpgate reload`: validating a configuration file, and
//! making the running daemon re-read its own.
use xdpgate_model::config;

use super::{CliError, call, render};
use crate::{
    api::{Request, protocol::Message},
    paths::Paths,
};

/// `xdpgate check`: validates a configuration file without touching the kernel.
/// Every error is printed on stderr as `FILE:LINE:COL: message`, one per
/// line like a compiler's, in file order; the verb then fails with invalid
/// input (exit 64).
pub fn check(path: &std::path::Path) -> Result<(), CliError> {
    match config::load(path) {
        Ok(cfg) => {
            print!("{}", render::check(path, &cfg));
            Ok(())
        }
        Err(config::ConfigError::Invalid { path, issues }) => {
            let mut out = String::new();
            for i in &issues {
                let at = i.at.map(|(l, c)| format!("{l}:{c}:")).unwrap_or_default();
                out.push_str(&format!("{}:{at} {}\n", path.display(), i.message));
            }
            eprint!("{out}");
            Err(CliError::BadInput(format!(
                "{} has {} error(s)",
                path.display(),
                issues.len()
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// `xdpgate reload`: makes the running daemon re-read its configuration.
pub fn reload(paths: &Paths) -> Result<(), CliError> {
    let r: Message = call(paths, &Request::Reload)?;
    println!("{}", r.message);
    Ok(())
}
