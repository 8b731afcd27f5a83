//! The text the verbs print, pinned character for character, and the JSON
//! of `status` (the one document the CLI assembles itself; the daemon's
//! answers are pinned in `api::protocol`'s tests).
use std::path::Path;

use serde_json::json;

use super::*;
use crate::api::protocol::{
    AclList, Applied, BindList, BindReport, LbList, SetList, SetShow, StatsReport, Status,
};
use crate::cli::health::Health;

fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

#[test]
fn applied_line() {
    let a = Applied {
        rules: 5,
        prefixes: 3,
        address_classes: 2,
        compile: std::time::Duration::from_micros(131_049),
        install: std::time::Duration::from_micros(124_551),
    };
    assert_eq!(
        applied(&a),
        "applied: 5 rules, 3 prefixes installed (compile 131.0 ms, install 124.6 ms)\n"
    );
}

/// Columns line up under the header (before the answers were typed, the
/// counters were printed without their width).
#[test]
fn acl_list_table() {
    let l: AclList = from(json!({
        "rules": [
            { "id": 10, "priority": 10, "src": "@blocklist", "action": "deny", "packets": 0, "bytes": 0 },
            { "id": 20, "priority": 20, "src": "@admins", "proto": 6, "dport": "22", "iface": "va",
              "action": "allow", "packets": 12345, "bytes": 987654321 },
            { "id": 30, "priority": 30, "proto": 1, "icmp_type": 8, "icmp_code": 0,
              "action": "deny", "packets": 2, "bytes": 196 },
            { "id": 40, "priority": 40, "dst": "2001:db8::/32", "proto": 17, "sport": "1000-2000",
              "action": "allow", "packets": 0, "bytes": 0 },
            { "id": 50, "priority": 50, "proto": 1, "icmp_type": 8, "action": "allow",
              "limit": { "pps": 100, "burst_packets": 20, "per": "src", "v4_prefix": 24 },
              "packets": 10, "bytes": 640,
              "limit_counters": { "limited": 3, "cookies_sent": 0, "cookie_acks": 0, "bad_cookies": 0,
                                  "synacks_limited": 0, "kernel_syns": 0 } },
            { "id": 60, "priority": 60, "proto": 6, "dport": "443", "action": "allow", "syncookie": true,
              "packets": 20, "bytes": 1200,
              "limit_counters": { "limited": 0, "cookies_sent": 5, "cookie_acks": 4, "bad_cookies": 1,
                                  "synacks_limited": 2, "kernel_syns": 1 } },
        ],
        "defaults": [
            { "iface": "va", "policy": "allow", "packets": 1, "bytes": 90 },
            { "iface": "vb", "policy": "deny", "packets": 1, "bytes": 110 },
        ],
    }));
    assert_eq!(
        acl_list(&l),
        "        ID  ACTION         PACKETS             BYTES  MATCH
        10  deny                 0                 0  prio 10 src @blocklist
        20  allow            12345         987654321  prio 20 src @admins proto 6 dport 22 iface va
        30  deny                 2               196  prio 30 proto 1 icmp-type 8 icmp-code 0
        40  allow                0                 0  prio 40 dst 2001:db8::/32 proto 17 sport 1000-2000
        50  allow               10               640  prio 50 proto 1 icmp-type 8
            limit 100pps burst 20 per src /24 /64: limited 3, cookies_sent 0, cookie_acks 0, bad_cookies 0, synacks_limited 0, kernel_syns 0
        60  allow               20              1200  prio 60 proto 6 dport 443
            syncookie: limited 0, cookies_sent 5, cookie_acks 4, bad_cookies 1, synacks_limited 2, kernel_syns 1
         -  allow                1                90  default policy of va
         -  deny                 1               110  default policy of vb
"
    );
}

#[test]
fn set_tables() {
    let l: SetList = from(json!({ "sets": [
        { "name": "admins", "ipv4": 1, "ipv6": 0, "used_by": [20] },
        { "name": "blocklist", "ipv4": 100000, "ipv6": 1, "used_by": [10, 11] },
        { "name": "empty", "ipv4": 0, "ipv6": 0, "used_by": [] },
    ]}));
    assert_eq!(
        set_list(&l),
        "SET                            IPV4       IPV6  USED BY
admins                            1          0  [20]
blocklist                    100000          1  [10,11]
empty                             0          0  []
"
    );
    let s: SetShow =
        from(json!({ "name": "b", "prefixes": ["198.51.100.0/24", "2001:db8:bad::/48"] }));
    assert_eq!(set_show(&s), "198.51.100.0/24\n2001:db8:bad::/48\n");
    let s: SetShow = from(json!({ "name": "e", "prefixes": [] }));
    assert_eq!(set_show(&s), "");
}

