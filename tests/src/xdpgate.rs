//! Running the `xdpgate` binary inside a lab namespace.
//!
//! Every [`Daemon`] gets its own bpffs and run directories, so daemons of
//! different tests (or a real daemon on the host) never share maps or locks.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use crate::lab::Netns;

/// Path of the second build of `xdpgate` whose program differs in its tag
/// only (`$XDPGATE_BIN_VARIANT`, built by `cargo xtask test`), for the
/// upgrade test. Panics with what to do when it is not there.
pub fn variant_binary() -> PathBuf {
    built_aside("XDPGATE_BIN_VARIANT", "XDPGATE_PROG_VARIANT")
}

/// Path of the build of `xdpgate` with the next schema (`$XDPGATE_BIN_SCHEMA`,
/// built by `cargo xtask test` with `XDPGATE_SCHEMA_VARIANT`), for the
/// schema-upgrade test. Panics with what to do when it is not there.
pub fn schema_variant_binary() -> PathBuf {
    built_aside("XDPGATE_BIN_SCHEMA", "XDPGATE_SCHEMA_VARIANT")
}

fn built_aside(var: &str, build_var: &str) -> PathBuf {
    match std::env::var_os(var).map(PathBuf::from) {
        Some(p) if p.is_absolute() && p.is_file() => p,
        _ => panic!(
            "{var} must name a second build of xdpgate (`cargo xtask test` makes it; by hand: {build_var}=1 cargo build -p xdpgate, then copy target/debug/xdpgate aside)"
        ),
    }
}

/// Path of the `xdpgate` binary under test: `$XDPGATE_BIN` (set by `cargo xtask
/// test`), else `target/debug/xdpgate` of this workspace.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("XDPGATE_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_absolute() && p.is_file(),
            "XDPGATE_BIN={} must be the absolute path of the xdpgate binary",
            p.display()
        );
        return p;
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/xdpgate");
    assert!(
        p.is_file(),
        "{} does not exist: build it with `cargo build -p xdpgate` (`cargo xtask test` does) \
         or set XDPGATE_BIN",
        p.display()
    );
    p
}

/// Per-daemon state directories (removed on drop).
#[derive(Clone, Debug)]
pub struct StateDirs {
    /// `--bpffs-dir`.
    pub bpffs: PathBuf,
    /// `--run-dir`.
    pub run: PathBuf,
    /// `--state-file` (`XDPGATE_STATE_FILE`): outside the run directory, which
    /// the daemon creates, so that it survives a daemon restart.
    pub state_file: PathBuf,
    /// Handed on to a restarted daemon: do not remove on drop.
    kept: bool,
}

impl StateDirs {
    /// Fresh, unique directories (not created yet: the daemon creates them).
    pub fn unique(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let id = format!("xdpgate-{tag}-{}-{n}", std::process::id());
        StateDirs {
            bpffs: PathBuf::from("/sys/fs/bpf").join(&id),
            run: PathBuf::from("/run").join(&id),
            state_file: PathBuf::from("/run").join(format!("{id}.state.json")),
            kept: false,
        }
    }

