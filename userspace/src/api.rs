//! The daemon's local control API: newline-delimited JSON over a root-only
//! Unix socket. The daemon is the only writer of the datapath; the CLI verbs
//! (`acl`, `set`, `policy`, `bind`, `reload`, `stats`, `status`) are clients
//! of this API.
//!
//! One request per line, one response per line; a connection may carry many.
//! Each connection is served by its own task, a request is bounded in size
//! and in how long it may take to arrive, and changes are applied one at a time.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream as StdUnixStream},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    acl::{Change, Rule, Verdict},
    bind::BindRequest,
    control::ApplyError,
    daemon::{Daemon, DaemonError},
    stats,
};

/// Largest request accepted (a rule file or a set load of a million prefixes
/// fits comfortably).
pub const MAX_REQUEST: usize = 256 << 20;
/// How long a client may take to send one whole request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A request.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Apply a change (all or nothing).
    Apply {
        /// The change.
        change: Change,
    },
    /// Rules in evaluation order with counters, and interface defaults.
    AclList,
    /// Sets: names and sizes, or one set's prefixes.
    SetList {
        /// One set, with its prefixes.
        name: Option<String>,
    },
    /// Bind addresses (all or nothing).
    BindAdd {
        /// What to bind.
        binds: Vec<BindRequest>,
    },
    /// Remove bindings (all or nothing).
    BindDel {
        /// What to unbind.
        binds: Vec<BindRequest>,
    },
    /// The bindings, with whether xdpgate added or adopted each address.
    BindList,
    /// Re-read the configuration file (like SIGHUP).
    Reload,
    /// Packet counters.
    Stats,
    /// What the daemon runs: interfaces, configuration, state file, last reload.
    Status,
    /// Add a load-balanced service (or replace it, with `replace`).
    LbAdd {
        /// The service.
        service: crate::lb::ServiceEntry,
        /// Replace a service with the same VIP, protocol and port.
        #[serde(default)]
        replace: bool,
    },
    /// Remove a service by `VIP:PORT/PROTO`.
    LbDel {
        /// The service.
        service: String,
    },
    /// The services with their backends, health and counters.
    LbList,
}

/// A response: `ok` with a `result`, or the list of `errors`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// Errors when it did not; nothing was changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Whether the request or its input was at fault (a client exits 64).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invalid: bool,
    /// The result when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

impl Response {
    fn ok(result: serde_json::Value) -> Self {
        Response {
            ok: true,
            errors: Vec::new(),
            invalid: false,
            result: Some(result),
        }
    }
    fn err(errors: Vec<String>) -> Self {
        Response {
            ok: false,
            errors,
            invalid: false,
            result: None,
        }
    }
    fn invalid(errors: Vec<String>) -> Self {
        Response {
            invalid: true,
            ..Self::err(errors)
        }
    }
}

/// What the API serves.
pub type Shared = Daemon;

/// One interface's default-policy counters in `acl list`.
#[derive(Serialize)]
struct DefaultRow {
    iface: String,
    policy: Verdict,
    packets: u64,
    bytes: u64,
}

fn daemon_error(e: DaemonError) -> Response {
    match e {
        DaemonError::Acl(ApplyError::Invalid(errs)) => {
            Response::invalid(errs.iter().map(|e| e.to_string()).collect())
        }
        DaemonError::Config(crate::config::ConfigError::Invalid { path, issues }) => {
            Response::invalid(
                issues
                    .iter()
                    .map(|i| format!("{}: {i}", path.display()))
                    .collect(),
            )
        }
        DaemonError::Bind(crate::bind::BindError::Invalid(errs)) => {
            Response::invalid(errs.iter().map(|e| e.to_string()).collect())
        }
        DaemonError::Lb(crate::lb::LbError::Invalid(errs)) => Response::invalid(errs),
        e @ DaemonError::Lb(crate::lb::LbError::Parse(_) | crate::lb::LbError::NoService(_)) => {
            Response::invalid(vec![e.to_string()])
        }
        e @ (DaemonError::NeedsRestart(_) | DaemonError::Config(_)) => {
            Response::invalid(vec![e.to_string()])
        }
        e => Response::err(vec![e.to_string()]),
    }
}

fn json<T: Serialize>(v: &T) -> Response {
    match serde_json::to_value(v) {
        Ok(v) => Response::ok(v),
        Err(e) => Response::err(vec![format!("internal error: {e}")]),
    }
}

