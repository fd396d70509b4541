//! What both command lines use: logging, printing, waiting for a signal.

/// Logging to stderr, `RUST_LOG` style, default info.
/// `--version`: the crate version and the commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("VOI_COMMIT"),
    ")"
);

/// How log lines are written: `text` for people (the default), `json` for
/// a collector, one object a line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The environment variable that picks the format; it wins over the
/// configuration's `log_format`.
pub const LOG_FORMAT_ENV: &str = "VOI_LOG_FORMAT";

static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The agent's own MAC, once known: every line the agent writes concerns
/// that one terminal. (Only records from `voi::agent`, so a demo that runs
/// a server in the same process does not stamp the server's lines.)
static AGENT_MAC: std::sync::OnceLock<String> = std::sync::OnceLock::new();

pub fn init_logging() {
    if let Ok(v) = std::env::var(LOG_FORMAT_ENV) {
        match v.trim().to_ascii_lowercase().as_str() {
            "json" => JSON_LOGS.store(true, std::sync::atomic::Ordering::Relaxed),
            "text" | "" => {}
            other => eprintln!("{LOG_FORMAT_ENV}={other:?} is neither text nor json; writing text"),
        }
    }
    let inner = logger("info")
        .format(|buf, record| {
            use std::io::Write;
            if JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
                writeln!(buf, "{}", json_line(record))
            } else {
                writeln!(
                    buf,
                    "[{} {:<5} {}] {}",
                    buf.timestamp_millis(),
                    record.level(),
                    record.target(),
                    escape_controls(&record.args().to_string())
                )
            }
        })
        .build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(Tee { inner })).is_ok() {
        log::set_max_level(max);
    }
}

