//! What an adopting start takes away: bindings no one makes, decapsulation
//! turned off.
use std::{net::UdpSocket, time::Duration};

use xdpgate_tests::{
    lab::{Lab, serial},
    xdpgate::{Daemon, StateDirs},
};

fn pings(lab: &Lab, addr: &str) -> bool {
    lab.b.exec("ping", &["-c", "1", "-W", "1", addr]).is_ok()
}

#[test]
fn a_restart_that_lost_its_state_file_drops_what_no_binding_makes() {
    // The earlier daemon bound 10.200.124.50 with drop_unbound on and died;
    // its state file is gone and the configuration no longer binds it. The
    // address stays on the interface (xdpgate no longer knows it added it),
    // but the gate must not let it through as bound.
    let _g = serial();
    let lab = Lab::new("lcbind", 124).expect("lab");
    let iface = lab.a_end.ifname.clone();
    let own = lab.a_end.ipv4.to_string();
    let dir = std::env::temp_dir().join(format!("xdpgate-lcbind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("xdpgate.toml");
    let write = |extra: &str| {
        std::fs::write(
            &config,
            format!(
                "[[interface]]\nname = \"{iface}\"\ndrop_unbound = true\n\n\
                 [[bind]]\niface = \"{iface}\"\nspec = \"{own}\"\n{extra}"
            ),
        )
        .unwrap();
    };
    write(&format!(
        "\n[[bind]]\niface = \"{iface}\"\nspec = \"10.200.124.50\"\n"
    ));
    let args = [
        "--config".as_ref(),
        config.as_os_str(),
        "--no-metrics".as_ref(),
    ];
    let d = Daemon::start_in(&lab.a, StateDirs::unique("lcbind"), &[], "", &args).expect("start");
    assert!(pings(&lab, "10.200.124.50"), "bound: passes");
    let (_, dirs) = d.stop_keeping_state(libc::SIGKILL);
    std::fs::remove_file(&dirs.state_file).unwrap();
    write("");
    let d = Daemon::start_in(&lab.a, dirs, &[], "", &args).expect("restart");
    assert!(d.log().contains("adopting the datapath"), "{}", d.log());
    assert!(
        lab.a
            .exec("ip", &["-o", "addr", "show", "dev", &iface])
            .unwrap()
            .contains("10.200.124.50"),
        "the address stays on the interface"
    );
    assert!(!pings(&lab, "10.200.124.50"), "no longer bound: dropped");
    assert!(pings(&lab, &own), "still bound: passes");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends `inner` (an IPv4 packet) from `b` inside IPIP to `dst`, through a
/// raw socket (the kernel writes the outer header).
fn send_ipip(lab: &Lab, dst: std::net::Ipv4Addr, inner: &[u8]) {
    lab.b.run(|| {
        // SAFETY: plain socket(2); the descriptor is owned below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_IPIP) };
        assert!(
            fd >= 0,
            "raw IPIP socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is a fresh descriptor we own from here on.
        let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(dst.octets()),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: inner and addr outlive the call; the lengths are theirs.
        let rc = unsafe {
            libc::sendto(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                inner.as_ptr().cast(),
                inner.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_eq!(
            rc,
            inner.len() as isize,
            "sendto: {}",
            std::io::Error::last_os_error()
        );
    });
}

#[test]
fn a_restart_that_turns_decapsulation_off_decapsulates_nothing_more() {
    use xdpgate_tests::packet::{Ipv4, Transport};
    let _g = serial();
    let lab = Lab::new("lcdecap", 125).expect("lab");
    let iface = lab.a_end.ifname.clone();
    let (a, b) = (lab.a_end.ipv4, lab.b_end.ipv4);
    let sock = lab.a.run(|| {
        let s = UdpSocket::bind("0.0.0.0:7100").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s
    });
    let inner = Ipv4::new(b.octets(), a.octets(), 17)
        .build(&Transport::udp(7101, 7100).payload(b"inner").bytes());
    let received = || {
        send_ipip(&lab, a, &inner);
        let mut buf = [0u8; 64];
        matches!(sock.recv_from(&mut buf), Ok((5, _)))
    };
    let no_metrics = ["--no-metrics".as_ref()];
    let decap = ["--decap".as_ref(), "--no-metrics".as_ref()];
    let d = Daemon::start_in(
        &lab.a,
        StateDirs::unique("lcdecap"),
        &[&iface],
        "native",
        &decap,
    )
    .expect("start");
    assert!(
        received(),
        "decapsulated in XDP, the inner datagram arrives"
    );
    let (_, dirs) = d.stop_keeping_state(libc::SIGKILL);
    assert!(received(), "and without a daemon, as configured");
    let d = Daemon::start_in(&lab.a, dirs, &[&iface], "native", &no_metrics).expect("restart");
    assert!(d.log().contains("adopting the datapath"), "{}", d.log());
    assert!(
        !received(),
        "decapsulation is off: the tunnel packet is not opened"
    );
}
