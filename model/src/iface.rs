//! Per-interface settings of the datapath: the XDP attach mode and what
//! happens to malformed packets.
use serde::{Deserialize, Serialize};

/// The mode an XDP program is attached in. xdpgate never falls back from the
/// mode asked for to another one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode.
    Native,
    /// Generic (skb) mode.
    Skb,
    /// Hardware offload.
    Hw,
}

impl XdpMode {
    /// The name used on the command line (`--mode`).
    pub fn name(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Skb => "skb",
            XdpMode::Hw => "hw",
        }
    }
}

/// How the datapath treats malformed packets on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Malformed {
    /// Drop them (the default); they are counted under their drop reason.
    Drop,
    /// Pass them to the stack; they are still counted under their drop reason.
    Pass,
}
