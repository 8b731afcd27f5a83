//! `xdpgate policy`: an interface's default policy.
use xdpgate_model::acl::Change;

use super::{CliError, VerdictArg, apply};
use crate::paths::Paths;

/// `xdpgate policy IFACE allow|deny`.
pub fn policy(paths: &Paths, iface: String, verdict: VerdictArg) -> Result<(), CliError> {
    apply(
        paths,
        Change::Policy {
            iface,
            verdict: verdict.into(),
        },
    )
}
