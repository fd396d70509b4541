//! Prometheus metrics of the server (`GET /metrics` on the operator
//! listener), with `prometheus-client`: counters kept as things happen, and
//! gauges read from the server's state at each scrape. Names follow the
//! Prometheus conventions: `voi_server_…`, `_total` for counters, units in
//! the name.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub command: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandName {
    pub command: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms to ~30 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// What is counted as it happens.
pub struct ServerMetrics {
    pub sessions_opened: Counter,
    pub sessions_closed: Counter,
    pub logins: Counter,
    pub login_rejections: Family<Reason, Counter>,
    pub commands: Family<CommandLabels, Counter>,
    pub command_seconds: Family<CommandName, Histogram, fn() -> Histogram>,
    /// Operator API writes refused for their token: `unauthenticated`
    /// (401) or `read_only` (403). Counted, not audited (issue 38.9).
    pub api_refusals: Family<Reason, Counter>,
    pub api_refusal_log: std::sync::Mutex<super::limits::LogThrottle>,
}

impl Default for ServerMetrics {
    fn default() -> Self {
        ServerMetrics {
            sessions_opened: Counter::default(),
            sessions_closed: Counter::default(),
            logins: Counter::default(),
            login_rejections: Family::default(),
            commands: Family::default(),
            command_seconds: Family::new_with_constructor(latency_histogram),
            api_refusals: Family::default(),
            api_refusal_log: Default::default(),
        }
    }
}

impl ServerMetrics {
    pub fn command(&self, command: &str, result: &str, took: Duration) {
        self.commands
            .get_or_create(&CommandLabels {
                command: command.into(),
                result: result.into(),
            })
            .inc();
        self.command_seconds
            .get_or_create(&CommandName {
                command: command.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// A refused login, by the kind of reason (a bounded label set).
    pub fn rejected(&self, why: &str) {
        let w = why.to_ascii_lowercase();
        let reason = if w.contains("certificate") {
            "certificate"
        } else if w.contains("reject") {
            "rejected"
        } else if w.contains("pending") || w.contains("waiting") {
            "pending_full"
        } else if w.contains("mac") {
            "bad_mac"
        } else {
            "other"
        };
        self.reject_reason(reason);
    }

    /// An API write refused for its token (401 or 403): a counter and, at
    /// most once a minute, a log line; never an audit entry, so no caller
    /// without a token can evict what token holders did.
    pub fn api_refused(&self, status: u16, from: &str, what: &str) {
        let reason = if status == 401 {
            "unauthenticated"
        } else {
            "read_only"
        };
        self.api_refusals
            .get_or_create(&Reason {
                reason: reason.into(),
            })
            .inc();
        let due = self
            .api_refusal_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .due();
        if let Some(n) = due {
            log::warn!(
                "operator API: {n} request(s) refused for their token since the last report (latest: {status} for {what} from {from}); refusals are counted in voi_server_api_refusals_total, not audited"
            );
        }
    }

    fn reject_reason(&self, reason: &str) {
        self.login_rejections
            .get_or_create(&Reason {
                reason: reason.into(),
            })
            .inc();
    }
}
