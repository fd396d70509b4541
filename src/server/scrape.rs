//! The scrape behind `GET /metrics`: the counters of `metrics.rs`, and
//! gauges read from the server's state at that moment (so nothing has to
//! keep them in step as terminals come and go).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TerminalLabels {
    state: String,
    generation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LayerLabel {
    layer: String,
}

/// The transfer states a label may carry. A 9025 `state` is the terminal's
/// own string: anything else is counted as `other`, so a report can neither
/// write into the exposition (the metrics crate does not escape label
/// values) nor add series (issue 38.6).
const TRANSFER_STATES: &[&str] = &[
    "downloading",
    "finished",
    "seeding",
    "checking",
    "paused",
    "queued",
    "waiting",
    "stopped",
    "error",
    "failed",
    "unknown",
];

fn transfer_state_label(state: Option<&str>) -> &'static str {
    let state = state.unwrap_or("unknown");
    TRANSFER_STATES
        .iter()
        .find(|s| **s == state)
        .copied()
        .unwrap_or("other")
}

/// The text exposition of every metric, now.
pub fn render(server: &super::service::Server) -> String {
    let m = &server.metrics;
    let mut r = Registry::default();
    r.register(
        "voi_server_sessions_opened",
        "Terminal connections accepted",
        m.sessions_opened.clone(),
    );
    r.register(
        "voi_server_sessions_closed",
        "Terminal connections closed",
        m.sessions_closed.clone(),
    );
    r.register(
        "voi_server_logins",
        "Logins accepted (9001)",
        m.logins.clone(),
    );
    r.register(
        "voi_server_login_rejections",
        "Logins refused, by reason",
        m.login_rejections.clone(),
    );
    r.register(
        "voi_server_commands",
        "Commands pushed to terminals, by command and result",
        m.commands.clone(),
    );
    r.register(
        "voi_server_command_duration_seconds",
        "From a command sent to its reply",
        m.command_seconds.clone(),
    );

    r.register(
        "voi_server_api_refusals",
        "Operator API writes refused for their token (401 none or wrong, 403 read-only)",
        m.api_refusals.clone(),
    );

    // Terminals by state and generation.
    let terminals: Family<TerminalLabels, Gauge> = Family::default();
    let status = server.registry.status(server.cfg.offline_after());
    for rec in server.store.terminals().unwrap_or_default() {
        use super::admission::Admission;
        let state = match (rec.admission, status.get(&rec.config.mac)) {
            (Admission::Pending, _) => "pending",
            (Admission::Rejected, _) => "rejected",
            (_, Some((true, _, _))) => "online",
            _ => "offline",
        };
        let generation = if rec.wake.is_some() {
            "voi-agent"
        } else if rec.generation().url_generation {
            "vendor-2.25+"
        } else {
            "vendor"
        };
        terminals
            .get_or_create(&TerminalLabels {
                state: state.into(),
                generation: generation.into(),
            })
            .inc();
    }
    r.register(
        "voi_server_terminals",
        "Terminals by state and generation",
        terminals,
    );

    let transfers: Family<StateLabel, Gauge> = Family::default();
    for rec in server.store.terminals().unwrap_or_default() {
        for (k, v) in &rec.reports {
            if k.starts_with("bt_task:") {
                let state = transfer_state_label(v["state"].as_str()).to_string();
                transfers.get_or_create(&StateLabel { state }).inc();
            }
        }
    }
    r.register(
        "voi_server_transfers",
        "Layer transfers terminals report, by state",
        transfers,
    );

    let seeded: Family<LayerLabel, Counter> = Family::default();
    for img in server.images.status() {
        seeded
            .get_or_create(&LayerLabel { layer: img.layer })
            .inc_by(img.uploaded_bytes);
    }
    r.register(
        "voi_server_seeded_bytes",
        "Bytes the seeder sent, per layer",
        seeded,
    );

    let (swarms, peers) = server.tracker.totals();
    let g = Gauge::<i64>::default();
    g.set(swarms as i64);
    r.register(
        "voi_server_tracker_swarms",
        "Torrents the tracker holds peers for",
        g,
    );
    let g = Gauge::<i64>::default();
    g.set(peers as i64);
    r.register("voi_server_tracker_peers", "Peers the tracker holds", g);

    let g = Gauge::<i64>::default();
    g.set(
        std::fs::metadata(server.cfg.data_dir.join("voi-server.redb"))
            .map(|m| m.len() as i64)
            .unwrap_or(0),
    );
    r.register("voi_server_store_bytes", "Size of the store file", g);
    r.register(
        "voi_server_store_commit_duration_seconds",
        "Store write transactions, commit included",
        server.store.commit_seconds.clone(),
    );
    let g = Gauge::<i64>::default();
    g.set(server.counters.event_readers.load(Ordering::Relaxed) as i64);
    r.register("voi_server_event_readers", "Open /api/v1/events streams", g);
    let g = Gauge::<i64>::default();
    g.set(server.counters.connections.load(Ordering::Relaxed) as i64);
    r.register("voi_server_connections", "Open terminal connections", g);

    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &r) {
        log::error!("metrics: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminals_state_string_never_becomes_a_label_of_its_own() {
        assert_eq!(transfer_state_label(Some("seeding")), "seeding");
        assert_eq!(transfer_state_label(None), "unknown");
        for forged in [
            "x\"} 1\nvoi_server_terminals{state=\"online\"} 31337\n#",
            "Seeding",
            "",
            &"a".repeat(4000),
        ] {
            assert_eq!(transfer_state_label(Some(forged)), "other");
        }
    }
}
