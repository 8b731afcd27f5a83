//! The API's client: one request, one typed answer, over the daemon's socket.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream as StdUnixStream,
    path::{Path, PathBuf},
};

use serde::de::DeserializeOwned;
use thiserror::Error;

use super::protocol::{Request, Response};

/// Errors of the API client.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The daemon is not reachable.
    #[error(
        "no running xdpgate daemon reachable at {path} (start one with `xdpgate run`, or pass the daemon's --run-dir)"
    )]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed.
    #[error("talking to the daemon: {0}")]
    Io(#[from] std::io::Error),
    /// The answer was not valid (or not the answer of the verb asked for).
    #[error("bad answer from the daemon: {0}")]
    Bad(#[from] serde_json::Error),
}

/// Sends one request to the daemon at `socket` and waits for the answer,
/// read as the answer `T` of the verb asked for.
pub fn call<T: DeserializeOwned>(socket: &Path, req: &Request) -> Result<Response<T>, ClientError> {
    let stream = StdUnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer)?;
    Ok(serde_json::from_str(&answer)?)
}
