//! SYN-cookie fixtures: a rule with `syncookie = true` installed through the
//! real ACL controller, the SYN-cookie settings written as the daemon writes
//! them, and hand-built segments run through the loaded XDP program with
//! `BPF_PROG_TEST_RUN` (see `docs/design/ddos.md`):
//!
//! - the first SYN to an address and port goes to the kernel (`kernel_syns`,
//!   so its listener accepts cookie ACKs); later SYNs are answered with
//!   `XDP_TX` and a SYN-ACK whose every byte is checked: MACs, addresses and
//!   ports swapped, VLAN tags kept, IPv6 extension headers gone, IPv4 DF set,
//!   both checksums valid, ack = seq + 1, flags SYN|ACK, the MSS option, the
//!   client's timestamp echoed (`cookies_sent`);
//! - the ACK carrying that cookie passes (the kernel's check helper accepts
//!   it: `cookie_acks`); an ACK with another number is dropped (`bad_cookie`);
//! - the reflector limit drops SYNs over it (`synack_limited`).
//!
//! Each test runs in a fresh namespace with `net.ipv4.tcp_syncookies = 2`
//! and a listener on the protected port, as on a real host.
mod ddos_common;

use std::net::TcpListener;

use ddos_common::{Gate, XDP_DROP, XDP_PASS, XDP_TX, in_netns};
use xdpgate_common::{
    DropReason,
    limit::{
        self, LimitSpec, SYNCOOKIE_ENABLED, SYNCOOKIE_SACK, SYNCOOKIE_TIMESTAMPS, SYNCOOKIE_WSCALE,
        SyncookieConfig, key, rule_stat,
    },
};
use xdpgate_tests::packet::{
    Ethernet, Ext, Ipv4, Ipv6, Tcp, TcpOption, TcpSegment, ethertype, hex,
    tcp::{flags, linux_syn_options, pseudo4, pseudo6, tcp_checksum},
};

const PORT: u16 = 8443;
const RULE: u32 = 1;
const WSCALE: u32 = 7;
const WINDOW: u32 = 65535;
const CLIENT_TSVAL: u32 = 0x0a0b_0c0d;

const C4: [u8; 4] = [10, 77, 0, 2];
const S4: [u8; 4] = [10, 77, 0, 1];
const C6: [u8; 16] = [0xfd, 0, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const S6: [u8; 16] = [0xfd, 0, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// The SYN-cookie rule (id 1) on `PORT` and a rule allowing everything else.
fn rules() -> String {
    format!(
        "[[rule]]\nid = {RULE}\npriority = 1\nproto = \"tcp\"\ndport = {PORT}\n\
         action = \"allow\"\nsyncookie = true\n\n\
         [[rule]]\nid = 2\npriority = 2\naction = \"allow\"\n"
    )
}

/// Writes `XG_SYNCOOKIE` as the daemon does after checking the sysctls:
/// `flags`, window scale 7, window 65535, refresh every 30 s, and at most
/// `synack` SYN-ACKs (rate, burst) per source /24 or /48.
fn configure(g: &mut Gate, flags: u32, synack: (u64, u64)) {
    let cfg = SyncookieConfig {
        flags,
        wscale: WSCALE,
        window: WINDOW,
        _pad: 0,
        refresh_ns: 30 * limit::NS_PER_SEC,
        synack: LimitSpec::new(key::SRC, 24, 48, Some(synack), None),
    };
    g.dp.set_syncookie_config(&cfg).expect("write XG_SYNCOOKIE");
}

const ALL_FLAGS: u32 = SYNCOOKIE_ENABLED | SYNCOOKIE_TIMESTAMPS | SYNCOOKIE_SACK | SYNCOOKIE_WSCALE;

/// The fixture: a namespace with `tcp_syncookies = 2`, listeners on `PORT`
/// of both families, the datapath with the rules and the settings `flags`.
fn with_gate<T: Send>(
    tag: &str,
    flags: u32,
    synack: (u64, u64),
    f: impl FnOnce(&mut Gate) -> T + Send,
) -> T {
    in_netns(tag, |ns| {
        ns.sysctl("net.ipv4.tcp_syncookies", "2")
            .expect("tcp_syncookies");
        let _l4 = TcpListener::bind(("0.0.0.0", PORT)).expect("IPv4 listener");
        let _l6 = listen6();
        let mut g = Gate::new(&rules());
        configure(&mut g, flags, synack);
        f(&mut g)
    })
}

/// A listener on `[::]:PORT` for IPv6 only (beside the IPv4 one).
fn listen6() -> TcpListener {
    let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)
        .expect("IPv6 socket");
    s.set_only_v6(true).expect("IPV6_V6ONLY");
    let addr = std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, PORT));
    s.bind(&addr.into()).expect("bind the IPv6 listener");
    s.listen(16).expect("listen");
    s.into()
}

