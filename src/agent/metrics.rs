//! The agent's Prometheus metrics, on an optional listener (`metrics_listen`,
//! off by default, loopback only): a terminal's exporter is for a local
//! scraper or an SSH tunnel, never for the classroom LAN. A node-exporter
//! textfile was the other choice; a listener needs no file writes on a
//! terminal's flash and is read fresh at every scrape.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;

use crate::agent::terminal::Agent;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LayerLabels {
    layer: String,
    kind: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

fn gauge(v: i64) -> Gauge {
    let g = Gauge::<i64>::default();
    g.set(v);
    g
}

fn counter(v: u64) -> Counter {
    let c = Counter::<u64>::default();
    c.inc_by(v);
    c
}

pub fn render(agent: &Agent) -> String {
    let mut r = Registry::default();
    let live = agent.live();
    r.register(
        "voi_agent_session_logged_in",
        "1 while a session with the server is logged in",
        gauge(i64::from(live.session.starts_with("logged_in"))),
    );
    r.register(
        "voi_agent_server_unreachable",
        "1 while the server cannot be reached",
        gauge(i64::from(live.unreachable_since.is_some())),
    );
    r.register(
        "voi_agent_logins",
        "Sessions logged in since the agent started (reconnects are logins after the first)",
        counter(live.logins),
    );
    let bytes: Family<LayerLabels, Gauge> = Family::default();
    let rate: Family<LayerLabels, Gauge> = Family::default();
    let mut failures = 0u64;
    if let Some(t) = agent.transfers.get() {
        for (rec, stats) in t.list() {
            let labels = LayerLabels {
                layer: rec.layer.clone(),
                kind: format!("{:?}", rec.kind).to_ascii_lowercase(),
                state: stats
                    .as_ref()
                    .map(|s| s.phase.wire().to_string())
                    .unwrap_or_else(|| "stopped".into()),
            };
            if let Some(s) = stats {
                bytes.get_or_create(&labels).set(s.have_bytes as i64);
                rate.get_or_create(&labels).set(s.down_bps as i64);
            }
        }
        failures = t.refusals().len() as u64;
    }
    r.register(
        "voi_agent_transfer_bytes",
        "Bytes of a layer this terminal has",
        bytes,
    );
    r.register(
        "voi_agent_transfer_download_bytes_per_second",
        "Download rate of a layer",
        rate,
    );
    r.register(
        "voi_agent_verification_failures",
        "Layers refused for their content (manifest, signature, chain), kept durably",
        counter(failures),
    );
    r.register(
        "voi_agent_disk_free_bytes",
        "Free space where the disk chains are",
        gauge(agent.desktops.store.free_bytes() as i64),
    );
    let desktop = agent.desktop.status();
    let states: Family<StateLabel, Gauge> = Family::default();
    states
        .get_or_create(&StateLabel {
            state: desktop.state.clone(),
        })
        .set(1);
    r.register(
        "voi_agent_desktop_state",
        "The desktop runtime's state (1 for the current one)",
        states,
    );
    r.register(
        "voi_agent_desktop_boots",
        "Desktop boots since the agent started",
        counter(u64::from(desktop.boots)),
    );
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &r) {
        log::error!("metrics: {e}");
    }
    out
}

/// Serves `/metrics` on `listen` (a loopback address) until the agent stops.
pub async fn serve(agent: Arc<Agent>, listen: String) {
    let addr: std::net::SocketAddr = match listen.parse() {
        Ok(a) => a,
        Err(e) => {
            log::error!("metrics_listen {listen:?}: {e}");
            return;
        }
    };
    if !addr.ip().is_loopback() {
        log::error!("metrics_listen {addr}: only a loopback address is served");
        return;
    }
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            log::error!("metrics_listen {addr}: {e}");
            return;
        }
    };
    log::info!("metrics on http://{addr}/metrics");
    let stop = agent.shutdown.clone();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let agent = agent.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    render(&agent),
                )
            }
        }),
    );
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
}