#[test]
fn bind_tables() {
    let r = BindReport {
        added: 1,
        unchanged: 1,
        total: 5,
        ..BindReport::default()
    };
    assert_eq!(
        bind_report(&r),
        "added 1, adopted 0, dropped 0, readded 0, released 0, removed 0, total 5, unchanged 1\n"
    );
    let l: BindList = from(json!({
        "bindings": [
            { "iface": "va", "addr": "10.9.0.1", "plen": 24, "nodad": false, "origin": "adopted" },
            { "iface": "va", "addr": "fd00:9::20", "plen": 64, "nodad": true, "origin": "added" },
        ],
        "drop_unbound": ["va", "vb"],
    }));
    assert_eq!(
        bind_list(&l),
        "INTERFACE         ADDRESS                                   NODAD    ORIGIN
va                10.9.0.1/24                               false    adopted
va                fd00:9::20/64                             true     added
traffic to unbound addresses is dropped on: va, vb
"
    );
    let l: BindList = from(json!({ "bindings": [], "drop_unbound": [] }));
    assert_eq!(
        bind_list(&l),
        "INTERFACE         ADDRESS                                   NODAD    ORIGIN\n"
    );
}

#[test]
fn lb_table() {
    let l: LbList = from(json!({
        "services": [
            { "service": "192.0.2.10:80/tcp", "forward": "encap", "health_checked": true,
              "ring_size": 65537, "forwarded_packets": 7, "slow_path_packets": 1, "dropped_packets": 2,
              "backends": [
                { "addr": "10.9.0.2", "weight": 1, "healthy": false, "ring_entries": 0, "packets": 0, "bytes": 0 },
                { "addr": "fd00:9::3", "weight": 2, "healthy": true, "ring_entries": 65537, "packets": 7, "bytes": 700 },
              ] },
            { "service": "[2001:db8::10]:443/tcp", "forward": "l2dsr", "health_checked": false,
              "ring_size": 13, "forwarded_packets": 0, "slow_path_packets": 0, "dropped_packets": 0,
              "backends": [] },
        ],
        "health": [], "decap": [], "specs": [],
    }));
    assert_eq!(
        lb_list(&l),
        "192.0.2.10:80/tcp  forward encap  ring 65537  forwarded 7  slow-path 1  dropped 2  health-checked
  BACKEND                                   WEIGHT  HEALTH       RING       PACKETS           BYTES
  10.9.0.2                                       1  down            0             0               0
  fd00:9::3                                      2  up          65537             7             700
[2001:db8::10]:443/tcp  forward l2dsr  ring 13  forwarded 0  slow-path 0  dropped 0
  BACKEND                                   WEIGHT  HEALTH       RING       PACKETS           BYTES
"
    );
    let l: LbList = from(json!({ "services": [], "health": [], "decap": [], "specs": [] }));
    assert_eq!(lb_list(&l), "no services\n");
}

fn counters(iface: &str, ifindex: u32, passed: u64, redirected: u64) -> Vec<serde_json::Value> {
    let mut rows = Vec::new();
    for family in ["ipv4", "ipv6", "other"] {
        for (action, packets) in [
            ("aborted", 0),
            ("drop", 0),
            ("pass", passed),
            ("tx", 0),
            ("redirect", redirected),
        ] {
            rows.push(
                json!({ "interface": iface, "ifindex": ifindex, "family": family,
                "action": action, "packets": packets, "bytes": packets * 100 }),
            );
        }
    }
    rows
}

