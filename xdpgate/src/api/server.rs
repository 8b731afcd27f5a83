//! The API's server: the root-only socket, one task per connection, each
//! request bounded in size and in how long it may take to arrive, and
//! executed one at a time by a [`Handler`] (the daemon).
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use super::protocol::{MAX_REQUEST, REQUEST_TIMEOUT, Request, Response};
use thiserror::Error;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// What executes requests: the daemon implements it (`daemon::handler`),
/// so the server knows the protocol and the transport, not the daemon.
pub trait Handler: Send + 'static {
    /// Executes one request; the response carries the answer, or the
    /// errors and whether the caller was at fault.
    fn execute(&mut self, req: Request) -> Response;
}

/// Why the server refused a request before any handler saw it. The
/// handler's own refusals say themselves whether the caller is at fault
/// (for the daemon: `DaemonError::is_invalid_input`).
#[derive(Debug, Error)]
pub enum ServerError {
    /// The request did not arrive in time (the connection is closed).
    #[error("request not received within {REQUEST_TIMEOUT:?}")]
    Timeout,
    /// The request is larger than [`MAX_REQUEST`] (the connection is closed).
    #[error("request larger than {MAX_REQUEST} bytes")]
    TooLarge,
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
            ServerError::Timeout | ServerError::Internal(_) => false,
        }
    }

    /// Whether the connection ends after this answer.
    fn ends_connection(&self) -> bool {
        matches!(self, ServerError::Timeout | ServerError::TooLarge)
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
/// caller holds the daemon lock, so an existing socket is stale).
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
        let md = std::fs::metadata(dir).map_err(|e| io("cannot stat the directory of", e))?;
        if md.uid() != me {
            return Err(ApiError::Unsafe {
                path: path.to_path_buf(),
                why: format!(
                    "its directory {} is owned by uid {}, not by uid {me}",
                    dir.display(),
                    md.uid()
                ),
            });
        }
        if md.mode() & 0o022 != 0 {
            return Err(ApiError::Unsafe {
                path: path.to_path_buf(),
                why: format!(
                    "others may write to its directory {} (mode {:o})",
                    dir.display(),
                    md.mode() & 0o7777
                ),
            });
        }
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

/// Serves connections until `token` is cancelled. Every connection task
/// observes the token, so shutdown never waits for a stuck client.
pub async fn serve<H: Handler>(
    listener: UnixListener,
    shared: Arc<Mutex<H>>,
    token: CancellationToken,
) {
    let tracker = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            _ = token.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    log::warn!("api accept: {e}");
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let token = token.child_token();
        tracker.spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {}
                r = connection(stream, shared) => if let Err(e) = r {
                    log::debug!("api connection: {e}");
                },
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

async fn connection<H: Handler>(stream: UnixStream, shared: Arc<Mutex<H>>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = tokio::io::BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let got = tokio::time::timeout(
            REQUEST_TIMEOUT,
            (&mut read)
                .take(MAX_REQUEST as u64 + 1)
                .read_until(b'\n', &mut line),
        )
        .await;
        let answer = match got {
            Err(_) => Err(ServerError::Timeout),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(_)) if line.len() > MAX_REQUEST => Err(ServerError::TooLarge),
            Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
                Err(e) => Err(ServerError::BadRequest(e)),
                Ok(req) => {
                    let shared = shared.clone();
                    // The lock is taken on the blocking task: a change that
                    // takes seconds (a million prefixes) holds no runtime
                    // thread.
                    tokio::task::spawn_blocking(move || {
                        shared
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .execute(req)
                    })
                    .await
                    .map_err(|e| ServerError::Internal(e.to_string()))
                }
            },
        };
        let end = answer.as_ref().is_err_and(ServerError::ends_connection);
        let response = answer.unwrap_or_else(Response::from);
        let mut out = serde_json::to_vec(&response).unwrap_or_default();
        out.push(b'\n');
        write.write_all(&out).await?;
        if end {
            // Oversized or timed-out requests end the connection.
            return Ok(());
        }
    }
}
