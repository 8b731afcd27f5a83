//! `xdpgate check` end to end: the binary on files with errors prints each
//! one as `FILE:LINE:COL: message` on stderr, in file order, and exits 64;
//! a valid file prints its summary and exits 0. Needs neither root nor a
//! network namespace.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use xdpgate_tests::xdpgate::binary;

/// A scratch directory for this test process (removed on drop).
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("xdpgate-check-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    fn file(&self, name: &str, body: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `xdpgate check --config FILE`, killed if it takes over 60 s.
fn check(file: &Path) -> Output {
    let mut child = Command::new(binary())
        .args(["check", "--config"])
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run xdpgate");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// The `LINE:COL` and message of each `FILE:LINE:COL: message` line.
fn located(file: &Path, stderr: &str) -> Vec<(usize, usize, String)> {
    let prefix = format!("{}:", file.display());
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|rest| {
            let mut parts = rest.splitn(3, ':');
            let line = parts.next().unwrap().parse().expect("a line number");
            let col = parts.next().unwrap().parse().expect("a column number");
            (line, col, parts.next().unwrap().trim().to_owned())
        })
        .collect()
}

/// Errors in every table, six in `[daemon]`.
const MANY_ERRORS: &str = r#"[daemon]
malformed = "maybe"
decision_cache = "yes"
state_file = "/tmp"
shutdown_grace_seconds = 900
datapath_events_sample = 0
colour = "blue"

[metrics]
listen = ["127.0.0.1:9464", "nowhere"]
freebind = 1

[[interface]]
name = "veth0"
mode = "turbo"
policy = "maybe"

[[bind]]
iface = "veth9"
spec = "10.0.0.300"

[sets]
good = ["10.200.0.0/16", "10.200.0.1/16"]

[[rule]]
id = 1
priority = "high"
src = "@nosuch"
action = "maybe"

[[rule]]
id = 2
priority = 2
proto = 300
dport = 70000
action = "deny"

[lb]
table_size = 100

[[service]]
service = "192.0.2.10:80/tcp"
backends = ["10.0.0.1", "not-an-address"]
health = { type = "http", rise = 0, colour = 1 }

[deamon]
"#;

/// Asserts that `err` locates exactly the errors `want` (line, column, a
/// phrase of the message) in `file`, in that order, and names no internal
/// Rust type.
fn assert_located(file: &Path, err: &str, want: &[(usize, usize, &str)]) {
    let got = located(file, err);
    let got_at: Vec<(usize, usize)> = got.iter().map(|(l, c, _)| (*l, *c)).collect();
    let want_at: Vec<(usize, usize)> = want.iter().map(|(l, c, _)| (*l, *c)).collect();
    assert_eq!(got_at, want_at, "{err}");
    for ((l, c, m), (_, _, phrase)) in got.iter().zip(want) {
        assert!(m.contains(phrase), "{l}:{c}: {m:?} lacks {phrase:?}");
        for w in ["enum", "struct", "Raw", "Saved", "untagged", "invalid type"] {
            assert!(!m.contains(w), "{l}:{c}: {m:?} holds {w:?}");
        }
    }
}

#[test]
fn check_prints_every_error_at_its_line_and_column_and_exits_64() {
    let dir = Scratch::new("many");
    let file = dir.file("bad.toml", MANY_ERRORS.as_bytes());
    let out = check(&file);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    let want: &[(usize, usize, &str)] = &[
        (2, 1, "malformed"),
        (3, 1, "decision_cache"),
        (4, 1, "/tmp is a directory"),
        (5, 1, "shutdown_grace_seconds"),
        (6, 1, "datapath_events_sample"),
        (7, 1, "unknown key \"colour\""),
        (10, 29, "nowhere"),
        (11, 1, "freebind"),
        (15, 1, "turbo"),
        (16, 1, "policy"),
        (19, 1, "veth9"),
        (20, 1, "10.0.0.300"),
        (23, 26, "10.200.0.1/16"),
        (27, 1, "priority"),
        (28, 1, "unknown set @nosuch"),
        (29, 1, "action"),
        (34, 1, "proto = 300"),
        (35, 1, "70000"),
        (39, 1, "table_size = 100"),
        (43, 25, "not-an-address"),
        (44, 27, "rise 0"),
        (44, 37, "unknown key \"colour\""),
        (46, 2, "unknown table [deamon]"),
    ];
    assert_located(&file, &err, want);
    assert!(
        err.contains(&format!(
            "xdpgate: error: {} has {} error(s)",
            file.display(),
            want.len()
        )),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "nothing on stdout");
}

#[test]
fn check_locates_a_nul_byte_in_a_path_and_a_byte_that_is_not_utf8() {
    let dir = Scratch::new("bytes");
    // (case, file body, line, column, a phrase of the message)
    let table: &[(&str, &[u8], usize, usize, &str)] = &[
        (
            "a NUL byte in the state file's path",
            b"[daemon]\nstate_file = \"/var/lib/x\\u0000y.json\"\n",
            2,
            1,
            "NUL byte",
        ),
        (
            "a byte that is not UTF-8",
            b"[daemon]\nmalformed = \"dr\xffop\"\n",
            2,
            16,
            "byte 0xff (offset 24) is not UTF-8",
        ),
    ];
    for (i, (case, body, line, col, phrase)) in table.iter().enumerate() {
        let file = dir.file(&format!("case{i}.toml"), body);
        let out = check(&file);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{case}: {err}");
        let got = located(&file, &err);
        assert_eq!(got.len(), 1, "{case}: {err}");
        assert_eq!((got[0].0, got[0].1), (*line, *col), "{case}: {err}");
        assert!(got[0].2.contains(phrase), "{case}: {err}");
    }
}

#[test]
fn check_accepts_the_shipped_example_and_exits_0() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/xdpgate.toml");
    let out = check(&example);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(": ok: 1 interface(s)"), "{stdout}");
}

