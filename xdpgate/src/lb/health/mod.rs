//! Health checks of load-balancer backends: a [`HealthMonitor`] runs one
//! small tokio task per target (no thread per check) that probes the target
//! every [`CheckSpec::interval`] with a [`Probe`] (TCP connect, HTTP/1.0 `GET`
//! or UDP request/response) and keeps its up/down state.
//!
//! Semantics:
//!
//! * A target starts **up**. Adding a service must not wait `rise` times
//!   `interval` before it takes traffic, and a backend that is actually down
//!   leaves after `fall` failed probes (`fall` times `interval` at most, the
//!   first probe running right away). The same holds for a target whose
//!   address or check changed: it is a new target, restarted up.
//! * An up target goes **down** after `fall` consecutive failed probes; a down
//!   target goes up again after `rise` consecutive successful ones. Every
//!   transition is sent as a [`HealthEvent`] and logged (`warn` when down,
//!   with the reason; `info` when up). Adding or removing a target is not a
//!   transition and sends nothing.
//! * The first probe runs right away, then one every interval, all shifted by
//!   a small deterministic per-target jitter (below a tenth of the interval,
//!   from a hash of the [`TargetKey`]) so thousands of targets configured at
//!   once do not fire in lockstep.
//! * Every probe runs under [`tokio::time::timeout`] (a timeout is a failure)
//!   and under `tokio::select!` with the target's cancellation token, so
//!   cancelling (the monitor's token, removing or changing the target,
//!   dropping the monitor) interrupts an in-flight connect or read at once.
//!
//! The state of each target lives behind its own `Arc<Mutex<_>>`, shared by
//! its task and [`HealthMonitor::status`]; the lock is never held across an
//! `.await`.
//!
//! A failed probe is a [`ProbeError`]; the status keeps its text
//! ([`TargetStatus::last_error`], shown by `lb list`).
use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Serialize, Serializer};
use thiserror::Error;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
    sync::mpsc::UnboundedSender,
    time::{self, Instant, MissedTickBehavior},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use xdpgate_model::lb::health::{CheckSpec, Probe, TargetKey};

/// Bytes of an HTTP response read to find its status line.
const MAX_STATUS_LINE: usize = 1024;