/// Executes one request against the daemon (the caller holds nothing; this
/// takes the daemon's lock).
pub fn execute(shared: &Mutex<Shared>, req: Request) -> Response {
    let mut guard = shared.lock().unwrap_or_else(|e| e.into_inner());
    let d = &mut *guard;
    match req {
        Request::BindAdd { binds } => match d.bind_add(&binds) {
            Ok(r) => {
                log::info!("bind add: {r}");
                json(&r)
            }
            Err(e) => daemon_error(e),
        },
        Request::BindDel { binds } => match d.bind_del(&binds) {
            Ok(r) => {
                log::info!("bind del: {r}");
                json(&r)
            }
            Err(e) => daemon_error(e),
        },
        Request::LbAdd { service, replace } => match d.lb_add(&service, replace) {
            Ok(()) => json(
                &serde_json::json!({ "message": format!("service {} in force", service.service) }),
            ),
            Err(e) => daemon_error(e),
        },
        Request::LbDel { service } => match d.lb_del(&service) {
            Ok(()) => json(&serde_json::json!({ "message": format!("service {service} removed") })),
            Err(e) => daemon_error(e),
        },
        Request::LbList => match d.lb.status(&d.dp) {
            Ok(services) => {
                let health = d.health.as_ref().map(|m| m.status()).unwrap_or_default();
                let decap: Vec<serde_json::Value> = d
                    .decap_counters()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(iface, outer, inner, packets, bytes)| {
                        serde_json::json!({
                            "interface": iface, "outer": outer, "inner": inner,
                            "packets": packets, "bytes": bytes,
                        })
                    })
                    .collect();
                json(&serde_json::json!({
                    "services": services,
                    "health": health,
                    "decap": decap,
                    "specs": d.lb.specs().iter().map(crate::lb::ServiceEntry::from_spec).collect::<Vec<_>>(),
                }))
            }
            Err(e) => Response::err(vec![e.to_string()]),
        },
        Request::BindList => json(&serde_json::json!({
            "bindings": d.binds.list(),
            "drop_unbound": d.config.interfaces.iter()
                .filter(|i| i.drop_unbound).map(|i| i.name.clone()).collect::<Vec<_>>(),
        })),
        Request::Reload => match d.reload() {
            Ok(msg) => {
                log::info!("{msg}");
                Response::ok(serde_json::json!({ "message": msg }))
            }
            Err(e) => {
                log::error!("reload failed, the running configuration stays in force: {e}");
                daemon_error(e)
            }
        },
        Request::Stats => match stats::read(&d.paths) {
            Ok(r) => json(&serde_json::json!({ "report": r, "text": stats::render(&r) })),
            Err(e) => Response::err(vec![e.to_string()]),
        },
        Request::Status => json(&serde_json::json!({
            "pid": std::process::id(),
            "uptime_seconds": d.started.elapsed().as_secs(),
            "config": d.config.path,
            "state_file": d.config.state_file,
            "started_from": d.origin,
            "interfaces": d.dp.attached().iter().map(|a| serde_json::json!({
                "interface": a.iface, "ifindex": a.ifindex, "mode": a.mode.name(), "prog_id": a.prog_id,
                "drop_unbound": d.config.interfaces.iter().any(|i| i.name == a.iface && i.drop_unbound),
            })).collect::<Vec<_>>(),
            "rules": d.ctl.state().rules.len(),
            "sets": d.ctl.state().sets.len(),
            "bindings": d.binds.list().len(),
            "metrics_listen": d.config.metrics_listen,
            "reload": d.reload,
        })),
        Request::Apply { change } => match d.apply(&change) {
            Ok(applied) => {
                log::info!(
                    "applied {}: {} rules, {} prefixes, compile {:?}, install {:?}",
                    change_name(&change),
                    applied.rules,
                    applied.prefixes,
                    applied.compile,
                    applied.install
                );
                Response::ok(serde_json::to_value(applied).unwrap_or_default())
            }
            Err(e @ DaemonError::Acl(ApplyError::Invalid(_))) => daemon_error(e),
            Err(e) => {
                log::error!("applying {}: {e}", change_name(&change));
                daemon_error(e)
            }
        },
        Request::AclList => {
            let (dp, ctl) = (&d.dp, &d.ctl);
            let rules = match ctl.rule_counters(dp) {
                Ok(r) => r,
                Err(e) => return Response::err(vec![e.to_string()]),
            };
            let mut defaults = Vec::new();
            for iface in ctl.slots().keys() {
                let (packets, bytes) = ctl.default_counters(dp, iface).unwrap_or_default();
                defaults.push(DefaultRow {
                    iface: iface.clone(),
                    policy: ctl.state().policy(iface),
                    packets,
                    bytes,
                });
            }
            Response::ok(serde_json::json!({ "rules": rules, "defaults": defaults }))
        }
        Request::SetList { name: None } => {
            let ctl = &d.ctl;
            let sets: Vec<_> = ctl
                .state()
                .sets
                .iter()
                .map(|(n, s)| {
                    serde_json::json!({
                        "name": n,
                        "ipv4": s.v4.len(),
                        "ipv6": s.v6.len(),
                        "used_by": ctl.state().set_users(n),
                    })
                })
                .collect();
            Response::ok(serde_json::json!({ "sets": sets }))
        }
        Request::SetList { name: Some(name) } => match d.ctl.state().sets.get(&name) {
            None => Response::err(vec![format!("no set named {name}")]),
            Some(s) => {
                let prefixes: Vec<String> =
                    s.v4.iter()
                        .map(|p| p.to_string())
                        .chain(s.v6.iter().map(|p| p.to_string()))
                        .collect();
                Response::ok(serde_json::json!({ "name": name, "prefixes": prefixes }))
            }
        },
    }
}