/// A client's segment in a frame: IPv4 (DF set, as Linux sends) or IPv6,
/// optionally with a VLAN tag or IPv6 extension headers.
#[derive(Clone)]
struct Client {
    v4: bool,
    vlan: Option<u16>,
    /// QinQ: an 802.1ad S-tag for this VLAN outside the 802.1Q one.
    outer: Option<u16>,
    exts: Vec<Ext>,
    dont_fragment: bool,
    /// IPv4 options (padded to 4 bytes by the builder).
    ip_options: Vec<u8>,
}

impl Client {
    fn v4() -> Client {
        Client {
            v4: true,
            vlan: None,
            outer: None,
            exts: Vec::new(),
            dont_fragment: true,
            ip_options: Vec::new(),
        }
    }

    fn v6() -> Client {
        Client {
            v4: false,
            ..Client::v4()
        }
    }

    fn eth(&self) -> Ethernet {
        let et = if self.v4 {
            ethertype::IPV4
        } else {
            ethertype::IPV6
        };
        let e = Ethernet::new(et);
        match (self.outer, self.vlan) {
            (Some(o), Some(v)) => e.qinq(o, v),
            (_, Some(v)) => e.vlan(v),
            _ => e,
        }
    }

    fn frame(&self, tcp: &Tcp) -> Vec<u8> {
        let ip = if self.v4 {
            let mut ip = Ipv4::new(C4, S4, 6);
            ip.dont_fragment = self.dont_fragment;
            ip = ip.options(&self.ip_options);
            ip.build(&tcp.v4(C4, S4).bytes())
        } else {
            let mut ip = Ipv6::new(C6, S6, 6);
            ip.exts = self.exts.clone();
            ip.build(&tcp.v6(C6, S6).bytes())
        };
        self.eth().build(&ip)
    }

    /// A SYN with Linux's options from `sport`.
    fn syn(&self, sport: u16, isn: u32) -> Vec<u8> {
        let mss = if self.v4 { 1460 } else { 1440 };
        self.frame(&Tcp::syn(sport, PORT, isn).options(&linux_syn_options(mss, CLIENT_TSVAL)))
    }

    /// The ACK of a handshake from `sport`: `isn + 1`, acknowledging `ack`.
    fn ack(&self, sport: u16, isn: u32, ack: u32) -> Vec<u8> {
        self.frame(&Tcp::ack(sport, PORT, isn.wrapping_add(1), ack))
    }

    /// Where the TCP header starts: in this client's frames (`in_syn`,
    /// after its IP options or extension headers) or in the SYN-ACK (which
    /// has neither).
    fn l4_offset(&self, in_syn: bool) -> usize {
        let l2 = self.eth().header_len();
        match (self.v4, in_syn) {
            (true, false) => l2 + 20,
            (true, true) => l2 + 20 + self.ip_options.len().div_ceil(4) * 4,
            (false, false) => l2 + 40,
            (false, true) => l2 + 40 + self.exts.iter().map(Ext::len).sum::<usize>(),
        }
    }

