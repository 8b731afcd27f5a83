//! Tests of the frame builder: lengths, checksums, tags and chains in wire
//! order.
use super::*;

const A4: [u8; 4] = [192, 0, 2, 1];
const B4: [u8; 4] = [198, 51, 100, 2];
const A6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const B6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

#[test]
fn checksum_matches_rfc1071_example() {
    // RFC 1071 section 3: the sum of these words is 0xddf2.
    let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
    assert_eq!(checksum(&data), !0xddf2);
    assert_eq!(checksum(&[]), 0xffff);
    assert_eq!(checksum(&[0x12]), !0x1200);
}

#[test]
fn ethernet_tags_and_ethertype_in_wire_order() {
    let f = Ethernet::new(ethertype::IPV6).qinq(10, 20).build(&[0xaa]);
    assert_eq!(f.len(), 14 + 8 + 1);
    assert_eq!(&f[12..14], &[0x88, 0xa8]);
    assert_eq!(&f[14..16], &[0x00, 10]);
    assert_eq!(&f[16..18], &[0x81, 0x00]);
    assert_eq!(&f[18..20], &[0x00, 20]);
    assert_eq!(&f[20..22], &[0x86, 0xdd]);
    assert_eq!(f[22], 0xaa);
    let plain = Ethernet::new(0x88cc);
    assert_eq!(plain.header_len(), 14);
    assert_eq!(&plain.build(&[])[12..], &[0x88, 0xcc]);
    assert_eq!(
        Ethernet::new(0x0800).vlan(0xfff7).tags,
        vec![(0x8100, 0x0ff7)]
    );
}

#[test]
fn ipv4_lengths_flags_and_checksum() {
    let ip = Ipv4::new(A4, B4, proto::TCP);
    let p = ip.build(&[1, 2, 3]);
    assert_eq!(p.len(), 23);
    assert_eq!(p[0], 0x45);
    assert_eq!(u16::from_be_bytes([p[2], p[3]]), 23);
    assert_eq!(p[9], proto::TCP);
    assert_eq!(&p[12..16], &A4);
    assert_eq!(&p[16..20], &B4);
    assert_eq!(checksum(&p[..20]), 0, "header checksum must verify");

    // 5 option bytes pad to 8: IHL 7.
    let ip = Ipv4::new(A4, B4, proto::UDP)
        .options(&[1, 1, 1, 1, 7])
        .fragment(185, true)
        .dont_fragment();
    assert_eq!(ip.header_len(), 28);
    let p = ip.build(&[0; 8]);
    assert_eq!(p[0], 0x47);
    assert_eq!(u16::from_be_bytes([p[2], p[3]]), 36);
    assert_eq!(u16::from_be_bytes([p[6], p[7]]), 0x4000 | 0x2000 | 185);
    assert_eq!(&p[20..28], &[1, 1, 1, 1, 7, 0, 0, 0]);
    assert_eq!(checksum(&p[..28]), 0);

    for n in 0..=40 {
        let ip = Ipv4::new(A4, B4, proto::TCP).options(&vec![1; n]);
        let p = ip.build(&[]);
        assert_eq!(p.len(), 20 + n.div_ceil(4) * 4);
        assert_eq!(usize::from(p[0] & 0x0f) * 4, p.len());
        assert_eq!(checksum(&p), 0);
    }
}

#[test]
fn ipv4_overrides_are_written_and_still_checksummed() {
    let p = Ipv4::new(A4, B4, proto::TCP)
        .tot_len(1000)
        .ihl(3)
        .version(6)
        .build(&[0; 4]);
    assert_eq!(p.len(), 24);
    assert_eq!(p[0], 0x63);
    assert_eq!(u16::from_be_bytes([p[2], p[3]]), 1000);
    assert_eq!(checksum(&p[..20]), 0);
}

#[test]
#[should_panic(expected = "IHL above 15")]
fn ipv4_options_beyond_ihl_15_panic() {
    Ipv4::new(A4, B4, proto::TCP).options(&[1; 41]).build(&[]);
}

#[test]
fn ext_header_lengths() {
    // (header, encoded length, length field)
    let cases = [
        (Ext::hop_by_hop(), 8, 0),
        (Ext::HopByHop(vec![5, 2, 0, 0]), 8, 0), // router alert: 6 + PadN(2)
        (Ext::HopByHop(vec![0x1e, 7, 1, 2, 3, 4, 5, 6, 7]), 16, 1),
        (Ext::dest_opts(), 8, 0),
        (Ext::DestOpts(vec![0x1e, 4, 1, 2, 3, 4]), 8, 0), // exactly 8, no padding
        (Ext::DestOpts(vec![0x1e, 3, 1, 2, 3]), 8, 0),    // Pad1
        (Ext::routing(), 24, 2),
        (Ext::fragment(0, true), 8, 0),
        (Ext::ah(), 24, 4),
        (
            Ext::Ah {
                spi: 1,
                seq: 2,
                icv: vec![],
            },
            16,
            2,
        ),
    ];
    for (ext, len, field) in cases {
        let b = ext.encode(proto::UDP);
        assert_eq!(b.len(), len, "{ext:?}");
        assert_eq!(ext.len(), len, "{ext:?}");
        assert_eq!(b[0], proto::UDP, "{ext:?}");
        assert_eq!(b[1], field, "{ext:?}");
        let decoded = match ext {
            Ext::Ah { .. } => (usize::from(b[1]) + 2) * 4,
            Ext::Fragment { .. } => 8,
            _ => (usize::from(b[1]) + 1) * 8,
        };
        assert_eq!(decoded, len, "{ext:?}");
    }
    // Padding is Pad1 or a PadN that exactly fills the header.
    assert_eq!(Ext::DestOpts(vec![0x1e, 3, 1, 2, 3]).encode(0)[7], 0);
    assert_eq!(&Ext::hop_by_hop().encode(0)[2..], &[1, 4, 0, 0, 0, 0]);
    // Fragment: offset in the top 13 bits, M in bit 0.
    let f = Ext::fragment(185, true).encode(proto::TCP);
    assert_eq!(u16::from_be_bytes([f[2], f[3]]), (185 << 3) | 1);
    assert_eq!(&f[4..8], &0xdead_beefu32.to_be_bytes());
}