/// Limit, syncookie and `[ddos]` errors: each at the key at fault.
const DDOS_ERRORS: &str = r#"[ddos]
limit_buckets = 100
synack_pps = 0
synack_v6_prefix = 129
syncookie_refresh_secs = 61
flood_mode = true

[[rule]]
id = 1
priority = 1
proto = "icmpv6"
action = "allow"
limit = { pps = 0, v4_prefix = 24, colour = 1 }

[[rule]]
id = 2
priority = 2
proto = "udp"
action = "allow"
limit = { bytes_per_sec = 100000, burst_bytes = 1000, per = "rule", v6_prefix = 48 }

[[rule]]
id = 3
priority = 3
proto = "udp"
dport = 53
action = "deny"
limit = { pps = 10 }
syncookie = true

[[rule]]
id = 4
priority = 4
proto = "tcp"
action = "allow"
syncookie = true
[rule.limit]
pps = 10
v6_prefix = 0
"#;

#[test]
fn check_locates_every_limit_syncookie_and_ddos_error_and_exits_64() {
    let dir = Scratch::new("ddos");
    let file = dir.file("bad.toml", DDOS_ERRORS.as_bytes());
    let out = check(&file);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    let want: &[(usize, usize, &str)] = &[
        (2, 1, "[ddos] limit_buckets = 100: use 1024 to 16777216"),
        (3, 1, "[ddos] synack_pps = 0: use 1 to 1000000000"),
        (4, 1, "[ddos] synack_v6_prefix = 129: use 1 to 128"),
        (5, 1, "[ddos] syncookie_refresh_secs = 61: use 1 to 60"),
        (6, 1, "[ddos]: unknown key \"flood_mode\""),
        (13, 11, "rule 1: limit.pps: 0 is not a rate from 1 to"),
        (
            13,
            20,
            "rule 1: limit.v4_prefix: the rule matches only IPv6",
        ),
        (13, 36, "unknown key \"colour\""),
        (
            20,
            35,
            "rule 2: limit.burst_bytes: 1000 is not a burst from 1514",
        ),
        (
            20,
            69,
            "rule 2: limit.v6_prefix: a rule-wide limit (per = \"rule\") has no prefix length",
        ),
        (28, 1, "rule 3: a limit needs action allow"),
        (29, 1, "rule 3: syncookie needs action allow"),
        (29, 1, "rule 3: syncookie needs proto tcp"),
        (36, 1, "rule 4: syncookie needs dport"),
        (
            39,
            1,
            "rule 4: limit.v6_prefix: /0 is not a prefix length from 1 to 128",
        ),
    ];
    assert_located(&file, &err, want);
    assert!(
        err.contains(&format!("has {} error(s)", want.len())),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "nothing on stdout");
}

/// A DDoS profile of both families, every limit and SYN-cookie form.
const DDOS_PROFILE: &str = r#"[ddos]
limit_buckets = 1024
synack_pps = 100
synack_burst = 10
synack_v4_prefix = 22
synack_v6_prefix = 40
syncookie_refresh_secs = 10

[[interface]]
name = "eth0"

[[rule]]
id = 1
priority = 1
proto = "icmp"
icmp_type = 8
action = "allow"
limit = { pps = 10, v4_prefix = 24 }

[[rule]]
id = 2
priority = 2
src = "2001:db8::/32"
proto = "udp"
dport = "5000-5010"
action = "allow"
[rule.limit]
bytes_per_sec = 1000000
burst_bytes = 1514
per = "dst"
v6_prefix = 128

[[rule]]
id = 3
priority = 3
proto = "udp"
action = "allow"
limit = { pps = 1000000000000, burst_packets = 3600000000000000, per = "rule" }

[[rule]]
id = 4
priority = 4
proto = "tcp"
dport = "80-443"
action = "allow"
syncookie = true
limit = { pps = 1000, v4_prefix = 1, v6_prefix = 1 }
"#;

#[test]
fn check_accepts_a_ddos_profile_at_the_edges_of_every_range_and_exits_0() {
    let dir = Scratch::new("profile");
    let file = dir.file("good.toml", DDOS_PROFILE.as_bytes());
    let out = check(&file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(": ok: 1 interface(s)"), "{stdout}");
    assert!(stdout.contains("4 rule(s)"), "{stdout}");
}
