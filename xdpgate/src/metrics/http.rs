//! A small HTTP/1.1 server for `GET /metrics`, built to keep answering
//! scrapes while clients try to starve it (slowloris): bounded request heads,
//! a deadline for the whole head, a table of connection slots in which a new
//! connection evicts the one that has waited longest on its client, a share
//! per peer address, and every connection cancelled at shutdown.
//!
//! # Why not hyper
//!
//! hyper (with `header_read_timeout`) would bound how long one connection
//! may take to send its head, which this server does as well
//! ([`HEAD_TIMEOUT`], for the whole head, not per read). It does not decide
//! which connections to accept: a client that reconnects as fast as it can
//! keeps every slot taken with connections that are each within their time
//! limit, and scrapes are then refused whatever the head timeout is. The
//! defence against that is the accept policy (`http/slots.rs`), which we
//! would have to write around hyper as well: a new connection is never
//! refused for want of a slot while some connection is still waiting for
//! its request head; the one that has waited longest gives up its slot. A
//! real scraper's request arrives microseconds after its connection, so it
//! is answered before newer connections push it out (the accept loop yields
//! after each accept, so a new connection reads its head before the next is
//! accepted); a slowloris client only ever holds slots until newer
//! connections arrive, and with [`MAX_PER_PEER`] a client on one address
//! only ever evicts its own connections. The protocol surface is one GET
//! per connection, so the parser stays small, and the daemon gains no
//! dependency.
//!
//! Measured (`tests/tests/metrics.rs`, debug build, 2 shared cores): slow
//! clients on four addresses, one of them the scraper's, opening 190,000 to
//! 336,000 connections in 15-18 s; 60 of 60 scrapes answered in each of
//! nine runs, the slowest within 170 ms. The server this replaced (64
//! connections, others refused, 10 s per head) answered 0 and 1 of 60.
//!
//! Limits: a connection being answered is never evicted, so a client that
//! sends whole requests and then reads its answers slowly holds its slots
//! for up to [`WRITE_TIMEOUT`]; [`MAX_PER_PEER`] leaves the other half of
//! the slots to other addresses (refused connections are counted). A slow
//! client can still evict a scraper whose request comes later than
//! [`MAX_PER_PEER`] newer connections from the scraper's address, or
//! [`MAX_CONNECTIONS`] from anywhere, take to arrive.
//!
//! Connections closed early are counted
//! (`xdpgate_metrics_connections_closed_total`, appended to every
//! exposition) and summarized in the log at most once per [`LOG_INTERVAL`],
//! never a line per connection.
//!
//! Gathering runs on tokio's blocking pool, one gather at a time: requests
//! that arrive while a gather runs wait for the next one, which answers all
//! of them, so a flood of complete requests costs at most one gather at a
//! time and never blocks the runtime thread.
use std::{io, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use self::slots::{Closed, Slot, Slots};
use super::{CONTENT_TYPE, render::render_server};

mod slots;
#[cfg(test)]
mod tests;

/// Most bytes of a request head (request line and headers); more is answered
/// with 431. Room for a long `Authorization` header, small enough that
/// [`MAX_CONNECTIONS`] heads take 1 MiB.
pub const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take, from its connection, to send its whole
/// request head; then the connection is closed without an answer.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(3);
/// How long writing a response may take.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long, after its answer, the server waits for a client to close
/// before closing itself (the connection may be evicted meanwhile).
pub const LINGER: Duration = Duration::from_secs(2);
/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 128;
/// Most connections from one address: half of [`MAX_CONNECTIONS`], so one
/// address never takes the slots of every other.
pub const MAX_PER_PEER: usize = MAX_CONNECTIONS / 2;
/// Connections closed early are logged at most once per interval.
pub const LOG_INTERVAL: Duration = Duration::from_secs(60);

/// A gather-and-render function for [`serve`]: the rendered exposition, or
/// a message for a 500 answer. It runs on tokio's blocking pool, so it may
/// take a lock.
pub type GatherFn = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// The server's limits; [`Limits::DEFAULT`] from the constants above, other
/// values in tests.
#[derive(Clone, Copy, Debug)]
struct Limits {
    max_connections: usize,
    max_per_peer: usize,
    head_timeout: Duration,
    write_timeout: Duration,
    linger: Duration,
    log_interval: Duration,
}

impl Limits {
    const DEFAULT: Limits = Limits {
        max_connections: MAX_CONNECTIONS,
        max_per_peer: MAX_PER_PEER,
        head_timeout: HEAD_TIMEOUT,
        write_timeout: WRITE_TIMEOUT,
        linger: LINGER,
        log_interval: LOG_INTERVAL,
    };
}

/// Serves `GET /metrics` (the output of `gather`, followed by the server's
/// own series) and `GET /` (a pointer to `/metrics`) on every listener until
/// `token` is cancelled, then waits for its accept loops and connection
/// tasks, all of which observe the token, and returns. HEAD is answered like
/// GET without a body; other methods get 405, other paths 404, a head over
/// [`MAX_HEAD`] 431; a client that does not send its head within
/// [`HEAD_TIMEOUT`] is disconnected. One request per connection
/// (`Connection: close`). See the module documentation for the connection
/// slots.
pub async fn serve(listeners: Vec<TcpListener>, gather: GatherFn, token: CancellationToken) {
    serve_with(listeners, gather, token, Limits::DEFAULT).await;
}

/// What every connection task shares.
struct Shared {
    gather: GatherFn,
    slots: Arc<Slots>,
    limits: Limits,
    /// The last gather: when it started and what it returned.
    last: tokio::sync::Mutex<Option<(Instant, Gathered)>>,
}

type Gathered = Result<Arc<String>, String>;

async fn serve_with(
    listeners: Vec<TcpListener>,
    gather: GatherFn,
    token: CancellationToken,
    limits: Limits,
) {
    let shared = Arc::new(Shared {
        gather,
        slots: Slots::new(limits.max_connections, limits.max_per_peer),
        limits,
        last: tokio::sync::Mutex::new(None),
    });
    let tracker = TaskTracker::new();
    tracker.spawn(report_closed(shared.clone(), token.clone()));
    for listener in listeners {
        tracker.spawn(accept_loop(
            listener,
            shared.clone(),
            token.clone(),
            tracker.clone(),
        ));
    }
    tracker.close();
    tracker.wait().await;
}

/// Logs the connections closed early: the first at once, then at most one
/// line per [`Limits::log_interval`] with the counts since the last line,
/// and what is left at shutdown.
async fn report_closed(shared: Arc<Shared>, token: CancellationToken) {
    let closed = &shared.slots.closed;
    let mut logged = [0u64; 4];
    loop {
        let stop = tokio::select! {
            _ = token.cancelled() => true,
            _ = closed.changed() => false,
        };
        let now = closed.get();
        if now != logged {
            let since: [u64; 4] = std::array::from_fn(|i| now[i] - logged[i]);
            log::warn!("{}", closed_line(since, &shared.limits));
            logged = now;
        }
        if stop {
            return;
        }
        tokio::select! {
            _ = token.cancelled() => {}
            _ = tokio::time::sleep(shared.limits.log_interval) => {}
        }
    }
}

/// The log line for connections closed early (`counts` in the order of
/// [`Closed::ALL`]).
fn closed_line(counts: [u64; 4], limits: &Limits) -> String {
    let [head, evicted, refused, write] = counts;
    let total: u64 = counts.iter().sum();
    format!(
        "metrics endpoint: closed {total} connection{} early since the last report \
         ({evicted} evicted for newer connections, {head} without a complete request \
         within {} s, {refused} refused with every slot answering, {write} not taking \
         their answer within {} s); a client may be holding connections open \
         (reported at most every {} s; see xdpgate_metrics_connections_closed_total)",
        if total == 1 { "" } else { "s" },
        limits.head_timeout.as_secs_f64(),
        limits.write_timeout.as_secs_f64(),
        limits.log_interval.as_secs_f64(),
    )
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    token: CancellationToken,
    tracker: TaskTracker,
) {
    let local = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    loop {
        let accepted = tokio::select! {
            _ = token.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::warn!("metrics listener {local}: accept: {e}");
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        // Refused (counted): closed at once.
        let Some(slot) = shared.slots.admit(peer.ip()) else {
            continue;
        };
        let (shared, token) = (shared.clone(), token.clone());
        tracker.spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = slot.evicted().cancelled() => {}
                r = connection(stream, &slot, &shared) => {
                    if let Err(e) = r {
                        log::debug!("metrics connection from {peer}: {e}");
                    }
                }
            }
        });
        // Let the new connection read its head before the next accept, so a
        // flood of connections cannot evict it before it had a turn.
        tokio::task::yield_now().await;
    }
}

