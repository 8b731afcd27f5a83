//! `[ddos]`: the size of the per-prefix bucket table (fixed at start) and the
//! SYN-cookie path's settings (applied on reload), each key checked on its
//! own and reported at its position.
use std::time::Duration;

use xdpgate_common::limit::{MAX_BUCKETS, MAX_BURST_SECONDS, MIN_BUCKETS};

use super::{
    DdosSettings,
    fields::{Ctx, Section},
};

/// The keys `[ddos]` may hold.
const DDOS_KEYS: &[&str] = &[
    "limit_buckets",
    "synack_pps",
    "synack_burst",
    "synack_v4_prefix",
    "synack_v6_prefix",
    "syncookie_refresh_secs",
];

/// The highest `synack_pps`: SYN-ACKs per second to one source prefix.
const MAX_SYNACK_PPS: i64 = 1_000_000_000;

/// Fills `out` from `[ddos]`, reporting every error.
pub(super) fn ddos(cx: &mut Ctx<'_>, s: &Section<'_, '_>, out: &mut DdosSettings) {
    cx.known_keys(s, DDOS_KEYS);
    if let Some((n, _)) = cx.integer(
        s,
        "limit_buckets",
        i64::from(MIN_BUCKETS)..=i64::from(MAX_BUCKETS),
    ) {
        out.limit_buckets = n as u32;
    }
    if let Some((n, _)) = cx.integer(s, "synack_pps", 1..=MAX_SYNACK_PPS) {
        out.synack_pps = n as u64;
    }
    if let Some((n, at)) = cx.count(s, "synack_burst") {
        // The rate in force: this file's, or the default.
        let max = out.synack_pps.saturating_mul(MAX_BURST_SECONDS);
        if (1..=max).contains(&n) {
            out.synack_burst = n;
        } else {
            cx.push(
                &at,
                format!(
                    "[ddos] synack_burst = {n}: use 1 to {max} ({MAX_BURST_SECONDS} seconds of synack_pps = {})",
                    out.synack_pps
                ),
            );
        }
    }
    if let Some((n, _)) = cx.integer(s, "synack_v4_prefix", 1..=32) {
        out.synack_v4_prefix = n as u8;
    }
    if let Some((n, _)) = cx.integer(s, "synack_v6_prefix", 1..=128) {
        out.synack_v6_prefix = n as u8;
    }
    if let Some((n, _)) = cx.integer(s, "syncookie_refresh_secs", 1..=60) {
        out.syncookie_refresh = Duration::from_secs(n as u64);
    }
}

impl DdosSettings {
    /// Why going from these settings (in force) to `next` needs a restart,
    /// if it does: the bucket table is sized when the datapath is loaded.
    /// The other keys apply on reload.
    pub fn needs_restart(&self, next: &DdosSettings) -> Option<String> {
        (self.limit_buckets != next.limit_buckets).then(|| {
            format!(
                "[ddos] limit_buckets changed from {} to {} (the bucket table is sized when the datapath is loaded)",
                self.limit_buckets, next.limit_buckets
            )
        })
    }
}