#[test]
fn ipv6_chain_and_payload_length() {
    let ip = Ipv6::new(A6, B6, proto::UDP)
        .ext(Ext::hop_by_hop())
        .ext(Ext::routing())
        .ext(Ext::fragment(0, true))
        .ext(Ext::ah())
        .ext(Ext::dest_opts());
    assert_eq!(ip.header_len(), 40 + 8 + 24 + 8 + 24 + 8);
    let p = ip.build(&[0; 8]);
    assert_eq!(p.len(), ip.header_len() + 8);
    assert_eq!(p[0] >> 4, 6);
    assert_eq!(usize::from(u16::from_be_bytes([p[4], p[5]])), p.len() - 40);
    assert_eq!(&p[8..24], &A6);
    assert_eq!(&p[24..40], &B6);
    // Walk the chain as a receiver would.
    let mut next = p[6];
    let mut at = 40;
    let mut seen = Vec::new();
    while next != proto::UDP {
        seen.push(next);
        let len = match next {
            proto::FRAGMENT => 8,
            proto::AH => (usize::from(p[at + 1]) + 2) * 4,
            _ => (usize::from(p[at + 1]) + 1) * 8,
        };
        next = p[at];
        at += len;
    }
    assert_eq!(
        seen,
        [
            proto::HOPOPTS,
            proto::ROUTING,
            proto::FRAGMENT,
            proto::AH,
            proto::DSTOPTS
        ]
    );
    assert_eq!(at, ip.header_len());

    let p = Ipv6::new(A6, B6, proto::TCP)
        .payload_len(9999)
        .version(4)
        .build(&[]);
    assert_eq!(p.len(), 40);
    assert_eq!(p[0] >> 4, 4);
    assert_eq!(u16::from_be_bytes([p[4], p[5]]), 9999);
    assert_eq!(p[6], proto::TCP);
}

#[test]
fn l4_headers() {
    let t = Transport::tcp(1, 2).payload(b"xyz");
    assert_eq!((t.proto(), t.header_len()), (proto::TCP, 20));
    let b = t.bytes();
    assert_eq!(b.len(), 23);
    assert_eq!(&b[..4], &[0, 1, 0, 2]);
    assert_eq!(b[12] >> 4, 5);

    let u = Transport::udp(53, 5353).payload(&[0; 5]).bytes();
    assert_eq!(u.len(), 13);
    assert_eq!(&u[..4], &[0, 53, 0x14, 0xe9]);
    assert_eq!(u16::from_be_bytes([u[4], u[5]]), 13);

    let s = Transport::sctp(7, 8);
    assert_eq!((s.proto(), s.header_len()), (proto::SCTP, 12));

    let i = Transport::icmp(8, 0).payload(b"ping").bytes();
    assert_eq!(i.len(), 12);
    assert_eq!(&i[..2], &[8, 0]);
    assert_eq!(checksum(&i), 0, "ICMP checksum must verify");

    let i6 = Transport::icmpv6(128, 0);
    assert_eq!((i6.proto(), i6.header_len()), (proto::ICMPV6, 8));

    let r = Transport::raw(proto::GRE, &[1, 2]);
    assert_eq!((r.proto(), r.header_len(), r.bytes()), (47, 0, vec![1, 2]));
}

#[test]
fn full_frame_and_helpers() {
    let l4 = Transport::udp(1000, 2000).payload(b"hello");
    let ip = Ipv4::new(A4, B4, l4.proto()).options(&[1, 1, 1, 1]);
    let f = Ethernet::new(ethertype::IPV4)
        .vlan(7)
        .build(&ip.build(&l4.bytes()));
    assert_eq!(f.len(), 18 + 24 + 8 + 5);
    assert_eq!(checksum(&f[18..42]), 0);
    let padded = pad(f.clone(), 60);
    assert_eq!(padded.len(), 60);
    assert_eq!(&padded[..f.len()], &f[..]);
    assert!(padded[f.len()..].iter().all(|b| *b == 0));
    assert_eq!(pad(padded.clone(), 10), padded);
    assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
}