    /// The SYN-ACK the gate must send for `syn_isn` from `sport`, built
    /// independently: everything from the design, and from the frame it
    /// sent only what is the gate's choice (the cookie, the IP id and TTL or
    /// hop limit, the layout of the options, checked separately).
    fn expected_synack(&self, sport: u16, syn_isn: u32, got: &[u8]) -> Vec<u8> {
        let l4 = self.l4_offset(false);
        let seg = TcpSegment::parse(&got[l4..]).expect("a TCP header in the SYN-ACK");
        let mut eth = self.eth();
        std::mem::swap(&mut eth.src, &mut eth.dst);
        let tcp = Tcp {
            sport: PORT,
            dport: sport,
            seq: seg.seq,
            ack: syn_isn.wrapping_add(1),
            flags: flags::SYN | flags::ACK,
            window: WINDOW as u16,
            options: seg.options.clone(),
            payload: Vec::new(),
        };
        if self.v4 {
            let mut ip = Ipv4::new(S4, C4, 6);
            ip.dont_fragment = true;
            ip.id = u16::from_be_bytes([got[l4 - 16], got[l4 - 15]]);
            ip.ttl = got[l4 - 12];
            eth.build(&ip.build(&tcp.v4(S4, C4).bytes()))
        } else {
            let mut ip = Ipv6::new(S6, C6, 6);
            ip.hop_limit = got[l4 - 33];
            eth.build(&ip.build(&tcp.v6(S6, C6).bytes()))
        }
    }
}

/// Sends the first SYN to the service, which goes to the kernel.
fn first_syn_goes_to_the_kernel(g: &mut Gate, c: &Client) {
    let before = g.rule_stat(RULE, rule_stat::KERNEL_SYNS);
    assert_eq!(g.run(&c.syn(30000, 1)), XDP_PASS, "the first SYN");
    assert_eq!(
        g.rule_stat(RULE, rule_stat::KERNEL_SYNS),
        before + 1,
        "{:?}",
        g.rule_stats(RULE)
    );
}

/// Runs a SYN from `sport`, checks the SYN-ACK byte for byte and returns
/// its cookie (sequence number).
fn synack(g: &mut Gate, c: &Client, sport: u16, isn: u32, flags_set: u32) -> u32 {
    let syn = c.syn(sport, isn);
    let out = g.dp.test_run(&syn, 1).expect("test run");
    assert_eq!(out.action, XDP_TX, "SYN {}", hex(&syn));
    let got = out.frame;
    let l4 = c.l4_offset(false);
    assert_eq!(
        got.len(),
        l4 + limit::SYNACK_TCP_LEN,
        "SYN-ACK length: {}",
        hex(&got)
    );
    let want = c.expected_synack(sport, isn, &got);
    assert_eq!(hex(&got), hex(&want), "SYN-ACK bytes (got, then expected)");
    // The checksums as a receiver verifies them (the expected frame was built
    // with its own, so this checks the builder and the gate alike).
    let seg_bytes = &got[l4..];
    if c.v4 {
        assert_eq!(
            xdpgate_tests::packet::checksum(&got[l4 - 20..l4]),
            0,
            "IPv4 header checksum"
        );
        assert_eq!(got[l4 - 14] & 0x40, 0x40, "DF");
        let pseudo = pseudo4(S4, C4, seg_bytes.len());
        assert_eq!(tcp_checksum(&pseudo, seg_bytes), 0, "TCP checksum");
    } else {
        assert_eq!(got[l4 - 34], 6, "IPv6 next header is TCP");
        assert_eq!(
            u16::from_be_bytes([got[l4 - 36], got[l4 - 35]]) as usize,
            limit::SYNACK_TCP_LEN,
            "IPv6 payload length"
        );
        let pseudo = pseudo6(S6, C6, seg_bytes.len());
        assert_eq!(tcp_checksum(&pseudo, seg_bytes), 0, "TCP checksum");
    }
    let seg = TcpSegment::parse(seg_bytes).expect("SYN-ACK TCP header");
    assert_eq!(seg.flags, flags::SYN | flags::ACK);
    assert_eq!(seg.ack, isn.wrapping_add(1));
    assert_eq!(seg.payload_len, 0);
    for o in &seg.options {
        assert!(
            !matches!(o, TcpOption::Other(..)),
            "unexpected option {o:?} in {:?}",
            seg.options
        );
    }
    let client_mss = if c.v4 { 1460 } else { 1440 };
    let mss = seg.mss().expect("MSS option");
    assert!(
        (536..=client_mss).contains(&mss),
        "MSS {mss}, client's {client_mss}"
    );
    if flags_set & SYNCOOKIE_TIMESTAMPS != 0 {
        let (_, ecr) = seg.timestamps().expect("timestamps option");
        assert_eq!(ecr, CLIENT_TSVAL, "the client's timestamp echoed");
        assert_eq!(
            seg.sack_permitted(),
            flags_set & SYNCOOKIE_SACK != 0,
            "SACK"
        );
        assert_eq!(
            seg.window_scale(),
            (flags_set & SYNCOOKIE_WSCALE != 0).then_some(WSCALE as u8),
            "window scale"
        );
    } else {
        // Without timestamps the cookie cannot carry SACK and window scale.
        assert_eq!(seg.timestamps(), None, "no timestamps option");
        assert_eq!(seg.window_scale(), None);
        assert!(!seg.sack_permitted());
    }
    seg.seq
}

