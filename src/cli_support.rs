//! What both command lines use: logging, printing, waiting for a signal.

/// Logging to stderr, `RUST_LOG` style, default info.
pub fn init_logging() {
    let _ = logger("info").format_timestamp_millis().try_init();
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
