//! One-shot reachability probes from a lab's `b` namespace to addresses in
//! its `a` namespace: ping, a TCP echo and a UDP echo, each bounded to about a
//! second, so a dropped flow reads as `false` rather than a hang.
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use crate::lab::Lab;

/// One ping from b to `addr`; false if no reply within 1 s.
pub fn ping_ok(lab: &Lab, addr: IpAddr) -> bool {
    lab.b
        .command("ping")
        .args(["-c", "1", "-W", "1", "-q", &addr.to_string()])
        .output()
        .expect("run ping")
        .status
        .success()
}

/// One TCP echo from b to a; false if it does not complete within 1 s.
pub fn tcp_ok(lab: &Lab, addr: IpAddr) -> bool {
    let listener = lab
        .a
        .run(|| TcpListener::bind(SocketAddr::new(addr, 0)).unwrap());
    listener.set_nonblocking(false).unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            if let Ok((mut c, _)) = listener.accept() {
                c.set_nonblocking(false).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                let mut buf = [0u8; 16];
                if let Ok(n) = c.read(&mut buf) {
                    let _ = c.write_all(&buf[..n]);
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let ok = lab.b.run(|| {
        let Ok(mut c) =
            TcpStream::connect_timeout(&SocketAddr::new(addr, port), Duration::from_secs(1))
        else {
            return false;
        };
        c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; 16];
        c.write_all(b"ping").is_ok()
            && c.read(&mut buf)
                .map(|n| &buf[..n] == b"ping")
                .unwrap_or(false)
    });
    server.join().unwrap();
    ok
}

/// One UDP echo from b to a; false if no answer within 1 s.
pub fn udp_ok(lab: &Lab, addr: IpAddr) -> bool {
    let server = lab
        .a
        .run(|| UdpSocket::bind(SocketAddr::new(addr, 0)).unwrap());
    let port = server.local_addr().unwrap().port();
    let echo = std::thread::spawn(move || {
        server
            .set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        let mut buf = [0u8; 16];
        if let Ok((n, from)) = server.recv_from(&mut buf) {
            let _ = server.send_to(&buf[..n], from);
        }
    });
    let any: IpAddr = if addr.is_ipv4() {
        "0.0.0.0".parse().unwrap()
    } else {
        "::".parse().unwrap()
    };
    let ok = lab.b.run(|| {
        let c = UdpSocket::bind(SocketAddr::new(any, 0)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        c.send_to(b"ping", SocketAddr::new(addr, port)).unwrap();
        let mut buf = [0u8; 16];
        c.recv_from(&mut buf)
            .map(|(n, _)| &buf[..n] == b"ping")
            .unwrap_or(false)
    });
    echo.join().unwrap();
    ok
}

/// (ping, tcp, udp) reachability of `addr` from b.
pub fn reach(lab: &Lab, addr: IpAddr) -> (bool, bool, bool) {
    (ping_ok(lab, addr), tcp_ok(lab, addr), udp_ok(lab, addr))
}