/// Rows whose action never happened are left out unless the action is
/// `pass` or `drop`; the interface column is as wide as the longest name.
#[test]
fn stats_table() {
    let mut rows = counters("veth-long-name", 7, 0, 3);
    rows.truncate(5);
    let r: StatsReport = from(json!({
        "counters": rows,
        "malformed": [],
        "decision_cache": { "hits": 40, "misses": 2 },
    }));
    assert_eq!(
        stats(&r),
        "INTERFACE       FAMILY  ACTION           PACKETS             BYTES
veth-long-name  ipv4    drop                   0                 0
veth-long-name  ipv4    pass                   0                 0
veth-long-name  ipv4    redirect               3               300

ACL decision cache: 40 hits, 2 misses
rule limits and SYN cookies (all rules): limited 0, cookies_sent 0, cookie_acks 0, bad_cookies 0, synacks_limited 0, kernel_syns 0
"
    );
    let r: StatsReport = from(json!({
        "counters": counters("va", 3, 2, 0),
        "malformed": [
            { "interface": "va", "ifindex": 3, "reason": "truncated_l4", "packets": 3, "bytes": 180 },
            { "interface": "va", "ifindex": 3, "reason": "not_bound", "packets": 0, "bytes": 0 },
            { "interface": "va", "ifindex": 3, "reason": "not_bound", "packets": 12, "bytes": 1200 },
            { "interface": "va", "ifindex": 3, "reason": "rate_limited", "packets": 9, "bytes": 900 },
        ],
        "decision_cache": { "hits": 0, "misses": 0 },
        "limits": { "limited": 7, "cookies_sent": 6, "cookie_acks": 5, "bad_cookies": 4,
                    "synacks_limited": 3, "kernel_syns": 2 },
    }));
    assert_eq!(
        stats(&r),
        "INTERFACE  FAMILY  ACTION           PACKETS             BYTES
va         ipv4    drop                   0                 0
va         ipv4    pass                   2               200
va         ipv6    drop                   0                 0
va         ipv6    pass                   2               200
va         other   drop                   0                 0
va         other   pass                   2               200

DROP REASONS (malformed frames; not_bound: destination not bound; rate_limited, synack_limited, bad_cookie: rule limits and SYN cookies)
va  truncated_l4                       3               180
va  not_bound                         12              1200
va  rate_limited                       9               900

ACL decision cache: 0 hits, 0 misses
rule limits and SYN cookies (all rules): limited 7, cookies_sent 6, cookie_acks 5, bad_cookies 4, synacks_limited 3, kernel_syns 2
"
    );
}

fn detail(last_error: Option<&str>, config: &str) -> Status {
    from(json!({
        "pid": 11350, "uptime_seconds": 7, "config": config,
        "state_file": "/var/lib/xdpgate/state.json", "started_from": "state_file",
        "interfaces": [{ "interface": "va", "ifindex": 3, "mode": "skb", "prog_id": 285, "drop_unbound": true }],
        "rules": 4, "sets": 3, "bindings": 2, "metrics_listen": [],
        "reload": { "attempts": 1, "last_ok": last_error.is_none(), "last_success_unix": 1796417486,
                    "last_error": last_error },
        "syncookies": { "enabled": true, "reason": null },
    }))
}

fn view(pid: Option<u32>, detail: Option<Status>, interfaces: Vec<XdpRow>) -> StatusView {
    let health = Health::judge(
        pid.is_some(),
        detail.as_ref(),
        interfaces.iter().any(|r| r.enforcing.is_some()),
    );
    StatusView {
        health,
        exit_code: health.exit_code(),
        daemon: DaemonView {
            running: pid.is_some(),
            pid,
            run_dir: "/run/xdpgate".into(),
            bpffs_dir: "/sys/fs/bpf/xdpgate".into(),
            detail,
        },
        interfaces,
    }
}

fn rows() -> Vec<XdpRow> {
    vec![
        XdpRow {
            interface: "vb".into(),
            ifindex: 2,
            mode: XdpMode::Skb,
            prog_id: 285,
            program: Some("xdpgate".into()),
            xdpgate: true,
            enforcing: Some(Enforcing::WithoutDaemon),
            schema: Some(1),
            prog_tag: Some("0123456789abcdef".into()),
            since_unix: Some(1_764_892_800),
        },
        XdpRow {
            interface: "a-long-interface".into(),
            ifindex: 14,
            mode: XdpMode::Native,
            prog_id: 9,
            program: None,
            xdpgate: false,
            enforcing: None,
            schema: None,
            prog_tag: None,
            since_unix: None,
        },
    ]
}

