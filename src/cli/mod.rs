//! Command lines of the two binaries; `src/bin/*` only call in here.
pub mod agent;
pub mod server;

/// Logging to stderr, `RUST_LOG` style, default info.
pub fn init_logging() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .try_init();
}