/// Why a probe failed. The texts are what `lb list` and the log show.
#[derive(Debug, Error)]
pub enum ProbeError {
    /// The probe did not finish within the check's timeout (a UDP probe:
    /// no reply came).
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Connecting failed: refused, unreachable, reset (TCP and HTTP), or no
    /// route (UDP).
    #[error("connect: {0}")]
    Connect(#[source] io::Error),
    /// The UDP probe's socket could not be bound.
    #[error("bind: {0}")]
    Bind(#[source] io::Error),
    /// Sending the request failed.
    #[error("send: {0}")]
    Send(#[source] io::Error),
    /// Reading the answer failed (UDP: usually "connection refused", an ICMP
    /// port unreachable).
    #[error("receive: {0}")]
    Receive(#[source] io::Error),
    /// HTTP: the server closed the connection without a response.
    #[error("connection closed without a response")]
    NoResponse,
    /// HTTP: the first line of the response is not a status line (its start
    /// is kept).
    #[error("malformed status line {0:?}")]
    MalformedStatus(String),
    /// HTTP: another status than expected.
    #[error("HTTP status {got}, expected {expected}")]
    Status {
        /// The status received.
        got: u16,
        /// The status the check expects.
        expected: u16,
    },
}

/// A target changed state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthEvent {
    /// The target.
    pub key: TargetKey,
    /// The address it is probed at.
    pub addr: SocketAddr,
    /// Its new state.
    pub up: bool,
    /// Why: the count of consecutive results (and the last error when down),
    /// or that the check was restarted.
    pub reason: String,
}

/// One target's state, as [`HealthMonitor::status`] reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TargetStatus {
    /// The target.
    pub key: TargetKey,
    /// The address it is probed at.
    pub addr: SocketAddr,
    /// Whether it is up.
    pub up: bool,
    /// Successful probes since the last failed one.
    pub consecutive_successes: u32,
    /// Failed probes since the last successful one.
    pub consecutive_failures: u32,
    /// Probes completed since the target was added (or restarted).
    pub checks_total: u64,
    /// Failed probes among them.
    pub failures_total: u64,
    /// Error of the most recent failed probe (a [`ProbeError`]'s text), kept
    /// after recovery (see `consecutive_failures`); `None` if no probe failed
    /// yet.
    pub last_error: Option<String>,
    /// When the target was added (or restarted) or last changed state;
    /// serialized as seconds since the Unix epoch.
    #[serde(serialize_with = "unix_secs")]
    pub last_change: SystemTime,
}

fn unix_secs<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

/// Mutable state of one target, shared by its task and the monitor.
#[derive(Clone, Debug)]
struct State {
    up: bool,
    successes: u32,
    failures: u32,
    checks_total: u64,
    failures_total: u64,
    last_error: Option<String>,
    last_change: SystemTime,
}

impl State {
    /// A new target: up (see the module documentation).
    fn new() -> Self {
        State {
            up: true,
            successes: 0,
            failures: 0,
            checks_total: 0,
            failures_total: 0,
            last_error: None,
            last_change: SystemTime::now(),
        }
    }

    /// Counts one probe's result, its error as the log and `lb list` show it
    /// (a [`ProbeError`] rendered); returns the reason of the state change it
    /// causes, if any.
    fn record(&mut self, result: Result<(), String>, rise: u32, fall: u32) -> Option<String> {
        self.checks_total += 1;
        match result {
            Ok(()) => {
                self.successes = self.successes.saturating_add(1);
                self.failures = 0;
                if !self.up && self.successes >= rise {
                    self.up = true;
                    self.last_change = SystemTime::now();
                    return Some(format!("{rise} consecutive successful checks"));
                }
            }
            Err(error) => {
                self.failures = self.failures.saturating_add(1);
                self.successes = 0;
                self.failures_total += 1;
                let change = self.up && self.failures >= fall;
                let reason =
                    change.then(|| format!("{fall} consecutive failed checks, last: {error}"));
                if change {
                    self.up = false;
                    self.last_change = SystemTime::now();
                }
                self.last_error = Some(error);
                return reason;
            }
        }
        None
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn log_event(ev: &HealthEvent) {
    if ev.up {
        log::info!("health: {} ({}) is up: {}", ev.key, ev.addr, ev.reason);
    } else {
        log::warn!("health: {} ({}) is down: {}", ev.key, ev.addr, ev.reason);
    }
}

/// Offset of a target's probes: FNV-1a of the key, modulo a tenth of the
/// interval (zero when that is below a nanosecond).
fn jitter(key: &TargetKey, interval: Duration) -> Duration {
    let span = (interval / 10).as_nanos() as u64;
    if span == 0 {
        return Duration::ZERO;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let ip = match key.backend {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    };
    for b in key.service.bytes().chain([0xff]).chain(ip) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Duration::from_nanos(h % span)
}

/// One monitored target.
struct Entry {
    addr: SocketAddr,
    spec: CheckSpec,
    token: CancellationToken,
    state: Arc<Mutex<State>>,
}

impl Entry {
    /// Stops the task; after this returns it records nothing and sends no
    /// event. Returns whether the target was up.
    fn stop(&self) -> bool {
        let state = lock(&self.state);
        self.token.cancel();
        state.up
    }
}

/// Runs the health checks of a set of targets, one task each.
///
/// Dropping the monitor cancels all its tasks.
pub struct HealthMonitor {
    tracker: TaskTracker,
    cancel: CancellationToken,
    events: UnboundedSender<HealthEvent>,
    targets: BTreeMap<TargetKey, Entry>,
}

impl HealthMonitor {
    /// A monitor without targets, whose tasks will run on `tracker`, each
    /// with a child token of `cancel`, and send state changes to `events`
    /// (a closed receiver is fine: events are then only logged).
    pub fn new(
        tracker: TaskTracker,
        cancel: CancellationToken,
        events: UnboundedSender<HealthEvent>,
    ) -> Self {
        HealthMonitor {
            tracker,
            cancel,
            events,
            targets: BTreeMap::new(),
        }
    }

    /// Replaces the set of targets: new keys start a task, keys absent from
    /// `targets` are cancelled, keys whose address or spec changed restart
    /// (fresh state, up; if they were down, an up event says so), unchanged
    /// ones keep running with their state. After this returns, removed and
    /// replaced tasks send no more events.
    ///
    /// A target whose spec fails [`CheckSpec::validate`] is logged and not
    /// monitored (callers should validate when they accept configuration).
    /// When a key is listed twice, the last entry counts.
    ///
    /// Must be called within a tokio runtime (tasks are spawned on it).
    pub fn set_targets(&mut self, targets: Vec<(TargetKey, SocketAddr, CheckSpec)>) {
        let mut wanted = BTreeMap::new();
        for (key, addr, spec) in targets {
            match spec.validate() {
                Ok(()) => {
                    wanted.insert(key, (addr, spec));
                }
                Err(e) => {
                    log::error!("health: {key} ({addr}) not checked: {e}");
                    wanted.remove(&key);
                }
            }
        }
        let mut old = std::mem::take(&mut self.targets);
        for (key, (addr, spec)) in wanted {
            let entry = match old.remove(&key) {
                Some(entry) if entry.addr == addr && entry.spec == spec => entry,
                Some(entry) => {
                    if !entry.stop() {
                        let ev = HealthEvent {
                            key: key.clone(),
                            addr,
                            up: true,
                            reason: "check restarted (address or check changed)".into(),
                        };
                        log_event(&ev);
                        let _ = self.events.send(ev);
                    }
                    self.start(key.clone(), addr, spec)
                }
                None => self.start(key.clone(), addr, spec),
            };
            self.targets.insert(key, entry);
        }
        for entry in old.values() {
            entry.stop();
        }
    }

    fn start(&self, key: TargetKey, addr: SocketAddr, spec: CheckSpec) -> Entry {
        let token = self.cancel.child_token();
        let state = Arc::new(Mutex::new(State::new()));
        self.tracker.spawn(run(
            key,
            addr,
            spec.clone(),
            Arc::clone(&state),
            token.clone(),
            self.events.clone(),
        ));
        Entry {
            addr,
            spec,
            token,
            state,
        }
    }

    /// The state of every target, in key order.
    pub fn status(&self) -> Vec<TargetStatus> {
        self.targets
            .iter()
            .map(|(key, entry)| {
                let s = lock(&entry.state);
                TargetStatus {
                    key: key.clone(),
                    addr: entry.addr,
                    up: s.up,
                    consecutive_successes: s.successes,
                    consecutive_failures: s.failures,
                    checks_total: s.checks_total,
                    failures_total: s.failures_total,
                    last_error: s.last_error.clone(),
                    last_change: s.last_change,
                }
            })
            .collect()
    }

    /// Whether the target is up; `None` if it is not monitored.
    pub fn is_up(&self, key: &TargetKey) -> Option<bool> {
        self.targets.get(key).map(|e| lock(&e.state).up)
    }
}

impl Drop for HealthMonitor {
    fn drop(&mut self) {
        for entry in self.targets.values() {
            entry.token.cancel();
        }
    }
}

/// The task of one target: probes until `token` is cancelled.
async fn run(
    key: TargetKey,
    addr: SocketAddr,
    spec: CheckSpec,
    state: Arc<Mutex<State>>,
    token: CancellationToken,
    events: UnboundedSender<HealthEvent>,
) {
    let mut ticks = time::interval_at(Instant::now() + jitter(&key, spec.interval), spec.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = token.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let result = tokio::select! {
            biased;
            () = token.cancelled() => return,
            r = time::timeout(spec.timeout, probe(&spec.probe, addr)) => {
                r.unwrap_or(Err(ProbeError::Timeout(spec.timeout)))
            }
        };
        let mut s = lock(&state);
        // Stopped while the probe finished: the target is gone or replaced.
        if token.is_cancelled() {
            return;
        }
        let result = result.map_err(|e| e.to_string());
        if let Some(reason) = s.record(result, spec.rise, spec.fall) {
            let ev = HealthEvent {
                key: key.clone(),
                addr,
                up: s.up,
                reason,
            };
            log_event(&ev);
            let _ = events.send(ev);
        }
    }
}

/// One probe, without its time limit.
async fn probe(probe: &Probe, addr: SocketAddr) -> Result<(), ProbeError> {
    match probe {
        Probe::Tcp => {
            let stream = TcpStream::connect(addr)
                .await
                .map_err(ProbeError::Connect)?;
            // Close with a reset; linger 0 never blocks the drop.
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            Ok(())
        }
        Probe::Http {
            path,
            host,
            expect_status,
        } => {
            let host = host.clone().unwrap_or_else(|| host_header(addr));
            http(addr, path, &host, *expect_status).await
        }
        Probe::Udp { payload } => udp(addr, payload).await,
    }
}

/// The default `Host` header: the address, without an IPv6 scope.
fn host_header(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

async fn http(addr: SocketAddr, path: &str, host: &str, expect: u16) -> Result<(), ProbeError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(ProbeError::Connect)?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: xdpgate-health\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(ProbeError::Send)?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    while !buf.contains(&b'\n') && buf.len() < MAX_STATUS_LINE {
        let n = stream.read(&mut chunk).await.map_err(ProbeError::Receive)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if buf.is_empty() {
        return Err(ProbeError::NoResponse);
    }
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    match status_code(line) {
        Some(code) if code == expect => Ok(()),
        Some(code) => Err(ProbeError::Status {
            got: code,
            expected: expect,
        }),
        None => Err(ProbeError::MalformedStatus(
            String::from_utf8_lossy(&line[..line.len().min(80)])
                .trim_end()
                .to_owned(),
        )),
    }
}

/// The code of an HTTP status line (`HTTP/1.1 200 OK`).
fn status_code(line: &[u8]) -> Option<u16> {
    let mut words = line
        .split(u8::is_ascii_whitespace)
        .filter(|w| !w.is_empty());
    if !words.next()?.starts_with(b"HTTP/") {
        return None;
    }
    let code = words.next()?;
    if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

async fn udp(addr: SocketAddr, payload: &[u8]) -> Result<(), ProbeError> {
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local).await.map_err(ProbeError::Bind)?;
    sock.connect(addr).await.map_err(ProbeError::Connect)?;
    sock.send(payload).await.map_err(ProbeError::Send)?;
    // Any datagram will do; a longer one is truncated.
    let mut buf = [0u8; 512];
    sock.recv(&mut buf).await.map_err(ProbeError::Receive)?;
    Ok(())
}

#[cfg(test)]
mod tests;
