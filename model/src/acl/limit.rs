//! A rule's `limit`: rate and burst in packets and/or bytes per second,
//! shared by the whole rule, per source prefix or per destination prefix.
//! See `docs/design/ddos.md` for the semantics and the algorithm.
use std::fmt;

use serde::{Deserialize, Serialize};
use xdpgate_common::limit::{LimitSpec, MAX_BURST_SECONDS, MAX_RATE, key};

/// What one bucket of a limit is shared by.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum LimitKey {
    /// One bucket for every packet the rule matches.
    Rule,
    /// One bucket per source address aggregated to `v4_prefix`/`v6_prefix`.
    #[default]
    Src,
    /// One bucket per destination address aggregated likewise.
    Dst,
}

impl LimitKey {
    /// The name in the configuration and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            LimitKey::Rule => "rule",
            LimitKey::Src => "src",
            LimitKey::Dst => "dst",
        }
    }

    /// Parses `rule`, `src` or `dst`.
    pub fn parse(s: &str) -> Option<LimitKey> {
        match s {
            "rule" => Some(LimitKey::Rule),
            "src" => Some(LimitKey::Src),
            "dst" => Some(LimitKey::Dst),
            _ => None,
        }
    }
}

/// Default IPv4 aggregation of per-address limits: one address.
pub const DEFAULT_V4_PREFIX: u8 = 32;
/// Default IPv6 aggregation: the /64 that one subscriber or host owns.
pub const DEFAULT_V6_PREFIX: u8 = 64;
/// Smallest byte burst: one full-sized Ethernet frame (a frame larger than
/// the byte burst could never pass).
pub const MIN_BURST_BYTES: u64 = 1514;

/// A rule's rate limit. Packets over it are dropped (reason
/// `rate_limited`, counted per rule); packets under it take the rule's own
/// action, which must be `allow`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Packets per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pps: Option<u64>,
    /// Packets that may pass at once above the rate (default: a tenth of
    /// `pps`, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_packets: Option<u64>,
    /// Bytes per second (whole frames, Ethernet header included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec: Option<u64>,
    /// Bytes that may pass at once above the rate (default: a tenth of
    /// `bytes_per_sec`, at least 16,384).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_bytes: Option<u64>,
    /// What a bucket is shared by (default `src`).
    #[serde(default)]
    pub per: LimitKey,
    /// IPv4 prefix length of `src`/`dst` buckets (default 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v4_prefix: Option<u8>,
    /// IPv6 prefix length of `src`/`dst` buckets (default 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6_prefix: Option<u8>,
}

impl Limit {
    /// The packet burst in force.
    pub fn packet_burst(&self) -> Option<u64> {
        self.pps
            .map(|r| self.burst_packets.unwrap_or((r / 10).max(1)))
    }

    /// The byte burst in force.
    pub fn byte_burst(&self) -> Option<u64> {
        self.bytes_per_sec
            .map(|r| self.burst_bytes.unwrap_or((r / 10).max(16_384)))
    }

    /// The IPv4 prefix length in force.
    pub fn v4(&self) -> u8 {
        self.v4_prefix.unwrap_or(DEFAULT_V4_PREFIX)
    }

    /// The IPv6 prefix length in force.
    pub fn v6(&self) -> u8 {
        self.v6_prefix.unwrap_or(DEFAULT_V6_PREFIX)
    }

    /// Every problem with the limit on its own, as `(field, reason)`; `v4`
    /// and `v6` say which families the rule can match.
    pub fn problems(&self, v4: bool, v6: bool) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.pps.is_none() && self.bytes_per_sec.is_none() {
            out.push((
                "limit",
                "names no rate: give pps and/or bytes_per_sec".to_owned(),
            ));
        }
        let rate = |field: &'static str, v: Option<u64>, out: &mut Vec<_>| {
            if let Some(r) = v
                && !(1..=MAX_RATE).contains(&r)
            {
                out.push((
                    field,
                    format!("{r} is not a rate from 1 to {MAX_RATE} per second"),
                ));
            }
        };
        rate("pps", self.pps, &mut out);
        rate("bytes_per_sec", self.bytes_per_sec, &mut out);
        let burst = |field: &'static str,
                     b: Option<u64>,
                     r: Option<u64>,
                     min: u64,
                     out: &mut Vec<(&'static str, String)>| {
            let Some(b) = b else { return };
            match r {
                None => out.push((field, "needs the rate it is a burst of".to_owned())),
                Some(r) if b < min || r == 0 || b / r > MAX_BURST_SECONDS => out.push((
                    field,
                    format!(
                        "{b} is not a burst from {min} to {MAX_BURST_SECONDS} seconds of the rate"
                    ),
                )),
                Some(_) => {}
            }
        };
        burst("burst_packets", self.burst_packets, self.pps, 1, &mut out);
        burst(
            "burst_bytes",
            self.burst_bytes,
            self.bytes_per_sec,
            MIN_BURST_BYTES,
            &mut out,
        );
        for (field, len, max, fam_ok, other) in [
            ("v4_prefix", self.v4_prefix, 32u8, v4, "IPv6"),
            ("v6_prefix", self.v6_prefix, 128u8, v6, "IPv4"),
        ] {
            let Some(len) = len else { continue };
            if !(1..=max).contains(&len) {
                out.push((
                    field,
                    format!("/{len} is not a prefix length from 1 to {max}"),
                ));
            } else if self.per == LimitKey::Rule {
                out.push((
                    field,
                    "a rule-wide limit (per = \"rule\") has no prefix length".to_owned(),
                ));
            } else if !fam_ok {
                out.push((field, format!("the rule matches only {other}")));
            }
        }
        out
    }

    /// The datapath's form of the limit (assumes a valid limit).
    pub fn spec(&self) -> LimitSpec {
        let k = match self.per {
            LimitKey::Rule => key::RULE,
            LimitKey::Src => key::SRC,
            LimitKey::Dst => key::DST,
        };
        LimitSpec::new(
            k,
            u32::from(self.v4()),
            u32::from(self.v6()),
            self.pps.zip(self.packet_burst()),
            self.bytes_per_sec.zip(self.byte_burst()),
        )
    }
}

