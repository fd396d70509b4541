//! QEMU as a supervised child: its output goes to the agent's log, each
//! line prefixed, and the last lines are kept to say why it ended.

use std::collections::VecDeque;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Lines of QEMU's output kept for a failure's reason.
const KEPT_LINES: usize = 20;

pub struct Guest {
    pub child: Child,
    pub output: Arc<Mutex<VecDeque<String>>>,
}

pub fn spawn(qemu: &Path, args: &[String], prefix: &str) -> std::io::Result<Guest> {
    let mut cmd = Command::new(qemu);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let output = Arc::new(Mutex::new(VecDeque::new()));
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    {
        let output = output.clone();
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                log::info!("{prefix}: {line}");
                let mut o = output.lock().unwrap_or_else(|p| p.into_inner());
                if o.len() >= KEPT_LINES {
                    o.pop_front();
                }
                o.push_back(line.chars().take(500).collect());
            }
        });
    }
    Ok(Guest { child, output })
}

impl Guest {
    pub fn last_output(&self) -> String {
        let o = self.output.lock().unwrap_or_else(|p| p.into_inner());
        o.iter().cloned().collect::<Vec<_>>().join(" | ")
    }
}

/// The running QEMU's pid, in the runtime's directory.
pub const PID_FILE: &str = "qemu.pid";

/// Stops a QEMU an earlier agent left running (the agent was killed
/// outright and its child outlived it): it holds the chain's files, so a
/// new boot beside it would fail on their locks and blame a good layer.
/// Only a process whose command line is one of ours (`-name voi-…`) is
/// touched.
pub fn reap_leftover(pid_file: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|p| *p > 1)
    else {
        return;
    };
    let ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
        c.split(|b| *b == 0)
            .any(|arg| arg.starts_with(b"voi-") && arg.len() > 4)
    });
    if ours {
        log::warn!("desktop: a QEMU left by an earlier agent (pid {pid}) still runs; stopping it");
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        // Its locks go when it is gone: wait a moment for that.
        for _ in 0..50 {
            if !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z "))
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    let _ = std::fs::remove_file(pid_file);
}

/// Whether KVM can be tried at all: its device opens read-write. (It may
/// still fail to run a guest: the runtime falls back to TCG then.)
pub fn kvm_available(device: &std::path::Path) -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .is_ok()
}
