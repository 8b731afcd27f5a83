//! The JSON of every answer, pinned: each fixture is what `xdpgate <verb>
//! -o json` printed before the answers were typed (captured from a running
//! daemon, long lists shortened), and what the typed answer must still
//! print, byte for byte. The fixtures are parsed into the typed answer and
//! printed again, so a renamed, added, dropped or retyped field (a number
//! becoming a string, a missing `null`) fails here.
use std::time::Duration;

use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

use super::*;
use xdpgate_model::lb::Forward;

/// What `-o json` prints for `v` (keys sorted, pretty).
fn printed<T: Serialize>(v: &T) -> String {
    crate::cli::render::json(v).unwrap()
}

/// Parses `fixture` as `T`, checks that it prints back as exactly
/// `fixture`, and that the server's response carries it unchanged as its
/// `result`.
fn pinned<T: Serialize + DeserializeOwned>(verb: &str, fixture: &str, wrap: fn(T) -> Answer) -> T {
    let typed: T = serde_json::from_str(fixture).unwrap_or_else(|e| panic!("{verb}: {e}"));
    assert_eq!(printed(&typed), fixture, "{verb}: printed JSON changed");
    let typed2: T = serde_json::from_str(fixture).unwrap();
    let wire = serde_json::to_value(Response::answer(wrap(typed2))).unwrap();
    assert_eq!(wire["ok"], true, "{verb}");
    assert_eq!(
        wire["result"],
        serde_json::from_str::<Value>(fixture).unwrap(),
        "{verb}: the answer on the wire"
    );
    assert_eq!(
        wire.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["ok", "result"],
        "{verb}: envelope"
    );
    typed
}

#[test]
fn acl_list() {
    let l = pinned("acl list", ACL_LIST, Answer::AclList);
    assert_eq!(l.rules.len(), 6);
    assert_eq!(l.rules[2].rule.id, 30);
    assert_eq!((l.rules[2].packets, l.rules[2].bytes), (2, 196));
    assert_eq!(
        l.rules[2].limit_counters, None,
        "no limit, no limit counters"
    );
    assert_eq!(l.rules[4].limit_counters.map(|c| c.limited), Some(3));
    assert!(l.rules[5].rule.syncookie);
    assert_eq!(l.rules[5].limit_counters.map(|c| c.cookies_sent), Some(5));
    assert_eq!(l.defaults[1].policy, Verdict::Deny);
}

#[test]
fn set_list() {
    let l = pinned("set list", SET_LIST, Answer::SetList);
    assert_eq!(l.sets[1].used_by, [10]);
}

#[test]
fn set_show() {
    let s = pinned("set list NAME", SET_SHOW, Answer::SetShow);
    assert_eq!(s.prefixes, ["198.51.100.0/24", "2001:db8:bad::/48"]);
}

#[test]
fn bind_list() {
    let l = pinned("bind list", BIND_LIST, Answer::BindList);
    assert_eq!(l.bindings.len(), 4);
    assert_eq!(l.drop_unbound, ["va"]);
}

#[test]
fn lb_list() {
    let l = pinned("lb list", LB_LIST, Answer::LbList);
    assert_eq!(l.services[0].service.to_string(), "192.0.2.11:*/udp");
    assert_eq!(l.services[1].forward, Forward::L2dsr);
    assert_eq!(l.health[0].last_change, 1_796_417_479);
    assert_eq!(l.specs.len(), 3);
}

#[test]
fn lb_list_empty() {
    pinned(
        "lb list (nothing)",
        "{\n  \"decap\": [],\n  \"health\": [],\n  \"services\": [],\n  \"specs\": []\n}",
        Answer::LbList,
    );
}

/// `stats -o json` prints the answer's `report`.
#[test]
fn stats() {
    let report: StatsReport = serde_json::from_str(STATS_REPORT).unwrap();
    assert_eq!(printed(&report), STATS_REPORT);
    let answer = Stats { report };
    let wire = serde_json::to_value(Response::answer(Answer::Stats(answer.clone()))).unwrap();
    assert_eq!(
        wire["result"],
        json!({ "report": serde_json::from_str::<Value>(STATS_REPORT).unwrap() })
    );
    // A daemon from before the typed protocol also sent the rendered table
    // as `text`; the answer still reads.
    let old =
        json!({ "report": serde_json::from_str::<Value>(STATS_REPORT).unwrap(), "text": "T" });
    assert_eq!(serde_json::from_value::<Stats>(old).unwrap(), answer);
}

