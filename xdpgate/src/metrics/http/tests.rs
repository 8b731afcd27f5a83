//! Tests of the metrics HTTP server over real loopback sockets: routes and
//! status codes, the head deadline, eviction and refusal when the slots are
//! taken, one gather for the requests that wait for it, shutdown.
use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpSocket,
};

use super::*;

/// A listener on 127.0.0.1, port chosen by the kernel.
fn listen() -> (SocketAddr, TcpListener) {
    let l = crate::sys::listen::tcp_listener(
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0),
        crate::sys::listen::ListenOptions::default(),
    )
    .unwrap();
    let addr = l.local_addr().unwrap();
    (addr, TcpListener::from_std(l).unwrap())
}

async fn start_with(
    gather: GatherFn,
    limits: Limits,
) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
    let (addr, l) = listen();
    let token = CancellationToken::new();
    let task = tokio::spawn(serve_with(vec![l], gather, token.clone(), limits));
    (addr, token, task)
}

async fn start(gather: GatherFn) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
    start_with(gather, Limits::DEFAULT).await
}

/// Connects to `addr` from 127.0.0.`from`.
async fn connect_from(addr: SocketAddr, from: u8) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(Ipv4Addr::new(127, 0, 0, from).into(), 0))
        .unwrap();
    s.connect(addr).await.unwrap()
}

/// Reads the whole answer (the server closes) within 5 s; a reset counts as
/// the end.
async fn answer(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("answer or close within 5 s");
    if let Err(e) = r {
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
    }
    String::from_utf8(out).unwrap()
}

/// Sends `request` raw and reads the whole answer.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    answer(&mut s).await
}

/// Lets the server run (accept, read heads) for a moment.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

fn fixed(body: &'static str) -> GatherFn {
    Arc::new(move || Ok(body.to_owned()))
}

/// The value of `xdpgate_metrics_connections_closed_total{reason}` in an
/// answer.
fn closed(answer: &str, reason: &str) -> u64 {
    let key = format!("xdpgate_metrics_connections_closed_total{{reason=\"{reason}\"}} ");
    let line = answer
        .lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .unwrap_or_else(|| panic!("no {key} in {answer}"));
    line.parse().unwrap()
}