/// The whole exchange for one client shape: first SYN to the kernel, a SYN
/// answered with a cookie, its ACK passed, a wrong ACK dropped; every
/// counter checked.
fn handshake(tag: &str, c: &Client) {
    with_gate(tag, ALL_FLAGS, (500, 100), |g| {
        first_syn_goes_to_the_kernel(g, c);
        let isn = 0x1234_5678;
        let cookie = synack(g, c, 40000, isn, ALL_FLAGS);
        assert_eq!(g.rule_stat(RULE, rule_stat::COOKIES_SENT), 1);
        let ack = c.ack(40000, isn, cookie.wrapping_add(1));
        assert_eq!(g.run(&ack), XDP_PASS, "the cookie ACK {}", hex(&ack));
        assert_eq!(
            g.rule_stat(RULE, rule_stat::COOKIE_ACKS),
            1,
            "{:?}",
            g.rule_stats(RULE)
        );
        // A cookie off in its hash bits. (Not off by one: the low bits
        // carry the MSS index, and the kernel's check accepts any index of
        // its table, so cookie + 1 is valid for an IPv6 client whose MSS
        // is not the table's largest.)
        let bad = c.ack(40000, isn, cookie.wrapping_add(1 + 0x0001_0000));
        assert_eq!(g.run(&bad), XDP_DROP, "a wrong cookie {}", hex(&bad));
        let bad = c.ack(40001, isn, cookie.wrapping_add(1));
        assert_eq!(g.run(&bad), XDP_DROP, "the cookie from another port");
        assert_eq!(
            g.rule_stats(RULE),
            [
                ("limited", 0),
                ("cookies_sent", 1),
                ("cookie_acks", 1),
                ("bad_cookies", 2),
                ("synacks_limited", 0),
                ("kernel_syns", 1),
            ]
        );
        assert_eq!(g.reason(DropReason::BadCookie), 2);
        assert_eq!(g.reason(DropReason::SynackLimited), 0);
        assert_eq!(g.rule_packets(RULE), 5, "the rule counts every segment");
    });
}

#[test]
fn an_ipv4_syn_gets_a_cookie_synack_whose_ack_passes_and_a_wrong_ack_is_dropped() {
    handshake("sc4", &Client::v4());
}

#[test]
fn an_ipv6_syn_gets_a_cookie_synack_whose_ack_passes_and_a_wrong_ack_is_dropped() {
    handshake("sc6", &Client::v6());
}