fn change_name(c: &Change) -> &'static str {
    match c {
        Change::SetAdd { .. } => "set add",
        Change::SetDel { .. } => "set del",
        Change::RuleAdd { .. } => "acl add",
        Change::RuleDel { .. } => "acl del",
        Change::Replace { .. } => "acl replace",
        Change::Policy { .. } => "policy",
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
pub async fn serve(listener: UnixListener, shared: Arc<Mutex<Shared>>, token: CancellationToken) {
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

async fn connection(stream: UnixStream, shared: Arc<Mutex<Shared>>) -> std::io::Result<()> {
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
        let response = match got {
            Err(_) => Response::err(vec![format!(
                "request not received within {REQUEST_TIMEOUT:?}"
            )]),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(_)) if line.len() > MAX_REQUEST => {
                Response::invalid(vec![format!("request larger than {MAX_REQUEST} bytes")])
            }
            Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
                Err(e) => Response::invalid(vec![format!("bad request: {e}")]),
                Ok(req) => {
                    let shared = shared.clone();
                    tokio::task::spawn_blocking(move || execute(&shared, req))
                        .await
                        .unwrap_or_else(|e| Response::err(vec![format!("internal error: {e}")]))
                }
            },
        };
        let mut out = serde_json::to_vec(&response).unwrap_or_default();
        out.push(b'\n');
        write.write_all(&out).await?;
        if !response.ok && response.errors.iter().any(|e| e.starts_with("request ")) {
            // Oversized or timed-out requests end the connection.
            return Ok(());
        }
    }
}

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
    /// The answer was not valid.
    #[error("bad answer from the daemon: {0}")]
    Bad(#[from] serde_json::Error),
}

/// Sends one request to the daemon at `socket` and waits for the answer.
pub fn call(socket: &Path, req: &Request) -> Result<Response, ClientError> {
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

/// A rule as the CLI prints it (`acl list`).
pub fn describe(rule: &Rule) -> String {
    let mut parts = vec![format!("prio {}", rule.priority)];
    if let Some(s) = &rule.src {
        parts.push(format!("src {s}"));
    }
    if let Some(d) = &rule.dst {
        parts.push(format!("dst {d}"));
    }
    if let Some(p) = rule.proto {
        parts.push(format!("proto {p}"));
    }
    if let Some(p) = rule.sport {
        parts.push(format!("sport {p}"));
    }
    if let Some(p) = rule.dport {
        parts.push(format!("dport {p}"));
    }
    if let Some(t) = rule.icmp_type {
        parts.push(format!("icmp-type {t}"));
    }
    if let Some(c) = rule.icmp_code {
        parts.push(format!("icmp-code {c}"));
    }
    if let Some(i) = &rule.iface {
        parts.push(format!("iface {i}"));
    }
    parts.join(" ")
}