#[tokio::test]
async fn http_routes_and_status_codes() {
    let (addr, token, task) = start(fixed("xdpgate_up 1\n")).await;

    let r = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(
        r.contains(&format!("\r\nContent-Type: {CONTENT_TYPE}\r\n")),
        "{r}"
    );
    assert!(r.contains("\r\nConnection: close\r\n"), "{r}");
    let (head, body) = r.split_once("\r\n\r\n").unwrap();
    assert!(
        head.contains(&format!("\r\nContent-Length: {}", body.len())),
        "{r}"
    );
    // The gathered exposition, then the server's own series, all at zero.
    assert!(body.starts_with("xdpgate_up 1\n# HELP "), "{r}");
    for why in Closed::ALL {
        assert_eq!(closed(body, why.name()), 0, "{r}");
    }

    let r = exchange(addr, b"GET /metrics?name[]=x HTTP/1.0\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");

    let r = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(
        r.contains(&format!("Content-Length: {}\r\n", body.len())) && r.ends_with("\r\n\r\n"),
        "{r}"
    );

    let r = exchange(addr, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(r.contains("href=\"/metrics\""), "{r}");

    let r = exchange(addr, b"GET /nope HTTP/1.1\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");

    let r = exchange(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{r}");
    assert!(r.contains("\r\nAllow: GET, HEAD\r\n"), "{r}");

    let r = exchange(addr, b"hello\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r}");

    let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
    while big.len() <= MAX_HEAD {
        big.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    big.extend_from_slice(b"\r\n");
    let r = exchange(addr, &big).await;
    assert!(
        r.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{r}"
    );

    token.cancel();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("serve returns after cancel")
        .unwrap();
}

#[tokio::test]
async fn gather_errors_and_panics_are_500() {
    let (addr, token, task) = start(Arc::new(|| Err("map XG_STATS: gone".into()))).await;
    let r = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert!(
        r.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
        "{r}"
    );
    assert!(
        r.ends_with("cannot gather metrics: map XG_STATS: gone\n"),
        "{r}"
    );
    token.cancel();
    task.await.unwrap();

    let (addr, token, task) = start(Arc::new(|| panic!("gatherer bug"))).await;
    let r = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert!(
        r.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
        "{r}"
    );
    token.cancel();
    task.await.unwrap();
}

/// A client that never finishes its head is disconnected after
/// HEAD_TIMEOUT (paused clock: no real wait), and counted.
#[tokio::test(start_paused = true)]
async fn slow_head_is_disconnected_after_the_time_limit() {
    let (addr, token, task) = start(fixed("x 1\n")).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut out = Vec::new();
    tokio::time::timeout(HEAD_TIMEOUT * 2, s.read_to_end(&mut out))
        .await
        .expect("closed within twice the time limit")
        .unwrap();
    assert!(out.is_empty(), "no answer to an incomplete head");
    assert!(t0.elapsed() >= HEAD_TIMEOUT, "{:?}", t0.elapsed());
    let r = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(closed(&r, "head_timeout"), 1, "{r}");
    token.cancel();
    task.await.unwrap();
}

/// The time limit is for the whole head: a byte every half second does not
/// extend it (paused clock).
#[tokio::test(start_paused = true)]
async fn a_head_sent_a_byte_at_a_time_is_cut_at_the_time_limit() {
    let (addr, token, task) = start(fixed("x 1\n")).await;
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let t0 = Instant::now();
    let dribble = tokio::spawn(async move {
        let head =
            b"GET /metrics HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        for b in head {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let mut out = Vec::new();
    let r = tokio::time::timeout(HEAD_TIMEOUT * 3, rd.read_to_end(&mut out))
        .await
        .expect("closed within three times the time limit");
    if let Err(e) = r {
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
    }
    let took = t0.elapsed();
    assert!(out.is_empty(), "no answer to a head that came too slowly");
    assert!(
        took >= HEAD_TIMEOUT && took < HEAD_TIMEOUT + Duration::from_secs(1),
        "closed after {took:?}"
    );
    dribble.abort();
    token.cancel();
    task.await.unwrap();
}

/// With every slot taken by connections that have not sent their head, a new
/// connection takes the slot of the one that has waited longest; the others
/// keep theirs and are answered when their heads complete (paused clock).
#[tokio::test(start_paused = true)]
async fn a_new_connection_evicts_the_one_that_waited_longest_for_its_head() {
    let limits = Limits {
        max_connections: 3,
        max_per_peer: 3,
        ..Limits::DEFAULT
    };
    let (addr, token, task) = start_with(fixed("x 1\n"), limits).await;
    // Three addresses, none at its share: the table is full.
    let mut slow = Vec::new();
    for from in 1..=3 {
        let mut s = connect_from(addr, from).await;
        s.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        slow.push(s);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut scrape = connect_from(addr, 5).await;
    scrape
        .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let r = answer(&mut scrape).await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert_eq!(closed(&r, "evicted"), 1, "{r}");
    drop(scrape);
    // The oldest was closed without an answer...
    assert_eq!(answer(&mut slow[0]).await, "");
    // ...the two newer ones still hold their slots.
    for s in &mut slow[1..] {
        s.write_all(b"\r\n").await.unwrap();
        let r = answer(s).await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    }
    token.cancel();
    task.await.unwrap();
}

/// A peer address at its share evicts its own oldest connection, not the
/// older connection of another address (paused clock).
#[tokio::test(start_paused = true)]
async fn a_peer_at_its_share_evicts_its_own_connection() {
    let limits = Limits {
        max_connections: 4,
        max_per_peer: 2,
        ..Limits::DEFAULT
    };
    let (addr, token, task) = start_with(fixed("x 1\n"), limits).await;
    let mut other = connect_from(addr, 3).await;
    other.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
    settle().await;
    let mut own = Vec::new();
    for _ in 0..3 {
        let mut s = connect_from(addr, 2).await;
        s.write_all(b"GET /met").await.unwrap();
        own.push(s);
        settle().await;
    }
    assert_eq!(
        answer(&mut own[0]).await,
        "",
        "the peer's oldest is evicted"
    );
    other.write_all(b"\r\n").await.unwrap();
    let r = answer(&mut other).await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert_eq!(closed(&r, "evicted"), 1, "{r}");
    token.cancel();
    task.await.unwrap();
}

/// A scrape whose request is already there when it is accepted is read
/// before the next connection is accepted: a burst of slow connections
/// queued behind it does not evict it before it had a turn (the server
/// starts with all of them waiting in the accept queue).
#[tokio::test(start_paused = true)]
async fn a_burst_of_newer_connections_does_not_evict_a_waiting_request() {
    let limits = Limits {
        max_connections: 4,
        max_per_peer: 4,
        ..Limits::DEFAULT
    };
    let (addr, l) = listen();
    let mut scrape = TcpStream::connect(addr).await.unwrap();
    scrape
        .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut slow = Vec::new();
    for _ in 0..12 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /met").await.unwrap();
        slow.push(s);
    }
    let token = CancellationToken::new();
    let task = tokio::spawn(serve_with(vec![l], fixed("x 1\n"), token.clone(), limits));
    let r = answer(&mut scrape).await;
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    token.cancel();
    task.await.unwrap();
}

/// A gather that blocks until told, counting its calls.
fn gated() -> (GatherFn, mpsc::Sender<()>, Arc<AtomicUsize>) {
    let (tx, rx) = mpsc::channel::<()>();
    let rx = Mutex::new(rx);
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let gather: GatherFn = Arc::new(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        let rx = rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| "not released".to_owned())?;
        Ok("x 1\n".to_owned())
    });
    (gather, tx, calls)
}

/// Connections being answered are never evicted: with every slot answering,
/// a new connection is refused (closed at once, counted), and both answers
/// arrive once the gather returns.
#[tokio::test]
async fn connections_being_answered_are_never_evicted() {
    let (gather, release, _) = gated();
    let limits = Limits {
        max_connections: 2,
        max_per_peer: 2,
        ..Limits::DEFAULT
    };
    let (addr, token, task) = start_with(gather, limits).await;
    let mut answering = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from(addr, 1).await;
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
        answering.push(s);
        settle().await;
    }
    let mut refused = connect_from(addr, 4).await;
    assert_eq!(answer(&mut refused).await, "", "refused without an answer");
    for _ in 0..2 {
        release.send(()).unwrap();
    }
    for s in &mut answering {
        let r = answer(s).await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert_eq!(closed(&r, "refused"), 1, "{r}");
        assert_eq!(closed(&r, "evicted"), 0, "{r}");
    }
    token.cancel();
    task.await.unwrap();
}

/// Requests that arrive while a gather runs share the next gather: five
/// scrapes, two gathers.
#[tokio::test]
async fn requests_waiting_for_a_gather_share_the_next_one() {
    let (gather, release, calls) = gated();
    let (addr, token, task) = start(gather).await;
    let mut scrapes = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
        scrapes.push(s);
        settle().await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one gather at a time");
    release.send(()).unwrap();
    release.send(()).unwrap();
    for s in &mut scrapes {
        let r = answer(s).await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("\r\n\r\nx 1\n"), "{r}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    token.cancel();
    task.await.unwrap();
}

/// Cancelling returns at once although a client holds a connection open
/// (and the clock is real: no paused-time shortcut).
#[tokio::test]
async fn stuck_client_does_not_delay_shutdown() {
    let (addr, token, task) = start(fixed("x 1\n")).await;
    let mut stuck = TcpStream::connect(addr).await.unwrap();
    stuck.write_all(b"GET /met").await.unwrap();
    // Let the server accept it and start reading.
    let r = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    let t0 = std::time::Instant::now();
    token.cancel();
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .expect("serve returns within 1 s of cancel")
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(1));
    // The stuck connection was closed without an answer.
    assert_eq!(answer(&mut stuck).await, "");
}

#[test]
fn the_log_line_counts_each_reason_and_names_the_metric() {
    let line = closed_line([3, 40, 1, 0], &Limits::DEFAULT);
    assert!(line.contains("closed 44 connections early"), "{line}");
    assert!(line.contains("40 evicted"), "{line}");
    assert!(
        line.contains("3 without a complete request within 3 s"),
        "{line}"
    );
    assert!(line.contains("1 refused"), "{line}");
    assert!(line.contains("at most every 60 s"), "{line}");
    let one = closed_line([0, 1, 0, 0], &Limits::DEFAULT);
    assert!(one.contains("closed 1 connection early"), "{one}");
    assert!(
        line.contains("xdpgate_metrics_connections_closed_total"),
        "{line}"
    );
}

/// The metric's help text states the time limits the server applies.
#[test]
fn the_help_text_states_the_time_limits() {
    let text = render_server(&[("evicted", 0)]);
    assert!(
        text.contains(&format!(
            "within {} s of connecting",
            HEAD_TIMEOUT.as_secs()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("within {} s)", WRITE_TIMEOUT.as_secs())),
        "{text}"
    );
}

#[test]
fn request_line_parsing() {
    fn p(s: &str) -> Option<RequestLine<'_>> {
        parse_request_line(s.as_bytes())
    }
    assert_eq!(
        p("GET /metrics?x=1 HTTP/1.1\r\n"),
        Some(RequestLine {
            method: "GET",
            path: "/metrics"
        })
    );
    assert_eq!(p("GET /metrics HTTP/2\r\n"), None);
    assert_eq!(p("GET /metrics\r\n"), None);
    assert_eq!(p("get /metrics HTTP/1.1\r\n"), None);
    assert_eq!(p("GET  /metrics HTTP/1.1\r\n"), None);
    assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest", 0), Some(18));
    assert_eq!(head_end(b"GET / HTTP/1.0\n\n", 0), Some(16));
    assert_eq!(head_end(b"GET / HTTP/1.0\r\n", 0), None);
}