#[test]
fn a_vlan_tagged_syn_is_answered_on_its_vlan_in_both_families() {
    for c in [Client::v4(), Client::v6()] {
        handshake(
            "scvlan",
            &Client {
                vlan: Some(100),
                ..c
            },
        );
    }
}

#[test]
fn a_qinq_tagged_syn_is_answered_with_both_tags_in_both_families() {
    for c in [Client::v4(), Client::v6()] {
        let c = Client {
            outer: Some(300),
            vlan: Some(100),
            ..c
        };
        assert_eq!(c.eth().header_len(), 22);
        handshake("scqinq", &c);
    }
}

/// A SYN without any option (no MSS, no timestamps) while timestamps are
/// on: the SYN-ACK offers the default MSS the kernel assumes for such a
/// client (536 for IPv4, RFC 9293; 1220 for IPv6, the minimum MTU of
/// RFC 8200 less 60 bytes of headers) and nothing the client did not offer,
/// and its cookie ACK passes.
#[test]
fn a_syn_without_options_gets_the_default_mss_and_no_other_option() {
    with_gate("scnoopt", ALL_FLAGS, (500, 100), |g| {
        for c in [Client::v4(), Client::v6()] {
            first_syn_goes_to_the_kernel(g, &c);
            let syn = c.frame(&Tcp::syn(42000, PORT, 5));
            let out = g.dp.test_run(&syn, 1).expect("test run");
            assert_eq!(out.action, XDP_TX, "SYN {}", hex(&syn));
            let seg = TcpSegment::parse(&out.frame[c.l4_offset(false)..]).expect("SYN-ACK");
            assert_eq!(seg.flags, flags::SYN | flags::ACK);
            assert_eq!(seg.ack, 6);
            let mss = if c.v4 { 536 } else { 1220 };
            assert_eq!(seg.mss(), Some(mss), "{:?}", seg.options);
            assert_eq!(seg.timestamps(), None, "{:?}", seg.options);
            assert_eq!(seg.window_scale(), None);
            assert!(!seg.sack_permitted());
            let ack = c.ack(42000, 5, seg.seq.wrapping_add(1));
            assert_eq!(g.run(&ack), XDP_PASS, "the cookie ACK {}", hex(&ack));
        }
        assert_eq!(g.rule_stat(RULE, rule_stat::COOKIE_ACKS), 2);
    });
}

#[test]
fn an_ipv4_syn_without_df_is_answered_with_df_set() {
    handshake(
        "scnodf",
        &Client {
            dont_fragment: false,
            ..Client::v4()
        },
    );
}

#[test]
fn an_ipv4_syn_with_ip_options_is_answered_without_them() {
    // Router alert (4 bytes) and a timestamp option (12 bytes): IHL 9.
    let mut options = vec![0x94, 4, 0, 0, 0x44, 12, 5, 0];
    options.extend_from_slice(&[0; 8]);
    let c = Client {
        ip_options: options,
        ..Client::v4()
    };
    assert_eq!(c.l4_offset(true), 14 + 36);
    handshake("scipopt", &c);
}

/// The SYN carries hop-by-hop and destination options; the SYN-ACK carries
/// none (40-byte payload length, next header TCP), checked by
/// [`synack`] against a frame built without them.
#[test]
fn an_ipv6_syn_with_extension_headers_is_answered_without_them() {
    let c = Client {
        exts: vec![Ext::hop_by_hop(), Ext::dest_opts()],
        ..Client::v6()
    };
    assert_eq!(c.l4_offset(true), 14 + 40 + 16);
    handshake("scext", &c);
    // Its ACK may carry them too.
    with_gate("scext2", ALL_FLAGS, (500, 100), |g| {
        first_syn_goes_to_the_kernel(g, &c);
        let cookie = synack(g, &c, 40000, 77, ALL_FLAGS);
        assert_eq!(g.run(&c.ack(40000, 77, cookie.wrapping_add(1))), XDP_PASS);
    });
}