/// A parsed request line.
#[derive(Debug, PartialEq, Eq)]
struct RequestLine<'a> {
    method: &'a str,
    path: &'a str,
}

enum Head {
    Complete(Vec<u8>),
    TooLarge,
    Closed,
}

/// Reads until the blank line that ends the head, at most [`MAX_HEAD`] bytes.
async fn read_head(stream: &mut TcpStream) -> io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf, from) {
            buf.truncate(end);
            return Ok(Head::Complete(buf));
        }
        if buf.len() >= MAX_HEAD {
            return Ok(Head::TooLarge);
        }
    }
}

/// End of the head (after its blank line) if `buf` holds one; the search
/// starts at `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let tail = &buf[from..];
    if let Some(i) = tail.windows(4).position(|w| w == b"\r\n\r\n") {
        return Some(from + i + 4);
    }
    tail.windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| from + i + 2)
}

fn parse_request_line(head: &[u8]) -> Option<RequestLine<'_>> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !version.starts_with("HTTP/1.")
    {
        return None;
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Some(RequestLine { method, path })
}

const INDEX: &str = "<!DOCTYPE html>\n<html><head><title>xdpgate</title></head><body>\n\
<h1>xdpgate</h1>\n<p>Prometheus metrics: <a href=\"/metrics\">/metrics</a></p>\n</body></html>\n";

