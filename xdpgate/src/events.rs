//! Datapath events in the daemon's log: the XDP program's sampled drop
//! records (aya-log, target [`EVENT_TARGET`]) are rendered readable and rate
//! limited; every other record passes through unchanged.
//!
//! [`RateLimited`] wraps the daemon's logger (env_logger) and is installed as
//! the global `log` logger; aya-log's reader ([`spawn_reader`]) logs through
//! it. At most [`set_per_second`] event records are logged per one-second
//! window; the rest are counted, and once the window is over one line says
//! how many were suppressed. Events are off by default: each sampled drop
//! costs the datapath about 170-200 ns (measured with `BPF_PROG_TEST_RUN`),
//! whether or not the rate limit then suppresses it: the sampling rate
//! bounds the datapath cost, the rate limit the log.
use std::{
    net::IpAddr,
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use log::{Log, Metadata, Record};
use xdpgate_common::{
    DropReason, EVENT_TARGET, event_cause,
    wire::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP},
};

/// Default of `[daemon] datapath_events_per_second`.
pub const DEFAULT_PER_SECOND: u32 = 20;

static PER_SECOND: AtomicU32 = AtomicU32::new(DEFAULT_PER_SECOND);

/// Sets the most event records logged per second (at least 1).
pub fn set_per_second(n: u32) {
    PER_SECOND.store(n.max(1), Ordering::Relaxed);
}

/// The length of a rate-limit window.
const WINDOW: Duration = Duration::from_secs(1);

/// What to do with one event record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admit {
    /// Events suppressed in the windows that just ended, and over how long,
    /// to report before this record (`None`: nothing to report).
    pub report: Option<(u64, Duration)>,
    /// Whether to log the record.
    pub log: bool,
}

/// A fixed-window rate limiter with a count of what it suppressed. Time is
/// passed in, so tests drive it with their own clock.
#[derive(Debug, Default)]
pub struct Limiter {
    window: Option<Instant>,
    logged: u32,
    suppressed: u64,
    since: Option<Instant>,
}

impl Limiter {
    /// Ends the current window if it is over, and returns the suppressed
    /// count to report (once).
    fn roll(&mut self, now: Instant) -> Option<(u64, Duration)> {
        let start = self.window?;
        if now.duration_since(start) < WINDOW {
            return None;
        }
        self.window = None;
        self.logged = 0;
        let since = self.since.take()?;
        let n = std::mem::take(&mut self.suppressed);
        Some((n, now.duration_since(since)))
    }

    /// One event record at `now`, with at most `per_second` logged per window.
    pub fn admit(&mut self, now: Instant, per_second: u32) -> Admit {
        let report = self.roll(now);
        let start = *self.window.get_or_insert(now);
        debug_assert!(now >= start);
        let log = self.logged < per_second.max(1);
        if log {
            self.logged += 1;
        } else {
            self.suppressed += 1;
            self.since.get_or_insert(now);
        }
        Admit { report, log }
    }

    /// Called periodically: the suppressed count to report once the window
    /// in which events were suppressed is over.
    pub fn tick(&mut self, now: Instant) -> Option<(u64, Duration)> {
        self.roll(now)
    }
}

/// The line that reports suppressed events.
pub fn suppressed_line(n: u64, over: Duration) -> String {
    let secs = over.as_secs_f64().round().max(1.0) as u64;
    format!("{n} datapath events suppressed in the last {secs} second(s)")
}

/// The global logger: `inner` for everything, with event records rendered
/// and rate limited.
pub struct RateLimited<L> {
    inner: L,
    limiter: Mutex<Limiter>,
    clock: fn() -> Instant,
}

impl<L: Log> RateLimited<L> {
    /// Wraps `inner`.
    pub fn new(inner: L) -> Self {
        Self::with_clock(inner, Instant::now)
    }

    /// Wraps `inner`, reading time from `clock` (for tests).
    pub fn with_clock(inner: L, clock: fn() -> Instant) -> Self {
        RateLimited {
            inner,
            limiter: Mutex::new(Limiter::default()),
            clock,
        }
    }

    fn report(&self, n: u64, over: Duration) {
        self.inner.log(
            &Record::builder()
                .args(format_args!("{}", suppressed_line(n, over)))
                .target(EVENT_TARGET)
                .level(log::Level::Warn)
                .build(),
        );
    }
}