#[test]
fn status_text() {
    assert_eq!(
        status(&view(None, None, Vec::new())),
        "daemon: not running (no lock held in /run/xdpgate)
health: not running: no daemon, and nothing of xdpgate enforces (exit 3)
no interface in this network namespace has an XDP program
"
    );
    assert_eq!(
        status(&view(
            Some(42),
            Some(detail(None, "/etc/xdpgate.toml")),
            rows()
        )),
        "daemon: running (pid 42), maps pinned in /sys/fs/bpf/xdpgate
config: /etc/xdpgate.toml; state file: /var/lib/xdpgate/state.json; started from the state file
4 rules, 3 sets, 2 bound addresses; last reload ok
SYN cookies: enabled
health: ok: the daemon runs and enforces, its state is saved (exit 0)
INTERFACE         IFINDEX  MODE    PROG_ID  PROGRAM           OWNER    ENFORCING           SCHEMA  TAG               SINCE
vb                      2  skb         285  xdpgate           xdpgate  yes, no daemon           1  0123456789abcdef  unix 1764892800
a-long-interface       14  native        9  ?                 other    -                        -  -                 -
"
    );
    // Started from flags, last reload failed; the daemon did not answer.
    let failed = detail(Some("the state file changed; restart xdpgate"), "");
    assert_eq!(
        status(&view(Some(42), Some(failed), Vec::new())),
        "daemon: running (pid 42), maps pinned in /sys/fs/bpf/xdpgate
config: (none, flags only); state file: /var/lib/xdpgate/state.json; started from the state file
4 rules, 3 sets, 2 bound addresses; last reload FAILED: the state file changed; restart xdpgate
SYN cookies: enabled
health: ok: the daemon runs and enforces, its state is saved (exit 0)
no interface in this network namespace has an XDP program
"
    );
    assert_eq!(
        status(&view(Some(42), None, Vec::new())),
        "daemon: running (pid 42), maps pinned in /sys/fs/bpf/xdpgate
health: error: a daemon holds the lock but does not answer (exit 1)
no interface in this network namespace has an XDP program
"
    );
}

/// Each health `status` can report, with its exit code: the state not
/// saved, an orphaned interface policy (a warning, still 0), and a datapath
/// enforcing without a daemon.
#[test]
fn status_health_and_exit_codes() {
    let mut degraded = detail(None, "/etc/xdpgate.toml");
    degraded.state_not_saved = Some("state file /s: cannot write: No space left on device".into());
    degraded.state_save_failures = 3;
    let text = status(&view(Some(42), Some(degraded), Vec::new()));
    assert!(
        text.contains("DEGRADED: state not saved: state file /s: cannot write: No space left on device (3 failed save(s);"),
        "{text}"
    );
    assert!(
        text.contains("health: degraded: the daemon runs and enforces, but the state in force is not saved (exit 2)"),
        "{text}"
    );
    let mut orphan = detail(None, "/etc/xdpgate.toml");
    orphan.warnings = vec![
        "the state file /s names interface gone0, which the configuration does not configure"
            .into(),
    ];
    let text = status(&view(Some(42), Some(orphan), Vec::new()));
    assert!(
        text.contains("warning: the state file /s names interface gone0"),
        "{text}"
    );
    assert!(text.contains("(exit 0)"), "{text}");
    // No daemon; our pinned link still enforces.
    let text = status(&view(None, None, rows()));
    assert!(
        text.contains("health: enforcing without a daemon: the pinned datapath enforces its last state; start the daemon (exit 4)"),
        "{text}"
    );
    let codes: Vec<u8> = [
        Health::Ok,
        Health::Unreachable,
        Health::Degraded,
        Health::NotRunning,
        Health::EnforcingWithoutDaemon,
    ]
    .iter()
    .map(|h| h.exit_code())
    .collect();
    assert_eq!(codes, [0, 1, 2, 3, 4]);
    assert!(!codes.contains(&crate::cli::EXIT_USAGE));
}