/// An answer. The body of a 200 for `/metrics` is the gathered exposition
/// (shared by the requests one gather answers) and the server's own series.
struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    extra: &'static str,
    body: Arc<String>,
    suffix: String,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: String) -> Self {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            extra: "",
            body: Arc::new(body),
            suffix: String::new(),
        }
    }
}

async fn connection(mut stream: TcpStream, slot: &Slot, shared: &Shared) -> io::Result<()> {
    let limits = &shared.limits;
    let head = match tokio::time::timeout(limits.head_timeout, read_head(&mut stream)).await {
        Err(_) => {
            // Too slow: close without an answer.
            shared.slots.closed.add(Closed::HeadTimeout);
            return Ok(());
        }
        Ok(head) => head?,
    };
    if !slot.answering() {
        return Ok(()); // evicted while the head completed
    }
    let asked = Instant::now();
    let (response, head_only) = match head {
        Head::Closed => return Ok(()),
        Head::TooLarge => (
            Response::text(
                431,
                "Request Header Fields Too Large",
                format!("request head over {MAX_HEAD} bytes\n"),
            ),
            false,
        ),
        Head::Complete(head) => match parse_request_line(&head) {
            None => (
                Response::text(400, "Bad Request", "malformed request line\n".into()),
                false,
            ),
            Some(req) => (route(&req, shared, asked).await, req.method == "HEAD"),
        },
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
        response.status,
        response.reason,
        response.content_type,
        response.body.len() + response.suffix.len(),
        response.extra,
    );
    // Three writes: no Nagle delay between them.
    stream.set_nodelay(true)?;
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        if !head_only {
            stream.write_all(response.body.as_bytes()).await?;
            stream.write_all(response.suffix.as_bytes()).await?;
        }
        stream.shutdown().await
    };
    match tokio::time::timeout(limits.write_timeout, write).await {
        Err(_) => {
            shared.slots.closed.add(Closed::WriteTimeout);
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "response not taken within the write timeout",
            ));
        }
        Ok(r) => r?,
    }
    slot.lingering();
    // Read what the client still sends (bounded), so closing with unread
    // data does not reset the connection before it read the answer.
    let drain = async {
        let mut sink = [0u8; 1024];
        let mut left = 64 * 1024usize;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(limits.linger, drain).await;
    Ok(())
}

async fn route(req: &RequestLine<'_>, shared: &Shared, asked: Instant) -> Response {
    if req.method != "GET" && req.method != "HEAD" {
        return Response {
            extra: "Allow: GET, HEAD\r\n",
            ..Response::text(405, "Method Not Allowed", "only GET and HEAD\n".into())
        };
    }
    match req.path {
        "/metrics" => match gather(shared, asked).await {
            Ok(body) => {
                let closed = shared.slots.closed.get();
                let counts: Vec<(&str, u64)> = Closed::ALL
                    .iter()
                    .zip(closed)
                    .map(|(why, n)| (why.name(), n))
                    .collect();
                Response {
                    content_type: CONTENT_TYPE,
                    body,
                    suffix: render_server(&counts),
                    ..Response::text(200, "OK", String::new())
                }
            }
            Err(message) => Response::text(500, "Internal Server Error", message),
        },
        "/" => Response {
            content_type: "text/html; charset=utf-8",
            ..Response::text(200, "OK", INDEX.into())
        },
        _ => Response::text(
            404,
            "Not Found",
            "not found; metrics are at /metrics\n".into(),
        ),
    }
}

/// The exposition for a request that arrived at `asked`: from a gather
/// that started after it, if one did (it ran while this request waited for
/// its turn), else from a new one. One gather at a time.
async fn gather(shared: &Shared, asked: Instant) -> Gathered {
    let mut last = shared.last.lock().await;
    if let Some((started, gathered)) = last.as_ref()
        && *started >= asked
    {
        return gathered.clone();
    }
    let started = Instant::now();
    let g = shared.gather.clone();
    let gathered = match tokio::task::spawn_blocking(move || g()).await {
        Ok(Ok(body)) => Ok(Arc::new(body)),
        Ok(Err(e)) => {
            log::warn!("metrics: {e}");
            Err(format!("cannot gather metrics: {e}\n"))
        }
        Err(e) => {
            log::warn!("metrics: gathering failed: {e}");
            Err("cannot gather metrics: the gatherer failed\n".into())
        }
    };
    *last = Some((started, gathered.clone()));
    gathered
}