/// The daemon's own `status` answer (`status -o json` prints it as
/// `daemon.detail`).
#[test]
fn status() {
    let s = pinned("status", STATUS, |s| Answer::Status(Box::new(s)));
    assert_eq!(s.started_from, StartedFrom::Config);
    assert_eq!(s.interfaces[0].mode, XdpMode::Skb);
    assert!(!s.reload.last_ok);
    // Started from flags alone, resumed from the state file, with metrics.
    let s = Status {
        config: PathBuf::new(),
        started_from: StartedFrom::StateFile,
        metrics_listen: vec![
            "127.0.0.1:9464".parse().unwrap(),
            "[::1]:9464".parse().unwrap(),
        ],
        reload: ReloadInfo {
            attempts: 0,
            last_ok: true,
            last_success_unix: 5,
            last_error: None,
        },
        interfaces: Vec::new(),
        ..s
    };
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(v["config"], "");
    assert_eq!(v["started_from"], "state_file");
    assert_eq!(v["metrics_listen"], json!(["127.0.0.1:9464", "[::1]:9464"]));
    assert_eq!(v["reload"]["last_error"], Value::Null);
    assert_eq!(serde_json::from_value::<Status>(v).unwrap(), s);
}

/// Changes print a line of text, but their answers keep their shape on the
/// wire: durations as `{secs, nanos}`.
#[test]
fn applied() {
    let a = Applied {
        rules: 5,
        prefixes: 3,
        address_classes: 7,
        compile: Duration::new(0, 131_000_000),
        install: Duration::new(1, 5),
    };
    let fixture = r#"{"ok":true,"result":{"rules":5,"prefixes":3,"address_classes":7,"compile":{"secs":0,"nanos":131000000},"install":{"secs":1,"nanos":5}}}"#;
    assert_eq!(
        serde_json::to_string(&Response::answer(Answer::Applied(a.clone()))).unwrap(),
        fixture
    );
    let back: Response<Applied> = serde_json::from_str(fixture).unwrap();
    assert_eq!(back.result, Some(a));
}

#[test]
fn bind_report() {
    let r = BindReport {
        added: 1,
        unchanged: 1,
        total: 5,
        ..BindReport::default()
    };
    let fixture = r#"{"ok":true,"result":{"added":1,"adopted":0,"unchanged":1,"removed":0,"released":0,"readded":0,"dropped":0,"total":5}}"#;
    assert_eq!(
        serde_json::to_string(&Response::answer(Answer::BindReport(r.clone()))).unwrap(),
        fixture
    );
    let back: Response<BindReport> = serde_json::from_str(fixture).unwrap();
    assert_eq!(back.result, Some(r));
}

#[test]
fn message() {
    let m = Message {
        message: "service 192.0.2.12:8080/tcp in force".into(),
    };
    let fixture = r#"{"ok":true,"result":{"message":"service 192.0.2.12:8080/tcp in force"}}"#;
    assert_eq!(
        serde_json::to_string(&Response::answer(Answer::Message(m.clone()))).unwrap(),
        fixture
    );
    let back: Response<Message> = serde_json::from_str(fixture).unwrap();
    assert_eq!(back.result, Some(m));
}

