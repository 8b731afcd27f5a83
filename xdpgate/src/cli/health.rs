//! The health `xdpgate status` reports and its exit code, decided here
//! alone (listed in the README and by `xdpgate status --help`).
use serde::Serialize;

use crate::api::protocol::Status;

/// What `xdpgate status` found, with its exit code. Like `systemctl
/// is-active` and the LSB `status` action, 0 means healthy and 3 means not
/// running; 1 stays "error" (the daemon does not answer) and 64 "invalid
/// input", as for every verb. The codes are listed in the README and in
/// `xdpgate status --help`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// 0: a daemon runs, enforces, and the state in force is saved.
    Ok,
    /// 1: a daemon holds the lock but does not answer on its socket.
    Unreachable,
    /// 2: a daemon runs and enforces, but the state in force is not saved
    /// (a restart would lose the runtime changes since the last save).
    Degraded,
    /// 3: no daemon runs and no xdpgate datapath of this bpffs directory is
    /// attached: nothing is enforced.
    NotRunning,
    /// 4: no daemon runs, but the pinned datapath still enforces its last
    /// committed state (health checks stopped; start the daemon).
    EnforcingWithoutDaemon,
}

impl Health {
    /// Judges what `status` found: whether a daemon holds the lock, what it
    /// answered (`None`: it did not), and whether a pinned link enforces.
    pub fn judge(running: bool, detail: Option<&Status>, enforcing: bool) -> Health {
        match (running, detail) {
            (true, None) => Health::Unreachable,
            (true, Some(s)) if s.state_not_saved.is_some() => Health::Degraded,
            (true, Some(_)) => Health::Ok,
            (false, _) if enforcing => Health::EnforcingWithoutDaemon,
            (false, _) => Health::NotRunning,
        }
    }

    /// The exit code of `xdpgate status`.
    pub const fn exit_code(self) -> u8 {
        match self {
            Health::Ok => 0,
            Health::Unreachable => 1,
            Health::Degraded => 2,
            Health::NotRunning => 3,
            Health::EnforcingWithoutDaemon => 4,
        }
    }

    /// One line saying what the code means.
    pub const fn meaning(self) -> &'static str {
        match self {
            Health::Ok => "ok: the daemon runs and enforces, its state is saved",
            Health::Unreachable => "error: a daemon holds the lock but does not answer",
            Health::Degraded => {
                "degraded: the daemon runs and enforces, but the state in force is not saved"
            }
            Health::NotRunning => "not running: no daemon, and nothing of xdpgate enforces",
            Health::EnforcingWithoutDaemon => {
                "enforcing without a daemon: the pinned datapath enforces its last state; start the daemon"
            }
        }
    }
}
