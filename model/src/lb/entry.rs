//! The written form of a service: [`ServiceEntry`] and [`HealthEntry`], as
//! the configuration file (`[[service]]`), the state file and API requests
//! carry them (plain strings and numbers), and their conversion to a
//! validated [`ServiceSpec`].
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{
    BackendSpec, Forward, HealthConfig, ParseError, ServiceId, ServiceSpec, check_spec,
    health::{CheckSpec, HealthError, Probe},
    normalise, validate,
};

/// Why a [`HealthEntry`] does not describe a valid health check.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum HealthEntryError {
    /// Not tcp, http or udp.
    #[error("health type {0:?} is not tcp, http or udp")]
    Kind(String),
    /// `path`, `host` or `status` on a check that is not HTTP.
    #[error("health path, host and status apply to type = \"http\" only")]
    HttpOnly,
    /// `payload` on a check that is not UDP.
    #[error("health payload applies to type = \"udp\" only")]
    UdpOnly,
    /// An interval or timeout out of range.
    #[error("health {what} = {value}: use seconds above 0, at most 3600")]
    Seconds {
        /// `interval` or `timeout`.
        what: &'static str,
        /// What was given.
        value: f64,
    },
    /// The check's limits.
    #[error(transparent)]
    Check(#[from] HealthError),
    /// Port 0.
    #[error("health port 0: use 1-65535")]
    Port0,
}

/// A service as written in the configuration file (`[[service]]`), the
/// state file and API requests: plain strings and numbers, converted to a
/// [`ServiceSpec`] by [`ServiceEntry::to_spec`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntry {
    /// `VIP:PORT/PROTO` (see [`ServiceId`]).
    pub service: String,
    /// `encap` (default) or `l2dsr`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<String>,
    /// Backends: `"ADDR"` or `"ADDR weight=N"`.
    #[serde(default)]
    pub backends: Vec<String>,
    /// Health checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthEntry>,
}

/// Health checks as written (`health = { type = "http", path = "/", ... }`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthEntry {
    /// `tcp` (default), `http` or `udp`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Port probed (default: the service's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Seconds between probes (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<f64>,
    /// Seconds a probe may take (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<f64>,
    /// Successes that bring a backend up (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rise: Option<u32>,
    /// Failures that take a backend down (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fall: Option<u32>,
    /// HTTP: path (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// HTTP: Host header (default: the backend's address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// HTTP: expected status (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// UDP: the probe's payload (default `ping`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
}

fn seconds(
    what: &'static str,
    v: Option<f64>,
    default: std::time::Duration,
) -> Result<std::time::Duration, HealthEntryError> {
    match v {
        None => Ok(default),
        Some(s) if s.is_finite() && s > 0.0 && s <= 3600.0 => {
            Ok(std::time::Duration::from_secs_f64(s))
        }
        Some(value) => Err(HealthEntryError::Seconds { what, value }),
    }
}

impl HealthEntry {
    /// The validated health configuration.
    pub fn to_config(&self) -> Result<HealthConfig, HealthEntryError> {
        let d = CheckSpec::default();
        let probe = match self.kind.as_deref().unwrap_or("tcp") {
            "tcp" => Probe::Tcp,
            "http" => Probe::Http {
                path: self.path.clone().unwrap_or_else(|| "/".into()),
                host: self.host.clone(),
                expect_status: self.status.unwrap_or(200),
            },
            "udp" => Probe::Udp {
                payload: self
                    .payload
                    .clone()
                    .unwrap_or_else(|| "ping".into())
                    .into_bytes(),
            },
            other => return Err(HealthEntryError::Kind(other.to_owned())),
        };
        if !matches!(probe, Probe::Http { .. })
            && (self.path.is_some() || self.host.is_some() || self.status.is_some())
        {
            return Err(HealthEntryError::HttpOnly);
        }
        if !matches!(probe, Probe::Udp { .. }) && self.payload.is_some() {
            return Err(HealthEntryError::UdpOnly);
        }
        let check = CheckSpec {
            probe,
            interval: seconds("interval", self.interval, d.interval)?,
            timeout: seconds("timeout", self.timeout, d.timeout)?,
            rise: self.rise.unwrap_or(d.rise),
            fall: self.fall.unwrap_or(d.fall),
        };
        check.validate()?;
        if self.port == Some(0) {
            return Err(HealthEntryError::Port0);
        }
        Ok(HealthConfig {
            check,
            port: self.port,
        })
    }