/// Refusals: `errors`, and `invalid` only when set; no `result`.
#[test]
fn refusals() {
    let r: Response = Response::refused(vec!["no rule with id 99".into()], true);
    assert_eq!(
        serde_json::to_string(&r).unwrap(),
        r#"{"ok":false,"errors":["no rule with id 99"],"invalid":true}"#
    );
    let r: Response = Response::refused(vec!["map X: EPERM".into()], false);
    let wire = serde_json::to_string(&r).unwrap();
    assert_eq!(wire, r#"{"ok":false,"errors":["map X: EPERM"]}"#);
    let back: Response<AclList> = serde_json::from_str(&wire).unwrap();
    assert!(!back.ok && !back.invalid && back.result.is_none());
}

/// Requests keep today's wire format (`cmd` plus the variant's fields).
#[test]
fn requests() {
    let cases: Vec<(Request, &str)> = vec![
        (Request::AclList, r#"{"cmd":"acl_list"}"#),
        (Request::BindList, r#"{"cmd":"bind_list"}"#),
        (Request::LbList, r#"{"cmd":"lb_list"}"#),
        (Request::Reload, r#"{"cmd":"reload"}"#),
        (Request::Stats, r#"{"cmd":"stats"}"#),
        (Request::Status, r#"{"cmd":"status"}"#),
        (
            Request::SetList { name: None },
            r#"{"cmd":"set_list","name":null}"#,
        ),
        (
            Request::SetList {
                name: Some("peers".into()),
            },
            r#"{"cmd":"set_list","name":"peers"}"#,
        ),
        (
            Request::LbDel {
                service: "192.0.2.10:80/tcp".into(),
            },
            r#"{"cmd":"lb_del","service":"192.0.2.10:80/tcp"}"#,
        ),
        (
            Request::Apply {
                change: Change::RuleDel { ids: vec![10, 20] },
            },
            r#"{"cmd":"apply","change":{"op":"rule_del","ids":[10,20]}}"#,
        ),
        (
            Request::BindAdd {
                binds: vec![BindRequest {
                    iface: "eth0".into(),
                    spec: "192.0.2.10".into(),
                    plen: None,
                    nodad: false,
                }],
            },
            r#"{"cmd":"bind_add","binds":[{"iface":"eth0","spec":"192.0.2.10","plen":null,"nodad":false}]}"#,
        ),
    ];
    for (req, wire) in cases {
        assert_eq!(serde_json::to_string(&req).unwrap(), wire);
        let back: Request = serde_json::from_str(wire).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), wire);
    }
    // What scripts send by hand: optional fields left out.
    for wire in [
        r#"{"cmd":"set_list"}"#,
        r#"{"cmd":"lb_add","service":{"service":"192.0.2.10:80/tcp","backends":["10.0.0.1"]}}"#,
        r#"{"cmd":"apply","change":{"op":"set_add","name":"extra","prefixes":["10.200.51.1/32"]}}"#,
    ] {
        serde_json::from_str::<Request>(wire).unwrap_or_else(|e| panic!("{wire}: {e}"));
    }
}

/// `acl list -o json`: four rules (prefix and set matches, ports, ICMP, an
/// interface) and two default policies.
const ACL_LIST: &str = r#"{
  "defaults": [
    {
      "bytes": 90,
      "iface": "va",
      "packets": 1,
      "policy": "allow"
    },
    {
      "bytes": 110,
      "iface": "vb",
      "packets": 1,
      "policy": "deny"
    }
  ],
  "rules": [
    {
      "action": "deny",
      "bytes": 0,
      "id": 10,
      "packets": 0,
      "priority": 10,
      "src": "@blocklist"
    },
    {
      "action": "allow",
      "bytes": 0,
      "dport": "22",
      "id": 20,
      "iface": "va",
      "packets": 0,
      "priority": 20,
      "proto": 6,
      "src": "@admins"
    },
    {
      "action": "deny",
      "bytes": 196,
      "icmp_code": 0,
      "icmp_type": 8,
      "id": 30,
      "packets": 2,
      "priority": 30,
      "proto": 1
    },
    {
      "action": "allow",
      "bytes": 0,
      "dst": "2001:db8::/32",
      "id": 40,
      "packets": 0,
      "priority": 40,
      "proto": 17,
      "sport": "1000-2000"
    },
    {
      "action": "allow",
      "bytes": 640,
      "icmp_type": 8,
      "id": 50,
      "limit": {
        "burst_packets": 20,
        "per": "src",
        "pps": 100,
        "v4_prefix": 24
      },
      "limit_counters": {
        "bad_cookies": 0,
        "cookie_acks": 0,
        "cookies_sent": 0,
        "kernel_syns": 0,
        "limited": 3,
        "synacks_limited": 0
      },
      "packets": 10,
      "priority": 50,
      "proto": 1
    },
    {
      "action": "allow",
      "bytes": 1200,
      "dport": "443",
      "id": 60,
      "limit_counters": {
        "bad_cookies": 1,
        "cookie_acks": 4,
        "cookies_sent": 5,
        "kernel_syns": 1,
        "limited": 0,
        "synacks_limited": 2
      },
      "packets": 20,
      "priority": 60,
      "proto": 6,
      "syncookie": true
    }
  ]
}"#;

/// `set list -o json`: used and unused sets, one empty.
const SET_LIST: &str = r#"{
  "sets": [
    {
      "ipv4": 1,
      "ipv6": 0,
      "name": "admins",
      "used_by": [
        20
      ]
    },
    {
      "ipv4": 1,
      "ipv6": 1,
      "name": "blocklist",
      "used_by": [
        10
      ]
    },
    {
      "ipv4": 0,
      "ipv6": 0,
      "name": "empty",
      "used_by": []
    }
  ]
}"#;

/// `set list blocklist -o json`.
const SET_SHOW: &str = r#"{
  "name": "blocklist",
  "prefixes": [
    "198.51.100.0/24",
    "2001:db8:bad::/48"
  ]
}"#;

/// `bind list -o json`: added and adopted addresses of both families.
const BIND_LIST: &str = r#"{
  "bindings": [
    {
      "addr": "10.9.0.1",
      "iface": "va",
      "nodad": false,
      "origin": "adopted",
      "plen": 24
    },
    {
      "addr": "10.9.0.10",
      "iface": "va",
      "nodad": false,
      "origin": "added",
      "plen": 32
    },
    {
      "addr": "10.9.0.11",
      "iface": "va",
      "nodad": false,
      "origin": "added",
      "plen": 32
    },
    {
      "addr": "fd00:9::1",
      "iface": "va",
      "nodad": true,
      "origin": "adopted",
      "plen": 64
    }
  ],
  "drop_unbound": [
    "va"
  ]
}"#;

/// `lb list -o json`: decap counters, health of a down target, a service
/// on every port, an L2 DSR service with a drained backend, and the specs
/// (HTTP, UDP and no health check).
const LB_LIST: &str = r#"{
  "decap": [
    {
      "bytes": 0,
      "inner": "ipv4",
      "interface": "va",
      "outer": "ipv4",
      "packets": 0
    },
    {
      "bytes": 0,
      "inner": "ipv6",
      "interface": "va",
      "outer": "ipv4",
      "packets": 0
    }
  ],
  "health": [
    {
      "addr": "10.9.0.2:80",
      "checks_total": 7,
      "consecutive_failures": 7,
      "consecutive_successes": 0,
      "failures_total": 7,
      "key": {
        "backend": "10.9.0.2",
        "service": "192.0.2.10:80/tcp"
      },
      "last_change": 1796417479,
      "last_error": "connect: No route to host (os error 113)",
      "up": false
    },
    {
      "addr": "[fd00:9::3]:80",
      "checks_total": 7,
      "consecutive_failures": 7,
      "consecutive_successes": 0,
      "failures_total": 7,
      "key": {
        "backend": "fd00:9::3",
        "service": "192.0.2.10:80/tcp"
      },
      "last_change": 1796417479,
      "last_error": "timed out after 250ms",
      "up": false
    }
  ],
  "services": [
    {
      "backends": [
        {
          "addr": "10.9.0.5",
          "bytes": 0,
          "healthy": true,
          "packets": 0,
          "ring_entries": 65537,
          "weight": 1
        }
      ],
      "dropped_packets": 0,
      "forward": "encap",
      "forwarded_packets": 0,
      "health_checked": true,
      "ring_size": 65537,
      "service": "192.0.2.11:*/udp",
      "slow_path_packets": 0
    },
    {
      "backends": [
        {
          "addr": "fd00:9::3",
          "bytes": 0,
          "healthy": true,
          "packets": 0,
          "ring_entries": 65537,
          "weight": 1
        },
        {
          "addr": "fd00:9::4",
          "bytes": 0,
          "healthy": true,
          "packets": 0,
          "ring_entries": 0,
          "weight": 0
        }
      ],
      "dropped_packets": 0,
      "forward": "l2dsr",
      "forwarded_packets": 0,
      "health_checked": false,
      "ring_size": 65537,
      "service": "[2001:db8::10]:443/tcp",
      "slow_path_packets": 0
    }
  ],
  "specs": [
    {
      "backends": [
        "10.9.0.2",
        "fd00:9::3 weight=2"
      ],
      "forward": "encap",
      "health": {
        "fall": 1,
        "interval": 0.5,
        "path": "/healthz",
        "rise": 2,
        "status": 200,
        "timeout": 0.25,
        "type": "http"
      },
      "service": "192.0.2.10:80/tcp"
    },
    {
      "backends": [
        "10.9.0.5"
      ],
      "forward": "encap",
      "health": {
        "fall": 3,
        "interval": 2.0,
        "payload": "hello",
        "port": 53,
        "rise": 2,
        "timeout": 1.0,
        "type": "udp"
      },
      "service": "192.0.2.11:*/udp"
    },
    {
      "backends": [
        "fd00:9::3",
        "fd00:9::4 weight=0"
      ],
      "forward": "l2dsr",
      "service": "[2001:db8::10]:443/tcp"
    }
  ]
}"#;

