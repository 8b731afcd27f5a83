//! The API's server: the root-only socket, one task per connection (at most
//! a cap of them, see [`super::limits`]), each request bounded in size and
//! in how long it may take to arrive, its bytes counted against a budget
//! shared by every connection, and executed on a blocking thread by a
//! [`Handler`] (the daemon), so that no request ever holds the runtime.
use std::{
    collections::VecDeque,
    io::Read,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    limits::{AcceptBackoff, Budget, Held, Slot, Slots},
    protocol::{MAX_BUFFERED, MAX_REQUEST, REQUEST_TIMEOUT, Request, Response},
};
use crate::cancel::Work;
use thiserror::Error;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream, unix::OwnedReadHalf},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use xdpgate_model::fsafe::{FsafeError, SafeDir};

/// What executes requests: the daemon implements it (`daemon::shared`), so
/// the server knows the protocol and the transport, not the daemon.
pub trait Handler: Send + Sync + 'static {
    /// Executes one request, on a blocking thread (a change may take
    /// seconds); the response carries the answer, or the errors and whether
    /// the caller was at fault. A long change calls the cancellation points
    /// of `work` (`crate::cancel`): it stops there, undone, when the daemon
    /// shuts down or the client goes away. With the response, what is left
    /// for after it ([`AfterAnswer`]).
    fn execute(&self, req: Request, work: &Arc<Work>) -> (Response, Option<AfterAnswer>);
}

/// Work a handler leaves until its answer is written: run on a blocking
/// thread once the answer is written, or could not be (the client went
/// away), so that it does not compete with the answer for the cores.
pub type AfterAnswer = Box<dyn FnOnce() + Send + 'static>;

