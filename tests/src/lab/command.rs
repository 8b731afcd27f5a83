//! Running the lab's helper commands (`ip ...`) with time limits, capturing
//! their output.
use std::io::{self, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::LabError;

/// The `ip` binary: `/usr/sbin/ip` or another usual location, else `ip`
/// from `PATH`.
pub(super) fn ip_program() -> &'static str {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|candidate| Path::new(candidate).is_file())
        .unwrap_or("ip")
}

/// A printable command line, with the namespace it runs in.
pub(super) fn describe(program: &str, args: &[&str], netns: Option<&str>) -> String {
    let mut line = program.to_owned();
    for arg in args {
        line.push(' ');
        line.push_str(arg);
    }
    if let Some(netns) = netns {
        line.push_str(&format!(" (in netns {netns})"));
    }
    line
}

/// Runs `cmd` with stdin from `/dev/null`, capturing its output; kills it if
/// it takes longer than `timeout`. Returns stdout on success.
pub(super) fn run_command(
    mut cmd: Command,
    desc: &str,
    timeout: Duration,
) -> Result<String, LabError> {
    log::debug!("running {desc}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let deadline = Instant::now() + timeout;
    let mut child = cmd.spawn().map_err(|source| LabError::Spawn {
        cmd: desc.to_owned(),
        source,
    })?;
    let stdout = read_in_background(child.stdout.take());
    let stderr = read_in_background(child.stderr.take());
    let status = match wait_until(&mut child, deadline) {
        Ok(Some(status)) => status,
        Ok(None) => {
            kill_and_reap(&mut child);
            return Err(LabError::CommandTimeout {
                cmd: desc.to_owned(),
                timeout,
                stderr: collect(&stderr, Instant::now() + Duration::from_millis(200))
                    .unwrap_or_default(),
            });
        }
        Err(source) => {
            kill_and_reap(&mut child);
            return Err(LabError::Io {
                op: format!("wait for `{desc}`"),
                source,
            });
        }
    };
    // A descendant may hold the pipes open; give the output a bounded grace
    // period past the deadline.
    let output_deadline = deadline.max(Instant::now() + Duration::from_secs(1));
    let timed_out = || LabError::CommandTimeout {
        cmd: desc.to_owned(),
        timeout,
        stderr: String::from("(output pipes were not closed)"),
    };
    let err_text = collect(&stderr, output_deadline).ok_or_else(timed_out)?;
    let out_text = collect(&stdout, output_deadline).ok_or_else(timed_out)?;
    if !status.success() {
        return Err(LabError::Command {
            cmd: desc.to_owned(),
            status: status.to_string(),
            stderr: err_text.trim_end().to_owned(),
        });
    }
    Ok(out_text)
}

/// Polls `child` until it exits or `deadline` passes (`Ok(None)`).
fn wait_until(
    child: &mut Child,
    deadline: Instant,
) -> io::Result<Option<std::process::ExitStatus>> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Kills and reaps a child that overran its time limit.
fn kill_and_reap(child: &mut Child) {
    if let Err(e) = child.kill() {
        log::warn!("cannot kill child {}: {e}", child.id());
    }
    // Reaping a SIGKILLed child returns promptly.
    let _ = child.wait();
}

/// Reads a pipe to its end on a helper thread.
fn read_in_background(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    match pipe {
        Some(mut pipe) => {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = pipe.read_to_end(&mut buf);
                let _ = tx.send(buf);
            });
        }
        None => {
            let _ = tx.send(Vec::new());
        }
    }
    rx
}

/// Waits (until `deadline`) for the output collected by
/// [`read_in_background`].
fn collect(rx: &mpsc::Receiver<Vec<u8>>, deadline: Instant) -> Option<String> {
    let wait = deadline.saturating_duration_since(Instant::now());
    rx.recv_timeout(wait)
        .ok()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}
