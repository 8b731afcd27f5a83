//! Health checks as configured: the [`Probe`], its schedule and thresholds
//! ([`CheckSpec`]) and their limits ([`HealthError`]), and the [`TargetKey`]
//! that names one backend of one service. The monitor that runs the checks
//! is `xdpgate::lb::health`.
use std::{fmt, net::IpAddr, time::Duration};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest accepted [`CheckSpec::interval`] (one hour).
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// Largest accepted UDP probe payload (the IPv4 limit, 65 507 bytes).
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// How a target is probed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Success iff a TCP connection to the target is established. The
    /// connection is then closed with a reset (`SO_LINGER` 0), as load
    /// balancers commonly do, so frequent checks leave no `TIME_WAIT` sockets.
    Tcp,
    /// An HTTP/1.0 `GET` of `path`; success iff the code of the response's
    /// status line equals `expect_status`.
    Http {
        /// Request path, starting with `/` (no spaces or control characters).
        path: String,
        /// `Host` header; the target address (`127.0.0.1:80`, `[::1]:80`)
        /// when `None`.
        host: Option<String>,
        /// Status code that means healthy (100..=599).
        expect_status: u16,
    },
    /// `payload` sent on a connected UDP socket; success iff any datagram
    /// comes back within the timeout. An ICMP port unreachable (reported as
    /// `ECONNREFUSED`) is a failure, and so is silence.
    Udp {
        /// The request datagram (at most [`MAX_UDP_PAYLOAD`] bytes).
        payload: Vec<u8>,
    },
}

/// A health check: the probe, its schedule and the thresholds of its state
/// changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckSpec {
    /// How the target is probed.
    pub probe: Probe,
    /// Time between the starts of two probes (above zero, at most
    /// [`MAX_INTERVAL`]).
    pub interval: Duration,
    /// Time limit of one probe (above zero, at most `interval`).
    pub timeout: Duration,
    /// Consecutive successful probes that bring a down target up (1..=100).
    pub rise: u32,
    /// Consecutive failed probes that take an up target down (1..=100).
    pub fall: u32,
}

impl Default for CheckSpec {
    /// TCP connect every 2 s with a 1 s timeout, rise 2, fall 3.
    fn default() -> Self {
        CheckSpec {
            probe: Probe::Tcp,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        }
    }
}

/// Why a [`CheckSpec`] is invalid.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum HealthError {
    /// The interval is zero or above [`MAX_INTERVAL`].
    #[error("health check interval {0:?} is not in (0, {MAX_INTERVAL:?}]")]
    Interval(Duration),
    /// The timeout is zero.
    #[error("health check timeout must be above zero")]
    ZeroTimeout,
    /// The timeout is longer than the interval.
    #[error("health check timeout {timeout:?} is longer than the interval {interval:?}")]
    TimeoutOverInterval {
        /// The timeout.
        timeout: Duration,
        /// The interval.
        interval: Duration,
    },
    /// `rise` is not in 1..=100.
    #[error("health check rise {0} is not in 1..=100")]
    Rise(u32),
    /// `fall` is not in 1..=100.
    #[error("health check fall {0} is not in 1..=100")]
    Fall(u32),
    /// The HTTP path does not start with `/` or holds spaces or control
    /// characters.
    #[error(
        "HTTP health check path {0:?} must start with '/' and hold no spaces or control characters"
    )]
    Path(String),
    /// The HTTP `Host` is empty or holds spaces or control characters.
    #[error(
        "HTTP health check host {0:?} must be non-empty and hold no spaces or control characters"
    )]
    Host(String),
    /// The expected HTTP status is not in 100..=599.
    #[error("HTTP health check status {0} is not in 100..=599")]
    Status(u16),
    /// The UDP payload is longer than [`MAX_UDP_PAYLOAD`].
    #[error("UDP health check payload of {0} bytes is longer than {MAX_UDP_PAYLOAD}")]
    Payload(usize),
}

/// Whether `s` would break out of its place in an HTTP request line or header.
fn unsafe_in_request(s: &str) -> bool {
    s.bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
}

