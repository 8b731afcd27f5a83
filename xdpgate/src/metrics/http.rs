//! A small HTTP/1.1 server for `GET /metrics`: bounded request heads, time
//! limits on reading and writing, a cap on connections, and every
//! connection cancelled at shutdown.
use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::CONTENT_TYPE;

/// Most bytes of a request head (request line and headers); more is answered
/// with 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request head; then the connection
/// is closed without an answer.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long writing a response may take.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections served at once; further connections are closed at once.
pub const MAX_CONNECTIONS: usize = 64;

/// A gather-and-render function for [`serve`]: the rendered exposition, or
/// a message for a 500 answer. It runs on tokio's blocking pool, so it may
/// take a lock.
pub type GatherFn = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// Serves `GET /metrics` (the output of `gather`) and `GET /` (a pointer to
/// `/metrics`) on every listener until `token` is cancelled, then waits for
/// its accept loops and connection tasks, all of which observe the token, and
/// returns. HEAD is answered like GET without a body; other methods get 405,
/// other paths 404, a head over [`MAX_HEAD`] 431; a client that does not send
/// its head within [`HEAD_TIMEOUT`] is disconnected. One request per
/// connection (`Connection: close`).
pub async fn serve(listeners: Vec<TcpListener>, gather: GatherFn, token: CancellationToken) {
    let tracker = TaskTracker::new();
    let active = Arc::new(AtomicUsize::new(0));
    for listener in listeners {
        tracker.spawn(accept_loop(
            listener,
            gather.clone(),
            token.clone(),
            tracker.clone(),
            active.clone(),
        ));
    }
    tracker.close();
    tracker.wait().await;
}

/// Decrements the active-connection count when a connection task ends.
struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn accept_loop(
    listener: TcpListener,
    gather: GatherFn,
    token: CancellationToken,
    tracker: TaskTracker,
    active: Arc<AtomicUsize>,
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
        if active.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::Relaxed);
            log::debug!(
                "metrics listener {local}: {peer} refused, {MAX_CONNECTIONS} connections busy"
            );
            continue;
        }
        let guard = Active(active.clone());
        let (gather, token) = (gather.clone(), token.clone());
        tracker.spawn(async move {
            let _guard = guard;
            tokio::select! {
                _ = token.cancelled() => {}
                r = connection(stream, gather) => {
                    if let Err(e) = r {
                        log::debug!("metrics connection from {peer}: {e}");
                    }
                }
            }
        });
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

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    extra: &'static str,
    body: String,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: String) -> Self {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            extra: "",
            body,
        }
    }
}

async fn connection(mut stream: TcpStream, gather: GatherFn) -> io::Result<()> {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream)).await {
        Err(_) => return Ok(()), // too slow: close without an answer
        Ok(head) => head?,
    };
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
            Some(req) => (route(&req, &gather).await, req.method == "HEAD"),
        },
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
        response.status,
        response.reason,
        response.content_type,
        response.body.len(),
        response.extra,
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(response.body.as_bytes());
    }
    let write = async {
        stream.write_all(&out).await?;
        stream.shutdown().await?;
        // Read what the client still sends (bounded), so closing with unread
        // data does not reset the connection before it read the answer.
        let mut sink = [0u8; 1024];
        let mut left = 64 * 1024usize;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
        io::Result::Ok(())
    };
    match tokio::time::timeout(WRITE_TIMEOUT, write).await {
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "response not taken within the write timeout",
        )),
        Ok(r) => r,
    }
}

async fn route(req: &RequestLine<'_>, gather: &GatherFn) -> Response {
    if req.method != "GET" && req.method != "HEAD" {
        return Response {
            extra: "Allow: GET, HEAD\r\n",
            ..Response::text(405, "Method Not Allowed", "only GET and HEAD\n".into())
        };
    }
    match req.path {
        "/metrics" => {
            let g = gather.clone();
            match tokio::task::spawn_blocking(move || g()).await {
                Ok(Ok(body)) => Response {
                    content_type: CONTENT_TYPE,
                    ..Response::text(200, "OK", body)
                },
                Ok(Err(e)) => {
                    log::warn!("metrics: {e}");
                    Response::text(
                        500,
                        "Internal Server Error",
                        format!("cannot gather metrics: {e}\n"),
                    )
                }
                Err(e) => {
                    log::warn!("metrics: gathering failed: {e}");
                    Response::text(
                        500,
                        "Internal Server Error",
                        "cannot gather metrics: the gatherer failed\n".into(),
                    )
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    async fn start(
        gather: GatherFn,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let l = crate::sys::listen::tcp_listener(
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0),
            crate::sys::listen::ListenOptions::default(),
        )
        .unwrap();
        let addr = l.local_addr().unwrap();
        let l = TcpListener::from_std(l).unwrap();
        let token = CancellationToken::new();
        let task = tokio::spawn(serve(vec![l], gather, token.clone()));
        (addr, token, task)
    }

    /// Sends `request` raw and reads the whole answer (the server closes).
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("answer within 5 s")
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    fn fixed(body: &'static str) -> GatherFn {
        Arc::new(move || Ok(body.to_owned()))
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
        assert!(r.contains("\r\nContent-Length: 13\r\n"), "{r}");
        assert!(r.contains("\r\nConnection: close\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\nxdpgate_up 1\n"), "{r}");

        let r = exchange(addr, b"GET /metrics?name[]=x HTTP/1.0\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");

        let r = exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(
            r.contains("Content-Length: 13\r\n") && r.ends_with("\r\n\r\n"),
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
            big.extend_from_slice(
                b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
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
    /// HEAD_TIMEOUT (paused clock: no real wait).
    #[tokio::test(start_paused = true)]
    async fn slow_head_is_disconnected_after_the_time_limit() {
        let (addr, token, task) = start(fixed("x 1\n")).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let t0 = tokio::time::Instant::now();
        let mut out = Vec::new();
        tokio::time::timeout(HEAD_TIMEOUT * 2, s.read_to_end(&mut out))
            .await
            .expect("closed within twice the time limit")
            .unwrap();
        assert!(out.is_empty(), "no answer to an incomplete head");
        assert!(t0.elapsed() >= HEAD_TIMEOUT, "{:?}", t0.elapsed());
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
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(1), stuck.read_to_end(&mut out))
            .await
            .expect("stuck connection closed")
            .unwrap();
        assert!(out.is_empty());
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
}
