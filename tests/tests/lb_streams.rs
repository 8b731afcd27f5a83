//! Load balancing of real TCP streams (end to end), in the three-role lab of
//! [`xdpgate_tests::lblab`]: a client, the load balancer (LB) and two or
//! three backends on one L2 segment, with real TCP streams through real
//! daemons (topology, XDP modes and lab details there).
//!
//! # What the tests check
//!
//! The backend of every flow is predicted with `maglev::build` over the
//! service's backends (addresses and weights) and `lb::packet_hash` of the
//! flow, and compared with the name the backend's echo server greets with.
//! Whether the frames really flow is what every test checks: each stream's
//! bytes come back intact from the backend the test predicted. The L2 DSR
//! test checks that the daemon keeps the backends' neighbour entries
//! resolved (managed entries).
//!
//! The prediction ([`Ring`]) stays here: it needs the `xdpgate` crate, which
//! the lab library cannot depend on (its build needs bpf-linker, and xtask
//! uses the library before bootstrap installs it).
use std::{
    collections::BTreeMap,
    io::{self, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use serde_json::Value;
use xdpgate_model::lb::{
    Proto,
    maglev::{self, Member},
    packet_hash,
};
use xdpgate_tests::{
    lab::serial,
    lblab::{
        EchoServer, Flow, IF, PORT, SVC4, SVC6, Topo, backend_of, connect_from, diagnose, echo_all,
        echo_through, flows, lb_add, lb_list, num, read_greeting, run_flows, service,
        start_backend, start_lb, vip4, vip6,
    },
    xdpgate::{Daemon, sum},
};

/// The ring size the daemon builds (checked against `lb list`).
const RING: u32 = 65_537;

// ---------------------------------------------------------------------------
// Daemons' JSON
// ---------------------------------------------------------------------------

/// Decapsulated packets of a backend daemon (`lb list` "decap" rows) with
/// outer family `outer` and inner family `inner` ("ipv4"/"ipv6").
fn decap_packets(list: &Value, outer: &str, inner: &str) -> u64 {
    list["decap"]
        .as_array()
        .expect("decap rows")
        .iter()
        .filter(|r| r["interface"] == IF && r["outer"] == outer && r["inner"] == inner)
        .map(|r| num(r, "packets"))
        .sum()
}

fn fam(a: IpAddr) -> &'static str {
    if a.is_ipv4() { "ipv4" } else { "ipv6" }
}

// ---------------------------------------------------------------------------
// Maglev prediction
// ---------------------------------------------------------------------------

/// A service's ring as the test predicts it.
struct Ring {
    ring: Vec<u32>,
    /// Member `i` has slot `i + 1`.
    addrs: Vec<IpAddr>,
}

impl Ring {
    /// The ring of the backends of weight above 0 (slots are labels only:
    /// the ring depends on addresses and weights).
    fn new(backends: &[(IpAddr, u32)]) -> Ring {
        let members: Vec<Member> = backends
            .iter()
            .enumerate()
            .map(|(i, (addr, weight))| Member {
                slot: i as u32 + 1,
                addr: *addr,
                weight: *weight,
            })
            .collect();
        Ring {
            ring: maglev::build(&members, RING).expect("maglev build"),
            addrs: backends.iter().map(|(a, _)| *a).collect(),
        }
    }

    /// The backend address of the flow `src:sport -> vip:PORT/tcp`.
    fn pick(&self, src: IpAddr, sport: u16, vip: IpAddr) -> IpAddr {
        let slot = maglev::lookup(&self.ring, packet_hash(src, sport, vip, PORT, Proto::Tcp));
        assert_ne!(slot, 0, "empty ring");
        self.addrs[slot as usize - 1]
    }

    fn entries(&self, addr: IpAddr) -> u64 {
        let Some(i) = self.addrs.iter().position(|a| *a == addr) else {
            return 0;
        };
        self.ring.iter().filter(|s| **s == i as u32 + 1).count() as u64
    }
}

/// Checks a service's ring shares in `lb list` against the prediction.
fn check_ring(list: &Value, id: &str, ring: &Ring, configured: &[IpAddr]) {
    let svc = service(list, id);
    assert_eq!(num(svc, "ring_size"), u64::from(RING), "{id}: ring size");
    let listed = svc["backends"].as_array().expect("backends").len();
    assert_eq!(listed, configured.len(), "{id}: backends listed {svc:#}");
    for a in configured {
        let b = backend_of(svc, *a).unwrap_or_else(|| panic!("{id}: no backend {a}"));
        assert_eq!(
            num(b, "ring_entries"),
            ring.entries(*a),
            "{id}: ring entries of {a} (predicted by maglev::build)"
        );
    }
}

/// Runs `flows` and asserts that every one went intact to the backend
/// `ring` predicts; returns the backend address of each.
fn run_predicted(topo: &Topo, lb: &Daemon, flows: &[Flow], ring: &Ring, what: &str) -> Vec<IpAddr> {
    let results = run_flows(topo, flows, 8);
    let mut picks = Vec::new();
    let mut wrong = Vec::new();
    for (f, r) in flows.iter().zip(results) {
        let src = topo.client_addr(f.vip);
        let want = ring.pick(src, f.sport, f.vip);
        let want_name = &topo.owner(want).name;
        match r {
            Ok(name) if &name == want_name => {}
            Ok(name) => wrong.push(format!(
                "{src}:{} -> {}: greeted by {name}, predicted {want_name} ({want})",
                f.sport, f.vip
            )),
            Err(e) => wrong.push(e),
        }
        picks.push(want);
    }
    assert!(
        wrong.is_empty(),
        "{what}: {} of {} streams wrong:\n  {}\n{}",
        wrong.len(),
        flows.len(),
        wrong.join("\n  "),
        diagnose(topo, lb)
    );
    picks
}

/// Counts of flows per predicted backend.
fn tally(picks: &[IpAddr]) -> BTreeMap<IpAddr, usize> {
    let mut m = BTreeMap::new();
    for p in picks {
        *m.entry(*p).or_default() += 1;
    }
    m
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// 40 streams per VIP (4 KiB to 256 KiB each) through encapsulation of every
/// family pair: VIP4 to be1's IPv4 (IPIP) and be2's IPv6 (IPv4-in-IPv6),
/// VIP6 to be1's IPv6 (IP6IP6) and be2's IPv4 (IPv6-in-IPv4), weights 1 and
/// 2. Every stream lands on the predicted backend and echoes intact; the
/// LB's per-backend counters cover the client's segments and equal the
/// backends' decapsulation counters; replies bypass the LB.
#[test]
fn maglev_predicted_dsr_streams() {
    let _g = serial();
    let t0 = Instant::now();
    let topo = Topo::new(2);
    let (be1, be2) = (topo.backend("be1"), topo.backend("be2"));
    let _echo = echo_all(&topo);
    let be_d: Vec<Daemon> = topo.backends.iter().map(start_backend).collect();
    let lb = start_lb(&topo);
    let set4 = [(be1.addr(true), 1), (be2.addr(false), 2)];
    let set6 = [(be1.addr(false), 1), (be2.addr(true), 2)];
    lb_add(&lb, &topo, SVC4, &set4, &[]);
    lb_add(&lb, &topo, SVC6, &set6, &[]);
    let (ring4, ring6) = (Ring::new(&set4), Ring::new(&set6));
    let list = lb_list(&lb.dirs, &topo.lb.ns);
    check_ring(&list, SVC4, &ring4, &[be1.v4.into(), be2.v6.into()]);
    check_ring(&list, SVC6, &ring6, &[be1.v6.into(), be2.v4.into()]);
    let setup = t0.elapsed();

    let rx0 = topo.lb_rx_packets();
    let stats0 = lb.stats(&topo.lb.ns);
    let t1 = Instant::now();
    let f4 = flows(vip4(), 30000, 40);
    let f6 = flows(vip6(), 31000, 40);
    let p4 = run_predicted(&topo, &lb, &f4, &ring4, "IPv4 VIP");
    let p6 = run_predicted(&topo, &lb, &f6, &ring6, "IPv6 VIP");
    let traffic = t1.elapsed();
    let bytes: usize = f4.iter().chain(&f6).map(|f| f.len).sum();
    eprintln!(
        "streams: {} bytes each way in {traffic:?}; IPv4 VIP per backend {:?}, IPv6 VIP {:?}",
        bytes,
        tally(&p4),
        tally(&p6)
    );

    // Per backend: at least the segments its flows needed, nothing for a
    // backend without flows; the backends' decapsulation counters equal the
    // LB's per-backend counters (outer family = the backend address's,
    // inner = the VIP's).
    let mut forwarded = 0;
    let mut slow = 0;
    let mut expect_decap: BTreeMap<(String, &str, &str), u64> = BTreeMap::new();
    let list = lb_list(&lb.dirs, &topo.lb.ns);
    eprintln!("LB lb list: {list:#}");
    for (id, fl, picks, set) in [(SVC4, &f4, &p4, &set4), (SVC6, &f6, &p6, &set6)] {
        let svc = service(&list, id);
        assert_eq!(num(svc, "dropped_packets"), 0, "{id}: dropped");
        let (fwd, sp) = (num(svc, "forwarded_packets"), num(svc, "slow_path_packets"));
        forwarded += fwd;
        slow += sp;
        let mut per_backend = 0;
        for (addr, _) in set {
            let b = backend_of(svc, *addr).expect("backend listed");
            let packets = num(b, "packets");
            per_backend += packets;
            let min: u64 = fl
                .iter()
                .zip(picks.iter())
                .filter(|(_, p)| *p == addr)
                .map(|(f, _)| f.min_segments())
                .sum();
            if min == 0 {
                assert_eq!(packets, 0, "{id}: {addr} got packets without flows");
            } else {
                assert!(
                    packets >= min,
                    "{id}: {addr}: {packets} packets, its flows sent at least {min}"
                );
            }
            *expect_decap
                .entry((topo.owner(*addr).name.clone(), fam(*addr), fam(svc_vip(id))))
                .or_default() += packets;
        }
        assert_eq!(
            per_backend,
            fwd + sp,
            "{id}: backend counters vs forwarded + slow path"
        );
        assert!(
            sp <= 10,
            "{id}: {sp} packets took the slow path (only a flow's first packets before \
             the neighbour entry exists should)"
        );
    }
    for (b, d) in topo.backends.iter().zip(&be_d) {
        let mut last = Value::Null;
        let got = |last: &mut Value| {
            *last = lb_list(&d.dirs, &b.ns);
            ["ipv4", "ipv6"]
                .iter()
                .flat_map(|o| ["ipv4", "ipv6"].map(|i| (*o, i)))
                .all(|(o, i)| {
                    decap_packets(last, o, i)
                        == expect_decap
                            .get(&(b.name.clone(), o, i))
                            .copied()
                            .unwrap_or(0)
                })
        };
        let ok = wait_for_opt(Duration::from_secs(3), || got(&mut last));
        assert!(
            ok,
            "{}: decap counters {:#} vs the LB's per-backend counters {expect_decap:?}",
            b.name, last["decap"]
        );
        // The decapsulated packets went on to the stack (XDP_PASS).
        let rows = d.stats(&b.ns);
        let passed = sum(&rows, IF, None, Some("pass")).0;
        let decapped: u64 = expect_decap
            .iter()
            .filter(|((n, _, _), _)| *n == b.name)
            .map(|(_, v)| v)
            .sum();
        assert!(decapped > 0, "{}: nothing decapsulated", b.name);
        assert!(
            passed >= decapped,
            "{}: pass {passed} < decap {decapped}",
            b.name
        );
    }

    // Direct server return: the LB received the client's segments and little
    // else; the replies (at least one segment per 1360 echoed bytes) did not
    // pass it.
    let stats1 = lb.stats(&topo.lb.ns);
    let rx = topo.lb_rx_packets() - rx0;
    let delta = |fam: Option<&str>, act: &str| {
        sum(&stats1, IF, fam, Some(act)).0 - sum(&stats0, IF, fam, Some(act)).0
    };
    let tx = delta(None, "tx");
    let pass = delta(Some("ipv4"), "pass") + delta(Some("ipv6"), "pass");
    let replies_min: u64 = f4
        .iter()
        .chain(&f6)
        .map(|f| (f.len as u64).div_ceil(1360))
        .sum();
    eprintln!(
        "LB: rx {rx}, XDP_TX {tx}, IP passed {pass}, forwarded {forwarded}, slow path {slow}; \
         the backends sent at least {replies_min} reply segments"
    );
    assert_eq!(tx, forwarded, "LB XDP_TX vs forwarded packets");
    assert_eq!(delta(None, "drop"), 0, "LB drops");
    assert!(
        pass <= slow + 30,
        "LB passed {pass} IP packets to its stack (slow path {slow}): replies went through it?"
    );
    assert!(
        rx <= forwarded + slow + 60,
        "LB received {rx} packets for {} forwarded: replies went through it?",
        forwarded + slow
    );
    assert!(replies_min > 2 * rx.saturating_sub(forwarded + slow).max(1));
    eprintln!(
        "maglev_predicted_dsr_streams: setup {setup:?}, traffic {traffic:?}, total {:?}",
        t0.elapsed()
    );
}

/// The VIP of a service id of this file.
fn svc_vip(id: &str) -> IpAddr {
    if id == SVC4 { vip4() } else { vip6() }
}

/// Polls `done` every 50 ms until it holds or `limit` passes; whether it held.
fn wait_for_opt(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if done() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// Connections held open across a change
// ---------------------------------------------------------------------------

/// A stream stopped halfway: greeted, the first half echoed.
struct Held {
    flow: Flow,
    s: TcpStream,
    data: Vec<u8>,
    name: String,
}

/// Opens `flows` from the client and echoes the first half of each.
fn open_held(topo: &Topo, flows: &[Flow]) -> Vec<Held> {
    topo.client.ns.run(|| {
        flows
            .iter()
            .map(|f| {
                let src = topo.client_addr(f.vip);
                let what = format!("held {src}:{} -> {}", f.sport, f.vip);
                let s = connect_from(
                    SocketAddr::new(src, f.sport),
                    SocketAddr::new(f.vip, PORT),
                    Duration::from_secs(3),
                )
                .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
                let data = f.data();
                (&s).write_all(&(f.len as u64).to_be_bytes())
                    .unwrap_or_else(|e| panic!("{what}: length: {e}"));
                let name = read_greeting(&s).unwrap_or_else(|e| panic!("{what}: greeting: {e}"));
                let half = &data[..f.len / 2];
                let got =
                    echo_through(&s, half).unwrap_or_else(|e| panic!("{what}: first half: {e}"));
                assert!(got == half, "{what}: first half differs");
                Held {
                    flow: *f,
                    s,
                    data,
                    name,
                }
            })
            .collect()
    })
}

/// Echoes the second half of a held stream and waits for the server's close.
fn finish_held(h: &Held) -> io::Result<()> {
    let rest = &h.data[h.flow.len / 2..];
    let got = echo_through(&h.s, rest)?;
    if got != rest {
        return Err(io::Error::other("second half differs"));
    }
    let mut tail = Vec::new();
    (&h.s).read_to_end(&mut tail)?;
    if !tail.is_empty() {
        return Err(io::Error::other("bytes after the echo"));
    }
    Ok(())
}

/// Polls the LB's `lb list` until `done` holds for it (bounded by `limit`);
/// the time it took and the last document.
fn wait_list(
    lb: &Daemon,
    topo: &Topo,
    limit: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> (Duration, Value) {
    let start = Instant::now();
    loop {
        let list = lb_list(&lb.dirs, &topo.lb.ns);
        if done(&list) {
            return (start.elapsed(), list);
        }
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}; lb list: {list:#}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Whether every backend of `set` has the health state `up` and the ring
/// entries `ring` predicts in service `id`.
fn backends_are(list: &Value, id: &str, set: &[(IpAddr, u32)], ring: &Ring, up: &[bool]) -> bool {
    let svc = service(list, id);
    set.iter().zip(up).all(|((a, _), up)| {
        backend_of(svc, *a).is_some_and(|b| {
            b["healthy"].as_bool() == Some(*up) && num(b, "ring_entries") == ring.entries(*a)
        })
    })
}

// ---------------------------------------------------------------------------
// Tests: removal, health, L2 DSR
// ---------------------------------------------------------------------------

/// Three backends per VIP (mixed families, weights 1); `lb add --replace`
/// without be2. Streams held open across the change continue on be1 and be3
/// and are reset where they moved; new streams from the same source ports
/// stay on be1/be3 if they were there and move to the predicted backend if
/// they were on be2.
#[test]
fn removal_moves_only_its_flows() {
    let _g = serial();
    let t0 = Instant::now();
    let topo = Topo::new(3);
    let be = |n: &str| topo.backend(n);
    let _echo = echo_all(&topo);
    let _be_d: Vec<Daemon> = topo.backends.iter().map(start_backend).collect();
    let lb = start_lb(&topo);
    let all4 = [
        (be("be1").addr(true), 1),
        (be("be2").addr(false), 1),
        (be("be3").addr(true), 1),
    ];
    let all6 = [
        (be("be1").addr(false), 1),
        (be("be2").addr(true), 1),
        (be("be3").addr(false), 1),
    ];
    let gone: Vec<IpAddr> = vec![be("be2").v6.into(), be("be2").v4.into()];
    let kept4: Vec<_> = all4
        .iter()
        .copied()
        .filter(|b| !gone.contains(&b.0))
        .collect();
    let kept6: Vec<_> = all6
        .iter()
        .copied()
        .filter(|b| !gone.contains(&b.0))
        .collect();
    lb_add(&lb, &topo, SVC4, &all4, &[]);
    lb_add(&lb, &topo, SVC6, &all6, &[]);
    let (a4, a6) = (Ring::new(&all4), Ring::new(&all6));
    let (b4, b6) = (Ring::new(&kept4), Ring::new(&kept6));
    let list = lb_list(&lb.dirs, &topo.lb.ns);
    check_ring(&list, SVC4, &a4, &all4.map(|b| b.0));
    check_ring(&list, SVC6, &a6, &all6.map(|b| b.0));

    let f4 = flows(vip4(), 32000, 40);
    let f6 = flows(vip6(), 33000, 40);
    let before4 = run_predicted(&topo, &lb, &f4, &a4, "IPv4 VIP, 3 backends");
    let before6 = run_predicted(&topo, &lb, &f6, &a6, "IPv6 VIP, 3 backends");
    let held_flows: Vec<Flow> = flows(vip4(), 34000, 12)
        .into_iter()
        .chain(flows(vip6(), 35000, 12))
        .collect();
    let held = open_held(&topo, &held_flows);
    let ring_of = |vip: IpAddr, after: bool| match (vip.is_ipv4(), after) {
        (true, false) => &a4,
        (false, false) => &a6,
        (true, true) => &b4,
        (false, true) => &b6,
    };
    for h in &held {
        let f = &h.flow;
        let want = ring_of(f.vip, false).pick(topo.client_addr(f.vip), f.sport, f.vip);
        assert_eq!(h.name, topo.owner(want).name, "held {f:?}");
    }

    // The prediction itself: Maglev keeps every flow of a remaining backend.
    for (fl, before, after) in [(&f4, &before4, &b4), (&f6, &before6, &b6)] {
        for (f, was) in fl.iter().zip(before.iter()) {
            let now = after.pick(topo.client_addr(f.vip), f.sport, f.vip);
            if !gone.contains(was) {
                assert_eq!(now, *was, "maglev moved {f:?} off a remaining backend");
            }
        }
    }
    let moved = before4
        .iter()
        .chain(&before6)
        .filter(|b| gone.contains(b))
        .count();
    assert!(
        moved > 0,
        "no flow was on be2: the test would prove nothing"
    );

    let t1 = Instant::now();
    lb_add(&lb, &topo, SVC4, &kept4, &["--replace"]);
    lb_add(&lb, &topo, SVC6, &kept6, &["--replace"]);
    let list = lb_list(&lb.dirs, &topo.lb.ns);
    check_ring(
        &list,
        SVC4,
        &b4,
        &kept4.iter().map(|b| b.0).collect::<Vec<_>>(),
    );
    check_ring(
        &list,
        SVC6,
        &b6,
        &kept6.iter().map(|b| b.0).collect::<Vec<_>>(),
    );

    // Held streams: those on be1/be3 finish intact; those on be2 now reach
    // another backend, which has no such connection and resets it.
    let mut held_kept = 0;
    for h in &held {
        let f = &h.flow;
        let src = topo.client_addr(f.vip);
        let was = ring_of(f.vip, false).pick(src, f.sport, f.vip);
        let r = finish_held(h);
        if gone.contains(&was) {
            assert!(
                r.is_err(),
                "held {f:?} on be2 survived its backend's removal"
            );
        } else {
            held_kept += 1;
            r.unwrap_or_else(|e| {
                panic!(
                    "held {f:?} on {} broke after be2's removal: {e}\n{}",
                    h.name,
                    diagnose(&topo, &lb)
                )
            });
        }
    }
    drop(held);

    // New streams from the same source ports.
    let after4 = run_predicted(&topo, &lb, &f4, &b4, "IPv4 VIP after removing be2");
    let after6 = run_predicted(&topo, &lb, &f6, &b6, "IPv6 VIP after removing be2");
    let mut stayed = 0;
    for (was, now) in before4
        .iter()
        .chain(&before6)
        .zip(after4.iter().chain(&after6))
    {
        if !gone.contains(was) {
            assert_eq!(was, now);
            stayed += 1;
        } else {
            assert!(!gone.contains(now));
        }
    }
    eprintln!(
        "removal_moves_only_its_flows: {moved} of 80 flows moved off be2, {stayed} stayed; \
         {held_kept} of {} held streams survived the change; change and checks {:?}, total {:?}",
        held_flows.len(),
        t1.elapsed(),
        t0.elapsed()
    );
}

/// Health checks (`--health tcp --interval 0.3 --timeout 0.2 --rise 2
/// --fall 2`): be2's listeners stop, it leaves both rings within fall x
/// interval (bounded 3 s) and new streams all go to be1; they come back,
/// be2 rejoins within rise x interval (bounded 3 s) and streams map as
/// first predicted.
#[test]
fn health_drains_and_restores() {
    let _g = serial();
    let t0 = Instant::now();
    let topo = Topo::new(2);
    let (be1, be2) = (topo.backend("be1"), topo.backend("be2"));
    let mut echo = echo_all(&topo);
    let _be_d: Vec<Daemon> = topo.backends.iter().map(start_backend).collect();
    let lb = start_lb(&topo);
    let set4 = [(be1.addr(true), 1), (be2.addr(false), 2)];
    let set6 = [(be1.addr(false), 1), (be2.addr(true), 2)];
    let health = [
        "--health",
        "tcp",
        "--interval",
        "0.3",
        "--timeout",
        "0.2",
        "--rise",
        "2",
        "--fall",
        "2",
    ];
    lb_add(&lb, &topo, SVC4, &set4, &health);
    lb_add(&lb, &topo, SVC6, &set6, &health);
    let (full4, full6) = (Ring::new(&set4), Ring::new(&set6));
    let drained = |set: &[(IpAddr, u32)]| Ring::new(&[set[0], (set[1].0, 0)]);
    let (only4, only6) = (drained(&set4), drained(&set6));
    let both = |l: &Value, r4: &Ring, r6: &Ring, up: [bool; 2]| {
        backends_are(l, SVC4, &set4, r4, &up) && backends_are(l, SVC6, &set6, r6, &up)
    };
    let (t_up, list) = wait_list(
        &lb,
        &topo,
        Duration::from_secs(5),
        "both backends up",
        |l| both(l, &full4, &full6, [true, true]),
    );
    assert_eq!(service(&list, SVC4)["health_checked"], true);
    eprintln!("health: both up {t_up:?} after lb add");

    let f4 = flows(vip4(), 36000, 20);
    let f6 = flows(vip6(), 37000, 20);
    run_predicted(&topo, &lb, &f4, &full4, "IPv4 VIP, both healthy");
    run_predicted(&topo, &lb, &f6, &full6, "IPv6 VIP, both healthy");

    // be2's listeners stop: its probes (to its IPv6 address for the IPv4 VIP,
    // to its IPv4 address for the IPv6 VIP) are refused.
    echo.remove(&("be2".to_owned(), true));
    echo.remove(&("be2".to_owned(), false));
    let (t_down, list) = wait_list(&lb, &topo, Duration::from_secs(3), "be2 drained", |l| {
        both(l, &only4, &only6, [true, false])
    });
    for id in [SVC4, SVC6] {
        let svc = service(&list, id);
        let b2 = backend_of(
            svc,
            if id == SVC4 {
                be2.v6.into()
            } else {
                be2.v4.into()
            },
        )
        .unwrap();
        assert_eq!(num(b2, "ring_entries"), 0, "{id}: be2 still in the ring");
    }
    let p4 = run_predicted(&topo, &lb, &f4, &only4, "IPv4 VIP, be2 down");
    let p6 = run_predicted(&topo, &lb, &f6, &only6, "IPv6 VIP, be2 down");
    assert!(
        p4.iter().chain(&p6).all(|p| topo.owner(*p).name == "be1"),
        "flows predicted off be1 with be2 down"
    );

    // Back: be2 rejoins and the flows map as first predicted.
    echo.insert(("be2".to_owned(), true), EchoServer::start(be2, true));
    echo.insert(("be2".to_owned(), false), EchoServer::start(be2, false));
    let (t_back, _) = wait_list(&lb, &topo, Duration::from_secs(3), "be2 restored", |l| {
        both(l, &full4, &full6, [true, true])
    });
    run_predicted(&topo, &lb, &f4, &full4, "IPv4 VIP, be2 restored");
    run_predicted(&topo, &lb, &f6, &full6, "IPv6 VIP, be2 restored");
    eprintln!(
        "health_drains_and_restores: drained in {t_down:?} (fall x interval = 0.6 s), \
         restored in {t_back:?} (rise x interval = 0.6 s), total {:?}",
        t0.elapsed()
    );
}

/// L2 DSR (`--forward l2dsr`) to backends on the segment: no decapsulation,
/// the frame keeps its IP packet and only changes its MACs. Without a
/// The daemon has the kernel keep the backends' neighbour entries resolved
/// (managed entries, without any traffic from the LB); then streams go intact
/// to the predicted backends.
#[test]
fn l2dsr_streams() {
    let _g = serial();
    let t0 = Instant::now();
    let topo = Topo::new(2);
    let (be1, be2) = (topo.backend("be1"), topo.backend("be2"));
    let _echo = echo_all(&topo);
    // No backend daemons: nothing is encapsulated.
    let lb = start_lb(&topo);
    let set4 = [(be1.addr(true), 1), (be2.addr(true), 2)];
    let set6 = [(be1.addr(false), 1), (be2.addr(false), 2)];
    lb_add(&lb, &topo, SVC4, &set4, &["--forward", "l2dsr"]);
    lb_add(&lb, &topo, SVC6, &set6, &["--forward", "l2dsr"]);
    let (ring4, ring6) = (Ring::new(&set4), Ring::new(&set6));

    // The daemon asks the kernel to keep the on-link backends' neighbour
    // entries resolved (managed entries): no traffic from the LB needed.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let shown = topo.lb.ns.exec("ip", &["neigh", "show"]).unwrap();
        let resolved = [be1, be2].iter().all(|b| {
            [b.v4.to_string(), b.v6.to_string()].iter().all(|a| {
                shown.lines().any(|l| {
                    l.starts_with(&format!("{a} ")) && l.contains("managed") && l.contains("lladdr")
                })
            })
        });
        if resolved {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the LB did not resolve its backends' neighbour entries within 5 s:\n{shown}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let stats0 = lb.stats(&topo.lb.ns);
    let f4 = flows(vip4(), 38000, 40);
    let f6 = flows(vip6(), 39000, 40);
    let p4 = run_predicted(&topo, &lb, &f4, &ring4, "IPv4 VIP, L2 DSR");
    let p6 = run_predicted(&topo, &lb, &f6, &ring6, "IPv6 VIP, L2 DSR");
    let stats1 = lb.stats(&topo.lb.ns);
    let list = lb_list(&lb.dirs, &topo.lb.ns);
    let mut forwarded = 0;
    for (id, fl, picks, set) in [(SVC4, &f4, &p4, &set4), (SVC6, &f6, &p6, &set6)] {
        let svc = service(&list, id);
        assert_eq!(svc["forward"], "l2dsr");
        assert_eq!(
            num(svc, "slow_path_packets"),
            0,
            "{id}: L2 DSR has no slow path"
        );
        forwarded += num(svc, "forwarded_packets");
        for (addr, _) in set {
            let min: u64 = fl
                .iter()
                .zip(picks.iter())
                .filter(|(_, p)| *p == addr)
                .map(|(f, _)| f.min_segments())
                .sum();
            let got = num(backend_of(svc, *addr).unwrap(), "packets");
            assert!(got >= min, "{id}: {addr}: {got} packets < {min}");
        }
    }
    let d = |act: &str| sum(&stats1, IF, None, Some(act)).0 - sum(&stats0, IF, None, Some(act)).0;
    assert_eq!(d("tx"), forwarded, "XDP_TX vs forwarded");
    assert_eq!(d("drop"), 0, "drops after resolution");
    eprintln!(
        "l2dsr_streams: {forwarded} packets forwarded by MAC rewrite, total {:?}",
        t0.elapsed()
    );
}