    /// `xdpgate status --output json` in `ns`: the whole document, and the
    /// attachments listed for `iface`. Any health exit code passes (0 ok,
    /// 2 degraded, 3 not running, 4 enforcing without a daemon), not 1
    /// (error) or 64.
    pub fn status(&self, ns: &Netns, iface: &str) -> (serde_json::Value, Vec<serde_json::Value>) {
        let out = self.run(ns, &["status", "--output", "json"], Duration::from_secs(10));
        assert!(
            matches!(out.status.code(), Some(0 | 2 | 3 | 4)),
            "xdpgate status failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
        let rows = doc["interfaces"]
            .as_array()
            .expect("interfaces")
            .iter()
            .filter(|i| i["interface"] == iface)
            .cloned()
            .collect();
        (doc, rows)
    }

    /// An `xdpgate` command in `ns` using these directories.
    pub fn command(&self, ns: &Netns) -> Command {
        self.command_of(ns, &binary())
    }

    /// [`StateDirs::command`] of the binary `bin` (another build).
    pub fn command_of(&self, ns: &Netns, bin: &Path) -> Command {
        let mut cmd = ns.command(bin);
        cmd.env("XDPGATE_BPFFS_DIR", &self.bpffs)
            .env("XDPGATE_RUN_DIR", &self.run)
            .env("XDPGATE_STATE_FILE", &self.state_file)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `xdpgate ARGS` in `ns` (bounded by 60 s), asserts that it succeeds
    /// and returns its standard output.
    pub fn run_ok(&self, ns: &Netns, args: &[&str]) -> String {
        let out = self.run(ns, args, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "xdpgate {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `xdpgate run --config CONFIG` in `ns` and asserts that it is
    /// refused as the caller's fault (exit 64, within 60 s) with a message
    /// holding every one of `parts`; returns that message.
    pub fn run_refused(&self, ns: &Netns, config: &Path, parts: &[&str]) -> String {
        let out = self.run(
            ns,
            &["run", "--config", config.to_str().expect("UTF-8 path")],
            Duration::from_secs(60),
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(64), "{err}");
        for part in parts {
            assert!(err.contains(part), "{part:?} missing in: {err}");
        }
        err
    }

    /// Runs `xdpgate ARGS` in `ns` to completion (bounded by `timeout`).
    pub fn run(&self, ns: &Netns, args: &[&str], timeout: Duration) -> Output {
        let mut child = self
            .command(ns)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn xdpgate");
        let deadline = Instant::now() + timeout;
        loop {
            if child.try_wait().expect("wait").is_some() {
                return child.wait_with_output().expect("collect output");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().expect("collect output");
                panic!(
                    "xdpgate {args:?} did not finish within {timeout:?}; stderr: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for StateDirs {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let _ = std::fs::remove_file(&self.state_file);
        // Its journal (xdpgate_model::state::journal::path_of).
        let mut journal = self.state_file.clone().into_os_string();
        journal.push(".journal");
        let _ = std::fs::remove_file(journal);
        let _ = std::fs::remove_dir_all(&self.run);
        // The datapath outlives its daemon: detach its pinned links now (as
        // `xdpgate down` does), then remove the pins.
        let links = self.bpffs.join(xdpgate_common::pins::LINKS_DIR);
        for e in std::fs::read_dir(&links).into_iter().flatten().flatten() {
            let _ = crate::bpf::detach_pinned_link(&e.path());
        }
        let _ = std::fs::remove_dir_all(&self.bpffs);
    }
}

/// A running `xdpgate run` daemon. Killed on drop if still running.
pub struct Daemon {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    /// The daemon's state directories.
    pub dirs: StateDirs,
}

impl Daemon {
    /// Starts `xdpgate run --iface ... --mode MODE` in `ns` and waits (at most
    /// 30 s) until it logs that it is ready. Returns the daemon's stderr as the
    /// error if it exits first.
    pub fn start(ns: &Netns, ifaces: &[&str], mode: &str) -> Result<Daemon, String> {
        Self::start_with(ns, ifaces, mode, &[])
    }

    /// Like [`Daemon::start`], with more arguments for `xdpgate run`.
    pub fn start_with(
        ns: &Netns,
        ifaces: &[&str],
        mode: &str,
        extra: &[&std::ffi::OsStr],
    ) -> Result<Daemon, String> {
        Self::start_in(ns, StateDirs::unique("t"), ifaces, mode, extra)
    }

    /// Like [`Daemon::start_with`], in given state directories (those of a
    /// stopped daemon, to restart it). `mode` may be empty to take the
    /// configuration's modes.
    pub fn start_in(
        ns: &Netns,
        dirs: StateDirs,
        ifaces: &[&str],
        mode: &str,
        extra: &[&std::ffi::OsStr],
    ) -> Result<Daemon, String> {
        Self::start_binary(ns, dirs, &binary(), ifaces, mode, extra)
    }

    /// Like [`Daemon::start_in`], of the binary `bin` (another build).
    pub fn start_binary(
        ns: &Netns,
        dirs: StateDirs,
        bin: &Path,
        ifaces: &[&str],
        mode: &str,
        extra: &[&std::ffi::OsStr],
    ) -> Result<Daemon, String> {
        let mut cmd = dirs.command_of(ns, bin);
        cmd.arg("run").args(extra);
        if !mode.is_empty() {
            cmd.args(["--mode", mode]);
        }
        for i in ifaces {
            cmd.args(["--iface", i]);
        }
        // Its own process group: a Ctrl-C in the terminal (or `timeout`)
        // reaches the test or demo, which stops the daemon itself, instead
        // of stopping the daemon under a demo that still reads its stats.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn xdpgate: {e}"))?;
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[xdpgate] {line}");
                let mut l = sink
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut daemon = Daemon {
            child: Some(child),
            log,
            dirs,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if daemon.log().contains("xdpgate ready") {
                return Ok(daemon);
            }
            if let Some(status) = daemon.child.as_mut().unwrap().try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100)); // let the reader drain
                return Err(format!("xdpgate exited with {status}: {}", daemon.log()));
            }
            if Instant::now() > deadline {
                return Err(format!("xdpgate not ready within 30 s: {}", daemon.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The `counters` rows of `xdpgate stats --output json` in `ns`.
    pub fn stats(&self, ns: &Netns) -> Vec<serde_json::Value> {
        let report = self.report(ns);
        report["counters"].as_array().expect("counters").clone()
    }

    /// `xdpgate stats --output json` in `ns`, parsed.
    pub fn report(&self, ns: &Netns) -> serde_json::Value {
        let out = self
            .dirs
            .run(ns, &["stats", "--output", "json"], Duration::from_secs(10));
        assert!(
            out.status.success(),
            "xdpgate stats failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("stats JSON")
    }

    /// Sends `signal`, waits for the daemon to exit and hands back its state
    /// directories (for a restart).
    pub fn stop_keeping_state(mut self, signal: i32) -> (ExitStatus, StateDirs) {
        let status = self.signal_and_wait(signal);
        self.dirs.kept = true;
        let mut dirs = self.dirs.clone();
        dirs.kept = false;
        (status, dirs)
    }

    /// Sends `signal` and waits (at most 10 s) for the daemon to exit.
    pub fn stop_with(mut self, signal: i32) -> ExitStatus {
        self.signal_and_wait(signal)
    }

    /// Sends `signal` without waiting.
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("running");
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
    }

    fn signal_and_wait(&mut self, signal: i32) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("xdpgate did not exit within 10 s of signal {signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sums `packets` and `bytes` of the stats rows matching `interface`, `family`
/// and `action` (`None` matches any).
pub fn sum(
    rows: &[serde_json::Value],
    interface: &str,
    family: Option<&str>,
    action: Option<&str>,
) -> (u64, u64) {
    rows.iter()
        .filter(|r| r["interface"] == interface)
        .filter(|r| family.is_none_or(|f| r["family"] == f))
        .filter(|r| action.is_none_or(|a| r["action"] == a))
        .fold((0, 0), |(p, b), r| {
            (
                p + r["packets"].as_u64().unwrap(),
                b + r["bytes"].as_u64().unwrap(),
            )
        })
}

/// Whether `ifname` in `ns` has any XDP program attached (per `ip -d -j link`).
pub fn xdp_on(ns: &Netns, ifname: &str) -> bool {
    let out = ns
        .exec("ip", &["-d", "-j", "link", "show", "dev", ifname])
        .expect("ip link");
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j JSON");
    !v[0]["xdp"].is_null()
}

/// One HTTP/1.0 GET to 127.0.0.1:`port` inside `ns`: (status, body).
pub fn http_get(ns: &Netns, port: u16, target: &str) -> std::io::Result<(u16, String)> {
    let target = target.to_owned();
    ns.run(move || {
        let addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {target} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok((status, body.to_owned()))
    })
}