/// A log message with its control characters written out (`\n`, `\r`,
/// `\t`, `\u{1b}`…): every text line goes through here, so a value from
/// the network (a 9001 ip, a command answer's msg, a decoded API path)
/// can neither start a forged line nor move a terminal's cursor
/// (issue 38.10). JSON lines are escaped by the JSON writer.
pub fn escape_controls(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The configuration's `log_format`, unless `VOI_LOG_FORMAT` chose already.
pub fn set_log_format(format: LogFormat) {
    if std::env::var_os(LOG_FORMAT_ENV).is_none() {
        JSON_LOGS.store(
            format == LogFormat::Json,
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

/// Stamps the agent's MAC on its lines from now on.
pub fn set_agent_mac(mac: &str) {
    let _ = AGENT_MAC.set(mac.to_string());
}

/// One record as a JSON object: `ts`, `level`, `target`, `msg`, and the
/// record's key-values as fields. A line that concerns one terminal gets
/// its `mac`: from the record's own fields, else the agent's MAC, else the
/// one MAC the message names (a message naming several gets `macs`).
fn json_line(record: &log::Record) -> String {
    use serde_json::{Map, Value};
    struct Fields<'a>(&'a mut Map<String, Value>);
    impl<'kvs> log::kv::VisitSource<'kvs> for Fields<'_> {
        fn visit_pair(
            &mut self,
            key: log::kv::Key<'kvs>,
            value: log::kv::Value<'kvs>,
        ) -> Result<(), log::kv::Error> {
            let v = if let Some(n) = value.to_i64() {
                Value::from(n)
            } else if let Some(n) = value.to_u64() {
                Value::from(n)
            } else if let Some(b) = value.to_bool() {
                Value::from(b)
            } else {
                Value::from(value.to_string())
            };
            self.0.insert(key.as_str().to_string(), v);
            Ok(())
        }
    }
    let msg = record.args().to_string();
    let mut obj = Map::new();
    obj.insert(
        "ts".into(),
        Value::from(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
    );
    obj.insert("level".into(), Value::from(record.level().as_str()));
    obj.insert("target".into(), Value::from(record.target()));
    obj.insert("msg".into(), Value::from(msg.as_str()));
    let mut fields = Map::new();
    let _ = record.key_values().visit(&mut Fields(&mut fields));
    if !fields.contains_key("mac") {
        let agent_line = record.target().starts_with("voi::agent");
        match AGENT_MAC.get().filter(|_| agent_line) {
            Some(mac) => {
                fields.insert("mac".into(), Value::from(mac.as_str()));
            }
            None => {
                let named = macs_in(&msg);
                match named.len() {
                    0 => {}
                    1 => {
                        fields.insert("mac".into(), Value::from(named[0].as_str()));
                    }
                    _ => {
                        fields.insert("macs".into(), Value::from(named));
                    }
                }
            }
        }
    }
    for (k, v) in fields {
        // A field never hides the line's own keys.
        obj.entry(k).or_insert(v);
    }
    Value::Object(obj).to_string()
}

/// The distinct MACs (`AA:BB:CC:DD:EE:FF`, or with `-`) a message names,
/// normalised, in order.
fn macs_in(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i + 17 <= b.len() {
        let cand = &b[i..i + 17];
        let shaped = cand.iter().enumerate().all(|(j, c)| {
            if j % 3 == 2 {
                *c == b':' || *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
        let bounded = match i.checked_sub(1).map(|p| b[p]) {
            None => true,
            Some(b':' | b'-') => i < 2 || !b[i - 2].is_ascii_hexdigit(),
            Some(c) => !c.is_ascii_alphanumeric(),
        } && match b.get(i + 17) {
            None => true,
            // "AA:…:FF: logged in" ends there; "…:FF:60" goes on.
            Some(b':' | b'-') => b.get(i + 18).is_none_or(|c| !c.is_ascii_hexdigit()),
            Some(c) => !c.is_ascii_alphanumeric(),
        };
        if shaped && bounded {
            if let Some(m) = std::str::from_utf8(cand)
                .ok()
                .and_then(crate::protocol::normalize_mac)
            {
                if !out.contains(&m) {
                    out.push(m);
                }
            }
            i += 17;
        } else {
            i += 1;
        }
    }
    out
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
            escape_controls(&record.args().to_string())
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

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_written_out_not_obeyed() {
        assert_eq!(
            super::escape_controls("10.0.0.9\n[2026 INFO voi::server] forged"),
            "10.0.0.9\\n[2026 INFO voi::server] forged"
        );
        assert_eq!(
            super::escape_controls("a\r\tb\u{1b}[2J\u{7f}"),
            "a\\r\\tb\\u{1b}[2J\\u{7f}"
        );
        assert!(matches!(
            super::escape_controls("plain ümlaut"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    use super::*;

    fn record_line(target: &str, msg: std::fmt::Arguments) -> serde_json::Value {
        let r = log::Record::builder()
            .args(msg)
            .level(log::Level::Info)
            .target(target)
            .build();
        serde_json::from_str(&json_line(&r)).expect("one JSON object")
    }

    #[test]
    fn a_json_line_has_its_keys_and_the_terminal_it_concerns() {
        let v = record_line(
            "voi::server::registry",
            format_args!("52:54:00:0a:00:01 logged in from 127.0.0.1 \"quoted\"\n"),
        );
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "voi::server::registry");
        assert_eq!(v["mac"], "52:54:00:0A:00:01");
        assert!(v["msg"].as_str().is_some_and(|m| m.contains("\"quoted\"")));
        assert!(v["ts"].as_str().is_some_and(|t| t.ends_with('Z')));
        let two = record_line(
            "voi::server::registry",
            format_args!("two terminals claim AA-00-00-00-00-01: AA:00:00:00:00:02"),
        );
        assert_eq!(two["macs"].as_array().map(|a| a.len()), Some(2), "{two}");
        assert!(two.get("mac").is_none());
        let none = record_line(
            "voi::server",
            format_args!("hash 0a:1b:2c:3d:4e:5f:60 is not one"),
        );
        assert!(none.get("mac").is_none(), "{none}");
    }

    #[test]
    fn a_record_field_is_a_json_field() {
        let kvs: &[(&str, i64)] = &[("code", 1004)];
        let r = log::Record::builder()
            .args(format_args!("answered"))
            .level(log::Level::Warn)
            .target("voi::server")
            .key_values(&kvs)
            .build();
        let v: serde_json::Value = serde_json::from_str(&json_line(&r)).expect("json");
        assert_eq!(v["code"], 1004);
        assert_eq!(v["level"], "WARN");
    }
}