impl fmt::Display for Limit {
    /// `1000pps/100 5000000Bps/500000 per src /24 /48`, the form `acl list` shows.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let (Some(r), Some(b)) = (self.pps, self.packet_burst()) {
            parts.push(format!("{r}pps burst {b}"));
        }
        if let (Some(r), Some(b)) = (self.bytes_per_sec, self.byte_burst()) {
            parts.push(format!("{r}B/s burst {b}B"));
        }
        parts.push(format!("per {}", self.per.name()));
        if self.per != LimitKey::Rule {
            parts.push(format!("/{} /{}", self.v4(), self.v6()));
        }
        f.write_str(&parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(pps: Option<u64>, bps: Option<u64>) -> Limit {
        Limit {
            pps,
            bytes_per_sec: bps,
            ..Limit::default()
        }
    }

    #[test]
    fn defaults_are_a_tenth_of_a_second_per_slash_32_and_slash_64() {
        let l = limit(Some(1000), Some(1_000_000));
        assert_eq!(l.packet_burst(), Some(100));
        assert_eq!(l.byte_burst(), Some(100_000));
        assert_eq!((l.v4(), l.v6()), (32, 64));
        assert!(l.problems(true, true).is_empty());
        assert_eq!(limit(Some(5), None).packet_burst(), Some(1));
        assert_eq!(limit(None, Some(1000)).byte_burst(), Some(16_384));
    }

    #[test]
    fn bad_limits_name_their_field() {
        let fields = |l: &Limit, v4, v6| -> Vec<&str> {
            l.problems(v4, v6).into_iter().map(|(f, _)| f).collect()
        };
        assert_eq!(fields(&limit(None, None), true, true), ["limit"]);
        assert_eq!(fields(&limit(Some(0), None), true, true), ["pps"]);
        assert_eq!(
            fields(&limit(None, Some(MAX_RATE + 1)), true, true),
            ["bytes_per_sec"]
        );
        let l = Limit {
            burst_packets: Some(0),
            ..limit(Some(10), None)
        };
        assert_eq!(fields(&l, true, true), ["burst_packets"]);
        let l = Limit {
            burst_packets: Some(10 * 3601),
            ..limit(Some(10), None)
        };
        assert_eq!(fields(&l, true, true), ["burst_packets"]);
        let l = Limit {
            burst_bytes: Some(100),
            ..limit(None, Some(1000))
        };
        assert_eq!(fields(&l, true, true), ["burst_bytes"]);
        let l = Limit {
            burst_bytes: Some(2000),
            ..limit(Some(10), None)
        };
        assert_eq!(fields(&l, true, true), ["burst_bytes"]);
        let l = Limit {
            v4_prefix: Some(33),
            v6_prefix: Some(0),
            ..limit(Some(10), None)
        };
        assert_eq!(fields(&l, true, true), ["v4_prefix", "v6_prefix"]);
        let l = Limit {
            v4_prefix: Some(24),
            ..limit(Some(10), None)
        };
        assert_eq!(fields(&l, false, true), ["v4_prefix"]);
        let l = Limit {
            v6_prefix: Some(48),
            per: LimitKey::Rule,
            ..limit(Some(10), None)
        };
        assert_eq!(fields(&l, true, true), ["v6_prefix"]);
    }

    #[test]
    fn the_spec_carries_key_and_prefixes() {
        let l = Limit {
            per: LimitKey::Dst,
            v4_prefix: Some(24),
            v6_prefix: Some(48),
            ..limit(Some(1000), None)
        };
        let s = l.spec();
        assert_eq!((s.key, s.v4_prefix, s.v6_prefix), (key::DST, 24, 48));
        assert_eq!(s.pkt_tolerance, 100_000_000);
        assert_eq!(s.byte_interval, 0);
        assert_eq!(l.to_string(), "1000pps burst 100 per dst /24 /48");
    }
}