/// Why the server refused a request before any handler saw it. The
/// handler's own refusals say themselves whether the caller is at fault
/// (for the daemon: `DaemonError::is_invalid_input`).
#[derive(Debug, Error)]
pub enum ServerError {
    /// The request did not arrive in time (the connection is closed).
    #[error("request not received within {REQUEST_TIMEOUT:?}")]
    Timeout,
    /// The request is larger than [`MAX_REQUEST`] (the connection is closed).
    #[error("request larger than {} MiB", MAX_REQUEST >> 20)]
    TooLarge,
    /// Requests still arriving hold the whole budget for them (the
    /// connection is closed).
    #[error("the daemon is receiving too many large requests at once (more than {} MiB together); retry later", MAX_BUFFERED >> 20)]
    Busy,
    /// The request is not a request.
    #[error("bad request: {0}")]
    BadRequest(#[source] serde_json::Error),
    /// The request's task failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServerError {
    /// Whether the request was at fault.
    pub fn is_invalid_input(&self) -> bool {
        match self {
            ServerError::TooLarge | ServerError::BadRequest(_) => true,
            ServerError::Timeout | ServerError::Busy | ServerError::Internal(_) => false,
        }
    }

    /// Whether the connection ends after this answer.
    fn ends_connection(&self) -> bool {
        matches!(
            self,
            ServerError::Timeout | ServerError::TooLarge | ServerError::Busy
        )
    }
}

impl From<ServerError> for Response {
    fn from(e: ServerError) -> Self {
        Response::refused(vec![e.to_string()], e.is_invalid_input())
    }
}

/// Errors of setting up the socket.
#[derive(Debug, Error)]
pub enum ApiError {
    /// The socket's directory or an existing socket belongs to another user,
    /// or others may write to the directory.
    #[error("refusing to serve the API at {path}: {why}")]
    Unsafe {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// Filesystem or socket failure.
    #[error("{what} {path}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Binds the API socket at `path` (mode 0600), replacing a stale one (the
/// caller holds the daemon lock, so an existing socket is stale). Its
/// directory must pass [`SafeDir::check`] (owned by root, writable by no
/// one else, no symbolic link).
pub fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    let io = |what, source| ApiError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    use std::os::unix::fs::MetadataExt as _;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if let Some(dir) = path.parent() {
        SafeDir::check(dir).map_err(|e| match e {
            FsafeError::Io { what, source, .. } => ApiError::Io {
                what,
                path: dir.to_path_buf(),
                source,
            },
            e @ FsafeError::Unsafe { .. } => ApiError::Unsafe {
                path: path.to_path_buf(),
                why: e.to_string(),
            },
        })?;
    }
    if let Ok(md) = std::fs::symlink_metadata(path)
        && md.uid() != me
    {
        return Err(ApiError::Unsafe {
            path: path.to_path_buf(),
            why: format!(
                "it exists and is owned by uid {}, not by uid {me}",
                md.uid()
            ),
        });
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("cannot remove stale socket", e)),
    }
    let listener = UnixListener::bind(path).map_err(|e| io("cannot bind", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io("cannot chmod", e))?;
    Ok(listener)
}

/// Serves connections until `token` is cancelled, at most `max_connections`
/// at once. Every connection task observes the token (an idle connection or
/// a request still arriving is closed; a request running is answered), and
/// so does every change (at its cancellation points), so shutdown never
/// waits for a stuck client or a long change.
pub async fn serve<H: Handler>(
    listener: UnixListener,
    handler: Arc<H>,
    max_connections: usize,
    token: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let slots = Slots::new(max_connections);
    let budget = Budget::new(MAX_BUFFERED);
    let mut backoff = AcceptBackoff::new();
    let mut pressure = Pressure::default();
    loop {
        let stream = tokio::select! {
            _ = token.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    backoff.succeeded();
                    s
                }
                Err(e) => {
                    let pause = backoff.failed(&e, Instant::now());
                    tokio::select! {
                        _ = token.cancelled() => break,
                        () = tokio::time::sleep(pause) => continue,
                    }
                }
            },
        };
        let admitted = slots.admit(Instant::now());
        pressure.report(&slots, Instant::now());
        let Some(slot) = admitted else {
            tracker.spawn(refuse(stream, slots.cap()));
            continue;
        };
        let (handler, budget) = (handler.clone(), budget.clone());
        let token = token.child_token();
        tracker.spawn(async move {
            if let Err(e) = connection(stream, handler, slot, budget, token).await {
                log::debug!("api connection: {e}");
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// Logs, at most once per interval, how many connections were refused or
/// closed to make room since the last report.
#[derive(Debug, Default)]
struct Pressure {
    last: Option<Instant>,
    reported: (u64, u64),
}

impl Pressure {
    const INTERVAL: Duration = Duration::from_secs(10);

    fn report(&mut self, slots: &Slots, now: Instant) {
        let (_, evicted, refused) = slots.counts();
        let (e0, r0) = self.reported;
        if (evicted, refused) == (e0, r0)
            || self
                .last
                .is_some_and(|t| now.saturating_duration_since(t) < Self::INTERVAL)
        {
            return;
        }
        log::warn!(
            "api: all {} connections in use: {} idle connection(s) closed to make room, {} new one(s) refused since the last report",
            slots.cap(),
            evicted - e0,
            refused - r0
        );
        self.reported = (evicted, refused);
        self.last = Some(now);
    }
}

/// Tells a connection over the cap why it is closed (within a second; a
/// client that does not read loses the message, not the daemon's time).
async fn refuse(mut stream: UnixStream, cap: usize) {
    let response: Response = Response::refused(
        vec![format!(
            "too many API connections: all {cap} are busy with requests; retry later"
        )],
        false,
    );
    let mut out = serde_json::to_vec(&response).unwrap_or_default();
    out.push(b'\n');
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out)).await;
}

async fn connection<H: Handler>(
    stream: UnixStream,
    handler: Arc<H>,
    slot: Slot,
    budget: Budget,
    token: CancellationToken,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::with_capacity(CHUNK / 16, read);
    loop {
        // Idle until the next request begins; the connection may be closed
        // meanwhile to make room for another.
        slot.set_idle(true);
        let first = tokio::select! {
            () = slot.evicted.cancelled() => return Ok(()),
            () = token.cancelled() => return Ok(()),
            r = tokio::time::timeout(REQUEST_TIMEOUT, read.fill_buf()) => r,
        };
        match first {
            Err(_) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Ok(Ok([])) => return Ok(()),
            Ok(Ok(_)) => slot.set_idle(false),
        }
        let got = tokio::select! {
            () = token.cancelled() => return Ok(()),
            r = tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut read, &budget)) => r,
        };
        let answer = match got {
            Err(_) => Err(ServerError::Timeout),
            Ok(Err(Incoming::Io(e))) => return Err(e),
            Ok(Err(Incoming::Closed)) => return Ok(()),
            Ok(Err(Incoming::TooLarge)) => Err(ServerError::TooLarge),
            Ok(Err(Incoming::Busy)) => Err(ServerError::Busy),
            Ok(Ok(chunks)) => Ok(execute(&handler, chunks, &mut read, &token).await),
        };
        let (out, after, end) = match answer {
            Ok((out, after)) => (out, after, false),
            Err(e) => {
                // Oversized, timed-out or over-budget requests end the
                // connection.
                let end = e.ends_connection();
                (encode(&Response::from(e)), None, end)
            }
        };
        // A request running at shutdown stops at its next cancellation
        // point and is answered (within the shutdown's grace period); then
        // the connection ends.
        let written = write.write_all(&out).await;
        if let Some(after) = after {
            drop(tokio::task::spawn_blocking(after));
        }
        written?;
        if end || token.is_cancelled() {
            return Ok(());
        }
    }
}

/// A response as one line.
fn encode(response: &Response) -> Vec<u8> {
    let mut out = serde_json::to_vec(response).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Parses, runs and encodes one request on a blocking thread (a request of a
/// million prefixes takes a second to parse; its answer may be as large),
/// and meanwhile watches the connection, so that a change stops (undone) at
/// its next cancellation point when the client goes away. Returns the
/// encoded answer and what the handler left for after it.
async fn execute<H: Handler>(
    handler: &Arc<H>,
    chunks: Chunks,
    read: &mut BufReader<OwnedReadHalf>,
    token: &CancellationToken,
) -> (Vec<u8>, Option<AfterAnswer>) {
    let gone = CancellationToken::new();
    let (h, shutdown, client) = (handler.clone(), token.child_token(), gone.clone());
    let queued = Instant::now();
    let mut task = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let (response, after) = match serde_json::from_reader::<_, Request>(chunks) {
            Err(e) => (Response::from(ServerError::BadRequest(e)), None),
            Ok(req) => {
                let work = Work::of_client(req.verb(), shutdown, client);
                h.execute(req, &work)
            }
        };
        let out = encode(&response);
        log::debug!(
            "api request: waited {:?} for a blocking thread, ran {:?}",
            started - queued,
            started.elapsed()
        );
        (out, after)
    });
    let mut watching = true;
    loop {
        tokio::select! {
            r = &mut task => {
                return r.unwrap_or_else(|e| (encode(&Response::from(ServerError::Internal(e.to_string()))), None));
            }
            r = read.fill_buf(), if watching => {
                // Bytes of a next request stay buffered; only the end of
                // the stream (or an error) means the client is gone.
                watching = false;
                if r.map_or(true, <[u8]>::is_empty) {
                    gone.cancel();
                }
            }
        }
    }
}

/// Bytes of a request are kept in chunks of this size (allocated whole,
/// counted against the budget whole; never reallocated, so an arriving
/// request holds no more than its size rounded up to a chunk).
const CHUNK: usize = 1 << 20;

/// Why no request came.
#[derive(Debug)]
enum Incoming {
    /// The client closed the connection in the middle of a request.
    Closed,
    /// The request exceeds [`MAX_REQUEST`].
    TooLarge,
    /// The budget of every arriving request is exhausted.
    Busy,
    /// Reading failed.
    Io(std::io::Error),
}

/// One request line, in chunks, with the budget it holds.
#[derive(Debug)]
struct Chunks {
    chunks: VecDeque<Vec<u8>>,
    pos: usize,
    _held: Held,
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some(front) = self.chunks.front() {
            if self.pos < front.len() {
                let n = buf.len().min(front.len() - self.pos);
                buf[..n].copy_from_slice(&front[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            self.chunks.pop_front();
            self.pos = 0;
        }
        Ok(0)
    }
}

/// Reads one request line (up to and including its newline).
async fn read_request(
    read: &mut BufReader<OwnedReadHalf>,
    budget: &Budget,
) -> Result<Chunks, Incoming> {
    let mut held = budget.hold();
    let mut chunks: VecDeque<Vec<u8>> = VecDeque::new();
    let mut len = 0usize;
    loop {
        let buf = read.fill_buf().await.map_err(Incoming::Io)?;
        if buf.is_empty() {
            return Err(Incoming::Closed);
        }
        let (take, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if len + take > MAX_REQUEST + 1 {
            return Err(Incoming::TooLarge);
        }
        let mut rest = &buf[..take];
        while !rest.is_empty() {
            match chunks.back_mut().filter(|c| c.len() < c.capacity()) {
                Some(c) => {
                    let n = rest.len().min(c.capacity() - c.len());
                    c.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                }
                None if held.grow(CHUNK) => chunks.push_back(Vec::with_capacity(CHUNK)),
                None => return Err(Incoming::Busy),
            }
        }
        len += take;
        read.consume(take);
        if done {
            return Ok(Chunks {
                chunks,
                pos: 0,
                _held: held,
            });
        }
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
