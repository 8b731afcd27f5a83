//! Tests of the API server over a real Unix socket: the work a handler
//! leaves for after its answer ([`AfterAnswer`]) runs once the answer is
//! written, and also when the client went away before it.
use std::{
    os::{fd::AsRawFd as _, unix::net::UnixStream as StdUnixStream},
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _},
    net::UnixStream,
    sync::{Notify, mpsc},
};

use super::*;
use crate::api::protocol::{Answer, Message};

/// What a run of the deferred work saw.
#[derive(Debug, PartialEq)]
enum Seen {
    /// The answer was waiting in the client's socket.
    AnswerWaiting,
    /// The client's socket held nothing (or was gone).
    NoAnswer,
}

/// Answers every request with a message and leaves work for after it,
/// which looks into the client's socket (a clone of the test's end) and
/// reports what it saw. With `hold`, the answer waits until the test lets
/// it go (after the client is gone).
struct Deferring {
    client: Mutex<Option<StdUnixStream>>,
    seen: mpsc::UnboundedSender<Seen>,
    hold: Option<Arc<Notify>>,
}

impl Handler for Deferring {
    fn execute(&self, _req: Request, _work: &Arc<Work>) -> (Response, Option<AfterAnswer>) {
        if let Some(hold) = &self.hold {
            let hold = hold.clone();
            tokio::runtime::Handle::current().block_on(hold.notified());
        }
        let client = self
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let seen = self.seen.clone();
        let after: AfterAnswer = Box::new(move || {
            let waiting = client.is_some_and(|c| {
                let mut byte = [0u8; 1];
                // SAFETY: recv(2) on the descriptor `c` owns (open for the
                // call) into a one-byte buffer that outlives it; MSG_PEEK
                // leaves the byte for the test's reader.
                let n = unsafe {
                    libc::recv(
                        c.as_raw_fd(),
                        byte.as_mut_ptr().cast(),
                        byte.len(),
                        libc::MSG_PEEK | libc::MSG_DONTWAIT,
                    )
                };
                n > 0
            });
            let _ = seen.send(if waiting {
                Seen::AnswerWaiting
            } else {
                Seen::NoAnswer
            });
        });
        (
            Response::answer(Answer::Message(Message {
                message: "done".into(),
            })),
            Some(after),
        )
    }
}

/// A fresh socket path in the temporary directory.
fn socket_path() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "xdpgate-api-test-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Serves `handler` on a fresh socket; returns the path, the token that
/// stops the server and its task.
fn start<H: Handler>(handler: Arc<H>) -> (PathBuf, CancellationToken, tokio::task::JoinHandle<()>) {
    let path = socket_path();
    let listener = UnixListener::bind(&path).expect("bind a test socket");
    let token = CancellationToken::new();
    let task = tokio::spawn(serve(listener, handler, 4, token.clone()));
    (path, token, task)
}

/// A connected client: the async end for the test, a clone for the handler.
async fn connect(path: &Path) -> (UnixStream, StdUnixStream) {
    let std = StdUnixStream::connect(path).expect("connect");
    std.set_nonblocking(true).expect("non-blocking");
    let peek = std.try_clone().expect("clone the client's socket");
    (UnixStream::from_std(std).expect("register"), peek)
}

async fn next(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("the deferred work ran within 10 s")
        .expect("the handler is alive")
}

#[tokio::test]
async fn the_work_left_for_after_an_answer_runs_once_the_answer_is_written() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let handler = Arc::new(Deferring {
        client: Mutex::new(None),
        seen: tx,
        hold: None,
    });
    let (path, token, server) = start(handler.clone());
    let (client, peek) = connect(&path).await;
    *handler.client.lock().expect("lock") = Some(peek);
    let (read, mut write) = client.into_split();
    write
        .write_all(b"{\"cmd\":\"status\"}\n")
        .await
        .expect("send");
    assert_eq!(next(&mut seen).await, Seen::AnswerWaiting);
    let mut line = String::new();
    BufReader::new(read)
        .read_line(&mut line)
        .await
        .expect("read the answer");
    assert!(line.contains("\"done\""), "answer: {line}");
    token.cancel();
    server.await.expect("the server stops");
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn the_work_left_for_after_an_answer_runs_when_the_client_went_away_before_it() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let hold = Arc::new(Notify::new());
    let handler = Arc::new(Deferring {
        client: Mutex::new(None),
        seen: tx,
        hold: Some(hold.clone()),
    });
    let (path, token, server) = start(handler);
    let (mut client, peek) = connect(&path).await;
    client
        .write_all(b"{\"cmd\":\"status\"}\n")
        .await
        .expect("send");
    drop(client);
    drop(peek);
    // The handler runs on a blocking thread: let its answer go once the
    // client is gone.
    hold.notify_one();
    assert_eq!(next(&mut seen).await, Seen::NoAnswer);
    token.cancel();
    server.await.expect("the server stops");
    let _ = std::fs::remove_file(&path);
}