    /// The entry that describes `h`.
    pub fn from_config(h: &HealthConfig) -> HealthEntry {
        let mut e = HealthEntry {
            port: h.port,
            interval: Some(h.check.interval.as_secs_f64()),
            timeout: Some(h.check.timeout.as_secs_f64()),
            rise: Some(h.check.rise),
            fall: Some(h.check.fall),
            ..HealthEntry::default()
        };
        match &h.check.probe {
            Probe::Tcp => e.kind = Some("tcp".into()),
            Probe::Http {
                path,
                host,
                expect_status,
            } => {
                e.kind = Some("http".into());
                e.path = Some(path.clone());
                e.host = host.clone();
                e.status = Some(*expect_status);
            }
            Probe::Udp { payload } => {
                e.kind = Some("udp".into());
                e.payload = Some(String::from_utf8_lossy(payload).into_owned());
            }
        }
        e
    }
}

impl ServiceEntry {
    /// The validated service; every problem of this entry otherwise.
    pub fn to_spec(&self) -> Result<ServiceSpec, Vec<String>> {
        let mut problems = Vec::new();
        let id = match self.service.parse::<ServiceId>() {
            Ok(id) => Some(id),
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        };
        let name = id.map_or(self.service.clone(), |i| i.to_string());
        let forward = match self
            .forward
            .as_deref()
            .map(str::parse::<Forward>)
            .transpose()
        {
            Ok(f) => f.unwrap_or_default(),
            Err(e) => {
                problems.push(format!("{name}: {e}"));
                Forward::Encap
            }
        };
        let tokens: Vec<String> = self
            .backends
            .iter()
            .flat_map(|b| b.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .collect();
        let backends = match parse_backends(&tokens) {
            Ok(b) => b,
            Err(e) => {
                problems.push(format!("{name}: {e}"));
                Vec::new()
            }
        };
        let health = match self.health.as_ref().map(HealthEntry::to_config).transpose() {
            Ok(h) => h,
            Err(e) => {
                problems.push(format!("{name}: {e}"));
                None
            }
        };
        match id {
            Some(id) if problems.is_empty() => {
                let spec = normalise(&ServiceSpec {
                    id,
                    forward,
                    backends,
                    health,
                });
                let mut p = Vec::new();
                check_spec(&spec, &mut p);
                if p.is_empty() { Ok(spec) } else { Err(p) }
            }
            _ => Err(problems),
        }
    }

    /// The entry that describes `s`.
    pub fn from_spec(s: &ServiceSpec) -> ServiceEntry {
        ServiceEntry {
            service: s.id.to_string(),
            forward: Some(s.forward.name().into()),
            backends: s
                .backends
                .iter()
                .map(|b| {
                    if b.weight == 1 {
                        b.addr.to_string()
                    } else {
                        format!("{} weight={}", b.addr, b.weight)
                    }
                })
                .collect(),
            health: s.health.as_ref().map(HealthEntry::from_config),
        }
    }
}

/// Converts entries to specs, collecting every problem, and checks them as a
/// whole against `ring_services` service slots.
pub fn specs_of(
    entries: &[ServiceEntry],
    ring_services: u32,
) -> Result<Vec<ServiceSpec>, Vec<String>> {
    let mut problems = Vec::new();
    let mut specs = Vec::new();
    for e in entries {
        match e.to_spec() {
            Ok(s) => specs.push(s),
            Err(p) => problems.extend(p),
        }
    }
    if problems.is_empty() {
        problems = validate(&specs, ring_services);
    }
    if problems.is_empty() {
        Ok(specs)
    } else {
        Err(problems)
    }
}

/// Parses the `--backend` values of `lb add`: addresses, each optionally
/// followed by `weight=N` (default weight 1).
pub fn parse_backends(tokens: &[String]) -> Result<Vec<BackendSpec>, ParseError> {
    let mut out: Vec<BackendSpec> = Vec::new();
    for t in tokens {
        if let Some(w) = t.strip_prefix("weight=") {
            let last = out
                .last_mut()
                .ok_or_else(|| ParseError::OrphanWeight(t.clone()))?;
            last.weight = w.parse().map_err(|_| ParseError::Weight {
                addr: last.addr,
                text: w.to_owned(),
            })?;
            continue;
        }
        let addr: IpAddr = t.parse().map_err(|_| ParseError::Backend(t.clone()))?;
        out.push(BackendSpec { addr, weight: 1 });
    }
    Ok(out)
}
