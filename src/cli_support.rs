//! What both command lines use: logging, printing, waiting for a signal.

/// Logging to stderr, `RUST_LOG` style, default info.
/// `--version`: the crate version and the commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("VOI_COMMIT"),
    ")"
);

pub fn init_logging() {
    let inner = logger("info").format_timestamp_millis().build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(Tee { inner })).is_ok() {
        log::set_max_level(max);
    }
}

/// Lines kept for `recent_log_lines` (the terminal's screen shows 50).
const RECENT_LINES: usize = 200;

static RECENT: std::sync::Mutex<std::collections::VecDeque<String>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

/// The logger as configured, and a copy of each line it writes in a bounded
/// ring, so a local screen can show the last lines without reading files.
struct Tee {
    inner: env_logger::Logger,
}

impl log::Log for Tee {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        if !self.inner.matches(record) {
            return;
        }
        self.inner.log(record);
        let line = format!(
            "{} {:<5} {}",
            chrono::Local::now().format("%H:%M:%S"),
            record.level(),
            record.args()
        );
        let mut q = RECENT.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= RECENT_LINES {
            q.pop_front();
        }
        q.push_back(line);
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// The last `n` lines this process logged, oldest first.
pub fn recent_log_lines(n: usize) -> Vec<String> {
    let q = RECENT.lock().unwrap_or_else(|p| p.into_inner());
    q.iter().skip(q.len().saturating_sub(n)).cloned().collect()
}

/// `RUST_LOG` when set, else `default`. (The BitTorrent engine logs through
/// `tracing`, which is not bridged: its span records would arrive as
/// errors.)
pub fn logger(default: &str) -> env_logger::Builder {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
}

/// Prints a line to stdout. A closed pipe (`voi-server ctl ... | head`) is
/// not an error worth a panic: the reader has what it wanted.
pub fn print_line(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|_| out.flush());
}

/// Takes the hard limit on open files as the soft one, as a systemd unit's
/// LimitNOFILE would: for a process that holds a socket per terminal.
pub fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                log::warn!("open files stay at {soft}: {e}");
            }
        }
    }
}

/// Waits for SIGTERM or Ctrl-C.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Progress of several transfers on one terminal screen: a bar each when
/// stderr is a terminal, else one plain line whenever a transfer moves by a
/// tenth or changes state (so a log or a pipe stays readable).
pub struct ProgressBoard {
    bars: Option<indicatif::MultiProgress>,
    rows: std::collections::BTreeMap<String, Row>,
}

struct Row {
    bar: Option<indicatif::ProgressBar>,
    percent: u64,
    state: String,
    done: bool,
}

impl Default for ProgressBoard {
    fn default() -> Self {
        Self::new()
    }
}

impl ProgressBoard {
    pub fn new() -> ProgressBoard {
        use std::io::IsTerminal;
        ProgressBoard {
            bars: std::io::stderr()
                .is_terminal()
                .then(indicatif::MultiProgress::new),
            rows: Default::default(),
        }
    }

    fn row(&mut self, key: &str) -> &mut Row {
        let bars = self.bars.clone();
        self.rows.entry(key.to_string()).or_insert_with(|| {
            let bar = bars.map(|m| {
                let b = m.add(indicatif::ProgressBar::new(100));
                let style = indicatif::ProgressStyle::with_template(
                    "{prefix:48} [{bar:30}] {pos:>3}% {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> ");
                b.set_style(style);
                b.set_prefix(key.to_string());
                b
            });
            Row {
                bar,
                percent: 0,
                state: String::new(),
                done: false,
            }
        })
    }

    /// A transfer at `percent` (0..=100) in `state` (downloading, ...).
    pub fn update(&mut self, key: &str, percent: u64, state: &str) {
        let percent = percent.min(100);
        let row = self.row(key);
        if row.done {
            return;
        }
        let moved = percent / 10 != row.percent / 10 || row.state != state;
        row.percent = percent;
        row.state = state.to_string();
        match &row.bar {
            Some(b) => {
                b.set_position(percent);
                b.set_message(state.to_string());
            }
            None if moved => print_line(&format!("{key}: {percent}% {state}")),
            None => {}
        }
    }

    /// A transfer ended, well or not.
    pub fn finish(&mut self, key: &str, ok: bool, note: &str) {
        let row = self.row(key);
        if row.done {
            return;
        }
        row.done = true;
        if !ok {
            row.state = "failed".into();
        }
        let text = if ok {
            format!("done {note}")
        } else {
            format!("FAILED {note}")
        };
        match &row.bar {
            Some(b) => {
                if ok {
                    b.set_position(100);
                }
                b.finish_with_message(text);
            }
            None => print_line(&format!("{key}: {text}")),
        }
    }

    /// Whether every transfer shown has ended.
    pub fn all_done(&self) -> bool {
        !self.rows.is_empty() && self.rows.values().all(|r| r.done)
    }

    pub fn failed(&self) -> usize {
        self.rows
            .values()
            .filter(|r| r.done && r.state == "failed")
            .count()
    }
}