impl CheckSpec {
    /// Checks the limits documented on each field.
    pub fn validate(&self) -> Result<(), HealthError> {
        if self.interval.is_zero() || self.interval > MAX_INTERVAL {
            return Err(HealthError::Interval(self.interval));
        }
        if self.timeout.is_zero() {
            return Err(HealthError::ZeroTimeout);
        }
        if self.timeout > self.interval {
            return Err(HealthError::TimeoutOverInterval {
                timeout: self.timeout,
                interval: self.interval,
            });
        }
        if !(1..=100).contains(&self.rise) {
            return Err(HealthError::Rise(self.rise));
        }
        if !(1..=100).contains(&self.fall) {
            return Err(HealthError::Fall(self.fall));
        }
        match &self.probe {
            Probe::Tcp => {}
            Probe::Http {
                path,
                host,
                expect_status,
            } => {
                if !path.starts_with('/') || unsafe_in_request(path) {
                    return Err(HealthError::Path(path.clone()));
                }
                if let Some(host) = host
                    && (host.is_empty() || unsafe_in_request(host))
                {
                    return Err(HealthError::Host(host.clone()));
                }
                if !(100..=599).contains(expect_status) {
                    return Err(HealthError::Status(*expect_status));
                }
            }
            Probe::Udp { payload } => {
                if payload.len() > MAX_UDP_PAYLOAD {
                    return Err(HealthError::Payload(payload.len()));
                }
            }
        }
        Ok(())
    }
}

/// Identifies a target; chosen by the caller (one backend of one service).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TargetKey {
    /// The service's name.
    pub service: String,
    /// The backend's address.
    pub backend: IpAddr,
}

impl fmt::Display for TargetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.service, self.backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_limits() {
        let ok = CheckSpec::default();
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(
            (ok.probe.clone(), ok.interval, ok.timeout, ok.rise, ok.fall),
            (
                Probe::Tcp,
                Duration::from_secs(2),
                Duration::from_secs(1),
                2,
                3
            )
        );
        let http = |path: &str, host: Option<&str>, status| CheckSpec {
            probe: Probe::Http {
                path: path.into(),
                host: host.map(Into::into),
                expect_status: status,
            },
            ..CheckSpec::default()
        };
        assert_eq!(http("/healthz", None, 200).validate(), Ok(()));
        assert_eq!(http("/", Some("example.com:8080"), 599).validate(), Ok(()));
        let cases = [
            (
                CheckSpec {
                    interval: Duration::ZERO,
                    ..ok.clone()
                },
                HealthError::Interval(Duration::ZERO),
            ),
            (
                CheckSpec {
                    interval: MAX_INTERVAL + Duration::from_secs(1),
                    ..ok.clone()
                },
                HealthError::Interval(MAX_INTERVAL + Duration::from_secs(1)),
            ),
            (
                CheckSpec {
                    timeout: Duration::ZERO,
                    ..ok.clone()
                },
                HealthError::ZeroTimeout,
            ),
            (
                CheckSpec {
                    timeout: Duration::from_secs(3),
                    ..ok.clone()
                },
                HealthError::TimeoutOverInterval {
                    timeout: Duration::from_secs(3),
                    interval: Duration::from_secs(2),
                },
            ),
            (
                CheckSpec {
                    rise: 0,
                    ..ok.clone()
                },
                HealthError::Rise(0),
            ),
            (
                CheckSpec {
                    rise: 101,
                    ..ok.clone()
                },
                HealthError::Rise(101),
            ),
            (
                CheckSpec {
                    fall: 0,
                    ..ok.clone()
                },
                HealthError::Fall(0),
            ),
            (
                CheckSpec {
                    fall: 101,
                    ..ok.clone()
                },
                HealthError::Fall(101),
            ),
            (
                http("healthz", None, 200),
                HealthError::Path("healthz".into()),
            ),
            (http("/a b", None, 200), HealthError::Path("/a b".into())),
            (
                http("/\r\nX: y", None, 200),
                HealthError::Path("/\r\nX: y".into()),
            ),
            (http("/", Some(""), 200), HealthError::Host(String::new())),
            (
                http("/", Some("a\r\nb"), 200),
                HealthError::Host("a\r\nb".into()),
            ),
            (http("/", None, 99), HealthError::Status(99)),
            (http("/", None, 600), HealthError::Status(600)),
            (
                CheckSpec {
                    probe: Probe::Udp {
                        payload: vec![0; MAX_UDP_PAYLOAD + 1],
                    },
                    ..ok.clone()
                },
                HealthError::Payload(MAX_UDP_PAYLOAD + 1),
            ),
        ];
        for (spec, err) in cases {
            assert_eq!(spec.validate(), Err(err), "{spec:?}");
        }
    }
}