impl<L: Log> Log for RateLimited<L> {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if record.target() != EVENT_TARGET {
            return self.inner.log(record);
        }
        if !self.inner.enabled(record.metadata()) {
            return;
        }
        let admit = {
            let mut l = self
                .limiter
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            l.admit((self.clock)(), PER_SECOND.load(Ordering::Relaxed))
        };
        if let Some((n, over)) = admit.report {
            self.report(n, over);
        }
        if admit.log {
            let text = render(&record.args().to_string());
            self.inner.log(
                &Record::builder()
                    .args(format_args!("{text}"))
                    .metadata(record.metadata().clone())
                    .build(),
            );
        }
    }

    fn flush(&self) {
        let due = {
            let mut l = self
                .limiter
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            l.tick((self.clock)())
        };
        if let Some((n, over)) = due {
            self.report(n, over);
        }
        self.inner.flush();
    }
}

/// Renders the program's record (`drop ifindex=I family=F cause=C rule=R
/// proto=P src=S sport=SP dst=D dport=DP`, see `xdp-prog/src/events.rs`) as
/// a sentence; anything else is returned unchanged.
pub fn render(msg: &str) -> String {
    let Some(rest) = msg.strip_prefix("drop ") else {
        return msg.to_string();
    };
    let field = |k: &str| {
        rest.split(' ')
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
    };
    let num = |k: &str| field(k).and_then(|v| v.parse::<u32>().ok());
    let (Some(ifindex), Some(family), Some(cause), Some(rule), Some(proto)) = (
        field("ifindex"),
        num("family"),
        num("cause"),
        num("rule"),
        num("proto"),
    ) else {
        return msg.to_string();
    };
    let why = match cause {
        event_cause::RULE => format!("rule {rule}"),
        event_cause::DEFAULT_POLICY => "default policy".to_string(),
        c => match DropReason::ALL.get(c as usize) {
            Some(r) if r.is_malformed() => format!("malformed ({})", r.name()),
            Some(r) => r.name().to_string(),
            None => format!("cause {c}"),
        },
    };
    if family == 0 {
        return format!("datapath drop on ifindex {ifindex}: {why}");
    }
    let addr = |k: &str| {
        let a = field(k).unwrap_or("?");
        match a.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) if family == 4 => v6
                .to_ipv4_mapped()
                .map_or(a.to_string(), |v4| v4.to_string()),
            Ok(ip) => ip.to_string(),
            Err(_) => a.to_string(),
        }
    };
    let (src, dst) = (addr("src"), addr("dst"));
    let (sport, dport) = (num("sport").unwrap_or(0), num("dport").unwrap_or(0));
    let fam = if family == 4 { "ipv4" } else { "ipv6" };
    // A record carries the protocol as a u32 field; only 0-255 are protocols.
    let ip_proto = u8::try_from(proto).ok();
    let flow = match ip_proto.unwrap_or(u8::MAX) {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP => {
            let name = match ip_proto.unwrap_or(u8::MAX) {
                IPPROTO_TCP => "tcp",
                IPPROTO_UDP => "udp",
                _ => "sctp",
            };
            let (s, d) = if family == 4 {
                (format!("{src}:{sport}"), format!("{dst}:{dport}"))
            } else {
                (format!("[{src}]:{sport}"), format!("[{dst}]:{dport}"))
            };
            format!("{name} {s} -> {d}")
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => format!(
            "{} {src} -> {dst} type {} code {}",
            if ip_proto == Some(IPPROTO_ICMP) {
                "icmp"
            } else {
                "icmpv6"
            },
            dport >> 8,
            dport & 0xff
        ),
        p => format!("proto {p} {src} -> {dst}"),
    };
    format!("datapath drop on ifindex {ifindex} ({fam}): {why}, {flow}")
}