#[test]
fn without_timestamps_the_synack_has_no_timestamp_sack_or_window_scale() {
    let flags = SYNCOOKIE_ENABLED | SYNCOOKIE_SACK | SYNCOOKIE_WSCALE;
    with_gate("scnots", flags, (500, 100), |g| {
        for c in [Client::v4(), Client::v6()] {
            first_syn_goes_to_the_kernel(g, &c);
            let cookie = synack(g, &c, 41000, 9, flags);
            assert_eq!(g.run(&c.ack(41000, 9, cookie.wrapping_add(1))), XDP_PASS);
        }
        assert_eq!(g.rule_stat(RULE, rule_stat::COOKIE_ACKS), 2);
    });
}

#[test]
fn synacks_over_the_reflector_limit_are_not_sent() {
    // 1 SYN-ACK per second per source /24, burst 3.
    with_gate("screfl", ALL_FLAGS, (1, 3), |g| {
        let c = Client::v4();
        first_syn_goes_to_the_kernel(g, &c);
        let verdicts: Vec<u32> = (0..6).map(|i| g.run(&c.syn(42000 + i, i.into()))).collect();
        assert_eq!(
            verdicts,
            [XDP_TX, XDP_TX, XDP_TX, XDP_DROP, XDP_DROP, XDP_DROP]
        );
        assert_eq!(g.rule_stat(RULE, rule_stat::COOKIES_SENT), 3);
        assert_eq!(g.rule_stat(RULE, rule_stat::SYNACKS_LIMITED), 3);
        assert_eq!(g.reason(DropReason::SynackLimited), 3);
        // Another /24 has its own budget.
        let mut other = c.syn(43000, 1);
        let ip = 14 + 12;
        other[ip + 2] = 78; // 10.77.0.2 -> 10.77.78.2
        // Fix the IPv4 header checksum and the TCP checksum for the new source.
        let frame = refix_v4(other);
        assert_eq!(g.run(&frame), XDP_TX, "a SYN from another /24");
    });
}

/// Recomputes the IPv4 header and TCP checksums of an untagged IPv4 frame.
fn refix_v4(mut f: Vec<u8>) -> Vec<u8> {
    f[24..26].copy_from_slice(&[0, 0]);
    let sum = xdpgate_tests::packet::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&sum.to_be_bytes());
    let (src, dst): ([u8; 4], [u8; 4]) =
        (f[26..30].try_into().unwrap(), f[30..34].try_into().unwrap());
    f[34 + 16..34 + 18].copy_from_slice(&[0, 0]);
    let sum = tcp_checksum(&pseudo4(src, dst, f.len() - 34), &f[34..]);
    f[34 + 16..34 + 18].copy_from_slice(&sum.to_be_bytes());
    f
}

#[test]
fn without_the_daemons_settings_the_rule_fails_closed() {
    with_gate("scoff", 0, (500, 100), |g| {
        for c in [Client::v4(), Client::v6()] {
            assert_eq!(g.run(&c.syn(44000, 5)), XDP_DROP, "SYN without settings");
            assert_eq!(
                g.run(&c.ack(44000, 5, 99)),
                XDP_DROP,
                "ACK without settings"
            );
        }
        assert_eq!(g.rule_stat(RULE, rule_stat::COOKIES_SENT), 0);
        assert_eq!(g.rule_stat(RULE, rule_stat::COOKIE_ACKS), 0);
    });
}

#[test]
fn a_rst_to_the_service_passes_without_a_cookie() {
    with_gate("scrst", ALL_FLAGS, (500, 100), |g| {
        for c in [Client::v4(), Client::v6()] {
            let rst = c.frame(&Tcp::ack(44000, PORT, 6, 0).flags(flags::RST));
            assert_eq!(g.run(&rst), XDP_PASS, "RST {}", hex(&rst));
        }
        assert_eq!(g.rule_stat(RULE, rule_stat::BAD_COOKIES), 0);
        assert_eq!(g.reason(DropReason::BadCookie), 0);
    });
}