/// `stats -o json`: counter rows, drop-reason rows, the decision cache.
const STATS_REPORT: &str = r#"{
  "counters": [
    {
      "action": "aborted",
      "bytes": 0,
      "family": "ipv4",
      "ifindex": 3,
      "interface": "va",
      "packets": 0
    },
    {
      "action": "drop",
      "bytes": 196,
      "family": "ipv4",
      "ifindex": 3,
      "interface": "va",
      "packets": 2
    },
    {
      "action": "aborted",
      "bytes": 0,
      "family": "ipv4",
      "ifindex": 2,
      "interface": "vb",
      "packets": 0
    }
  ],
  "decision_cache": {
    "hits": 6,
    "misses": 5,
    "walks": 0
  },
  "limits": {
    "bad_cookies": 1,
    "cookie_acks": 4,
    "cookies_sent": 5,
    "kernel_syns": 1,
    "limited": 3,
    "synacks_limited": 2
  },
  "malformed": [
    {
      "bytes": 0,
      "ifindex": 3,
      "interface": "va",
      "packets": 0,
      "reason": "truncated_ethernet"
    },
    {
      "bytes": 0,
      "ifindex": 3,
      "interface": "va",
      "packets": 0,
      "reason": "truncated_vlan"
    }
  ]
}"#;