/// Reads the program's records from aya-log's ring buffer and logs them
/// through the global logger; every half second flushes it, so a suppressed
/// count is reported even when no more events come. Runs until the runtime
/// stops.
pub fn spawn_reader(
    logger: aya_log::EbpfLogger<&'static dyn Log>,
) -> Result<tokio::task::JoinHandle<()>, std::io::Error> {
    // SAFETY: the logger owns the ring buffer's descriptor, which stays open
    // and the same until the AsyncFd (which owns the logger) is dropped.
    let mut fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    }
    .map_err(std::io::Error::from)?;
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                r = fd.readable_mut() => match r {
                    Ok(mut guard) => {
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                    Err(e) => {
                        log::error!("datapath events: reading the ring buffer failed: {e}");
                        return;
                    }
                },
                _ = tick.tick() => log::logger().flush(),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn limits_each_window_and_reports_what_it_suppressed_once() {
        let t0 = Instant::now();
        let mut l = Limiter::default();
        let mut logged = 0;
        for i in 0..50 {
            let a = l.admit(at(t0, i * 10), 5);
            assert_eq!(a.report, None, "event {i}");
            logged += a.log as u32;
        }
        assert_eq!(logged, 5);
        assert_eq!(l.tick(at(t0, 999)), None, "the window is not over");
        assert_eq!(l.tick(at(t0, 1000)), Some((45, Duration::from_millis(950))));
        assert_eq!(l.tick(at(t0, 1500)), None, "reported once");
        // A new window: 5 more logged.
        let a = l.admit(at(t0, 2000), 5);
        assert_eq!(
            a,
            Admit {
                report: None,
                log: true
            }
        );
    }

    #[test]
    fn the_next_event_reports_when_no_tick_came() {
        let t0 = Instant::now();
        let mut l = Limiter::default();
        for i in 0..3 {
            l.admit(at(t0, i), 1);
        }
        let a = l.admit(at(t0, 1200), 1);
        assert_eq!(a.report, Some((2, Duration::from_millis(1199))));
        assert!(a.log);
    }

    #[test]
    fn nothing_to_report_without_suppression() {
        let t0 = Instant::now();
        let mut l = Limiter::default();
        for i in 0..4 {
            assert!(l.admit(at(t0, i * 100), 20).log);
        }
        assert_eq!(l.tick(at(t0, 5000)), None);
        assert_eq!(
            suppressed_line(7, Duration::from_millis(1500)),
            "7 datapath events suppressed in the last 2 second(s)"
        );
    }

    #[test]
    fn renders_the_program_records() {
        assert_eq!(
            render(
                "drop ifindex=5 family=4 cause=64 rule=7 proto=17 src=::ffff:10.200.0.2 sport=40000 dst=::ffff:10.200.0.1 dport=9999"
            ),
            "datapath drop on ifindex 5 (ipv4): rule 7, udp 10.200.0.2:40000 -> 10.200.0.1:9999"
        );
        assert_eq!(
            render(
                "drop ifindex=5 family=6 cause=65 rule=0 proto=58 src=fd00:200::2 sport=0 dst=fd00:200::1 dport=32768"
            ),
            "datapath drop on ifindex 5 (ipv6): default policy, icmpv6 fd00:200::2 -> fd00:200::1 type 128 code 0"
        );
        assert_eq!(
            render("drop ifindex=3 family=0 cause=4 rule=0 proto=0 src=:: sport=0 dst=:: dport=0"),
            "datapath drop on ifindex 3: malformed (bad_ipv4_header)"
        );
        assert_eq!(
            render(
                "drop ifindex=3 family=6 cause=11 rule=0 proto=6 src=fd00:200::2 sport=1 dst=fd00:200::9 dport=22"
            ),
            "datapath drop on ifindex 3 (ipv6): not_bound, tcp [fd00:200::2]:1 -> [fd00:200::9]:22"
        );
        assert_eq!(render("something else"), "something else");
    }

    /// A logger that keeps the lines it gets.
    struct Keep(Mutex<Vec<String>>);
    impl Log for Keep {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn log(&self, r: &Record<'_>) {
            self.0
                .lock()
                .unwrap()
                .push(format!("{} {}", r.target(), r.args()));
        }
        fn flush(&self) {}
    }

    static NOW: Mutex<Option<Instant>> = Mutex::new(None);
    fn fake_now() -> Instant {
        NOW.lock().unwrap().unwrap()
    }

    #[test]
    fn the_wrapper_limits_event_records_only() {
        let t0 = Instant::now();
        *NOW.lock().unwrap() = Some(t0);
        let w = RateLimited::with_clock(Keep(Mutex::new(Vec::new())), fake_now);
        let event = |w: &RateLimited<Keep>| {
            w.log(
                &Record::builder()
                    .target(EVENT_TARGET)
                    .level(log::Level::Info)
                    .args(format_args!("drop ifindex=2 family=0 cause=3 rule=0 proto=0 src=:: sport=0 dst=:: dport=0"))
                    .build(),
            );
        };
        for _ in 0..(DEFAULT_PER_SECOND + 7) {
            event(&w);
            w.log(
                &Record::builder()
                    .target("xdpgate")
                    .level(log::Level::Info)
                    .args(format_args!("other"))
                    .build(),
            );
        }
        w.flush();
        *NOW.lock().unwrap() = Some(at(t0, 1000));
        w.flush();
        let lines = w.inner.0.lock().unwrap().clone();
        let events = lines
            .iter()
            .filter(|l| l.contains("malformed (truncated_ipv4)"))
            .count();
        let others = lines.iter().filter(|l| l.ends_with(" other")).count();
        assert_eq!(events, DEFAULT_PER_SECOND as usize);
        assert_eq!(others, DEFAULT_PER_SECOND as usize + 7);
        assert_eq!(
            lines.last().unwrap(),
            &format!("{EVENT_TARGET} 7 datapath events suppressed in the last 1 second(s)")
        );
    }
}