/// `status -o json`, with no daemon and with one (keys sorted at every level).
#[test]
fn status_json() {
    assert_eq!(
        json(&view(None, None, Vec::new())).unwrap(),
        r#"{
  "daemon": {
    "bpffs_dir": "/sys/fs/bpf/xdpgate",
    "detail": null,
    "pid": null,
    "run_dir": "/run/xdpgate",
    "running": false
  },
  "exit_code": 3,
  "health": "not_running",
  "interfaces": []
}"#
    );
    assert_eq!(
        json(&view(
            Some(42),
            Some(detail(None, "/etc/xdpgate.toml")),
            rows()[..1].to_vec()
        ))
        .unwrap(),
        r#"{
  "daemon": {
    "bpffs_dir": "/sys/fs/bpf/xdpgate",
    "detail": {
      "bindings": 2,
      "config": "/etc/xdpgate.toml",
      "interfaces": [
        {
          "drop_unbound": true,
          "ifindex": 3,
          "interface": "va",
          "mode": "skb",
          "prog_id": 285
        }
      ],
      "metrics_listen": [],
      "pid": 11350,
      "reload": {
        "attempts": 1,
        "last_error": null,
        "last_ok": true,
        "last_success_unix": 1796417486
      },
      "rules": 4,
      "sets": 3,
      "started_from": "state_file",
      "state_file": "/var/lib/xdpgate/state.json",
      "state_not_saved": null,
      "state_save_failures": 0,
      "syncookies": {
        "enabled": true,
        "reason": null
      },
      "uptime_seconds": 7,
      "warnings": []
    },
    "pid": 42,
    "run_dir": "/run/xdpgate",
    "running": true
  },
  "exit_code": 0,
  "health": "ok",
  "interfaces": [
    {
      "enforcing": "without_daemon",
      "ifindex": 2,
      "interface": "vb",
      "mode": "skb",
      "prog_id": 285,
      "prog_tag": "0123456789abcdef",
      "program": "xdpgate",
      "schema": 1,
      "since_unix": 1764892800,
      "xdpgate": true
    }
  ]
}"#
    );
    let foreign = json(&view(None, None, rows()[1..].to_vec())).unwrap();
    assert!(foreign.contains("\"program\": null"), "{foreign}");
}

#[test]
fn check_line() {
    let path = Path::new("/etc/xdpgate.toml");
    let cfg = xdpgate_model::config::parse(
        r#"
[metrics]
listen = ["127.0.0.1:9464", "[::1]:9464"]
[[interface]]
name = "eth0"
[sets]
a = ["10.0.0.0/8", "2001:db8::/32"]
[[rule]]
id = 1
priority = 1
src = "@a"
action = "deny"
[[bind]]
iface = "eth0"
spec = "192.0.2.1"
"#,
        path,
    )
    .unwrap();
    assert_eq!(
        check(path, &cfg),
        "/etc/xdpgate.toml: ok: 1 interface(s), 1 set(s) with 2 prefixes, 1 rule(s), 1 binding(s), \
         0 service(s), metrics on 127.0.0.1:9464, [::1]:9464\n"
    );
    let cfg = xdpgate_model::config::parse("[metrics]\nlisten = []\n", path).unwrap();
    assert!(check(path, &cfg).ends_with("metrics on nothing\n"));
}

/// The counter table, as `datapath::stats` tested it before the renderer
/// moved to the CLI (the test moved with it, its assertions unchanged).
mod counter_table {
    use super::super::counter_table as render_table;
    use crate::api::protocol::CounterRow as Row;

    fn row(action: &'static str, packets: u64) -> Row {
        Row {
            interface: "veth-long-name".into(),
            ifindex: 7,
            family: "ipv6".into(),
            action: action.into(),
            packets,
            bytes: packets * 100,
        }
    }

    #[test]
    fn table_keeps_pass_drop_and_nonzero_rows() {
        let t = render_table(&[
            row("pass", 0),
            row("drop", 0),
            row("tx", 0),
            row("redirect", 3),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].starts_with("INTERFACE "));
        assert!(lines[3].contains("redirect") && lines[3].ends_with("300"));
        assert!(!t.contains(" tx "));
    }
}

/// `status` says whether SYN cookies are enabled, and why not, with the
/// warning about timestamps when there is one.
#[test]
fn status_text_tells_the_syn_cookie_readiness() {
    let mut off = detail(None, "/etc/xdpgate.toml");
    off.syncookies = crate::api::protocol::SyncookieStatus {
        enabled: false,
        reason: Some("net.ipv4.tcp_syncookies is 1 in the daemon's network namespace".into()),
        warning: None,
    };
    let text = status(&view(Some(42), Some(off), Vec::new()));
    assert!(
        text.contains("\nSYN cookies: disabled: net.ipv4.tcp_syncookies is 1 in the daemon's network namespace\n"),
        "{text}"
    );
    let mut warned = detail(None, "/etc/xdpgate.toml");
    warned.syncookies.warning = Some("net.ipv4.tcp_timestamps is 1: ...".into());
    let text = status(&view(Some(42), Some(warned), Vec::new()));
    assert!(
        text.contains("\nSYN cookies: enabled\nwarning: net.ipv4.tcp_timestamps is 1: ...\n"),
        "{text}"
    );
}