/// The daemon's `status` answer after a failed reload (`status -o json`
/// prints it as `daemon.detail`).
const STATUS: &str = r#"{
  "bindings": 4,
  "config": "/tmp/apicli/cfg-apicli11291.toml",
  "interfaces": [
    {
      "drop_unbound": true,
      "ifindex": 3,
      "interface": "va",
      "mode": "skb",
      "prog_id": 285
    },
    {
      "drop_unbound": false,
      "ifindex": 2,
      "interface": "vb",
      "mode": "skb",
      "prog_id": 285
    }
  ],
  "metrics_listen": [],
  "pid": 11350,
  "reload": {
    "attempts": 3,
    "last_error": "the interfaces changed (running: va (skb), vb (skb); file: va (native), vb (native)); restart xdpgate to apply it (nothing was changed)",
    "last_ok": false,
    "last_success_unix": 1796417486
  },
  "rules": 4,
  "sets": 3,
  "started_from": "config",
  "state_file": "/tmp/apicli/state-apicli11291.json",
  "state_not_saved": null,
  "state_save_failures": 0,
  "syncookies": {
    "enabled": false,
    "reason": "net.ipv4.tcp_syncookies is 1 in the daemon's network namespace, and SYN cookies sent in XDP need 2"
  },
  "uptime_seconds": 7,
  "warnings": []
}"#;
