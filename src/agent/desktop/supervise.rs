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

/// Whether KVM can be tried at all: its device opens read-write. (It may
/// still fail to run a guest: the runtime falls back to TCG then.)
pub fn kvm_available(device: &std::path::Path) -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .is_ok()
}
