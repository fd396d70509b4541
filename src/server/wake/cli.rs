//! `voi-server ctl wake`, `ctl room` and `ctl schedule`: the operator's
//! side of powering a room on and off.

use clap::Subcommand;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

use crate::protocol::Envelope;
use crate::server::client::ApiClient;

#[derive(Debug, Subcommand)]
pub enum ScheduleCmd {
    /// The schedule, the server's clock, and what it did lately.
    Show,
    /// Add one entry.
    Add {
        /// The room (terminals put there with `ctl room`).
        #[arg(long)]
        room: String,
        /// HH:MM, the server's local time.
        #[arg(long)]
        at: String,
        /// wake or shutdown.
        #[arg(long)]
        action: String,
        /// Days, e.g. mon,tue,wed,thu,fri; every day when absent.
        #[arg(long, value_delimiter = ',')]
        days: Vec<String>,
        /// A shutdown leaves on a terminal that is still downloading.
        #[arg(long)]
        unless_downloading: bool,
        /// A shutdown is announced to our agents this long before.
        #[arg(long, default_value_t = 300)]
        warn_secs: u32,
    },
    /// Remove the entry with this id.
    Remove { id: String },
    /// Replace the whole schedule with a JSON list from a file.
    Put { file: std::path::PathBuf },
}

fn show(env: &Envelope<Value>) -> anyhow::Result<()> {
    crate::cli_support::print_line(&serde_json::to_string_pretty(env)?);
    if env.is_ok() {
        Ok(())
    } else {
        anyhow::bail!("server answered {} {}", env.code, env.msg)
    }
}

/// `ctl wake`: sends, prints each terminal's routes, and with `wait`
/// follows each until it is online or its time is up.
pub async fn wake(c: &ApiClient, body: Value, wait: bool) -> anyhow::Result<()> {
    let env = c.post("/api/v1/wake", &body).await?;
    if !env.is_ok() {
        anyhow::bail!("server answered {} {}", env.code, env.msg);
    }
    let results = env
        .data
        .as_ref()
        .and_then(|d| d["results"].as_array().cloned())
        .unwrap_or_default();
    let mut pending: BTreeMap<String, u64> = BTreeMap::new();
    let mut failed = 0;
    for r in &results {
        let mac = r["mac"].as_str().unwrap_or_default().to_string();
        crate::cli_support::print_line(&format!("{mac}: {}", r["text"].as_str().unwrap_or("")));
        match r["state"].as_str() {
            Some("sent") => {
                pending.insert(mac, r["timeout_secs"].as_u64().unwrap_or(180));
            }
            Some("failed") => failed += 1,
            _ => {}
        }
    }
    if wait && !pending.is_empty() {
        let longest = pending.values().copied().max().unwrap_or(180);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(longest + 5);
        let query = pending.keys().cloned().collect::<Vec<_>>().join(",");
        while !pending.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let env = match c.get(&format!("/api/v1/wake?macs={query}")).await {
                Ok(e) => e,
                // The server restarted: its wakes are gone, say so below.
                Err(_) => continue,
            };
            for r in env
                .data
                .as_ref()
                .and_then(|d| d["results"].as_array().cloned())
                .unwrap_or_default()
            {
                let mac = r["mac"].as_str().unwrap_or_default();
                let state = r["state"].as_str().unwrap_or_default();
                if state != "sent" && pending.remove(mac).is_some() {
                    crate::cli_support::print_line(&format!(
                        "{mac}: {}",
                        r["text"].as_str().unwrap_or("")
                    ));
                    if state != "online" {
                        failed += 1;
                    }
                }
            }
        }
        for mac in pending.keys() {
            crate::cli_support::print_line(&format!("{mac}: no answer from the server about it"));
            failed += 1;
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} terminals did not wake", results.len());
    }
    Ok(())
}

pub async fn room(c: &ApiClient, macs: &str, room: &str) -> anyhow::Result<()> {
    for mac in macs.split(',').filter(|m| !m.is_empty()) {
        let env = c
            .put(
                &format!("/api/v1/terminals/{mac}/room"),
                &json!({ "room": room }),
            )
            .await?;
        if !env.is_ok() {
            anyhow::bail!("{mac}: server answered {} {}", env.code, env.msg);
        }
        crate::cli_support::print_line(&format!("{mac}: room {room:?}"));
    }
    Ok(())
}

pub async fn schedule(c: &ApiClient, what: ScheduleCmd) -> anyhow::Result<()> {
    let entries = |env: &Envelope<Value>| -> Vec<Value> {
        env.data
            .as_ref()
            .and_then(|d| d["entries"].as_array().cloned())
            .unwrap_or_default()
    };
    match what {
        ScheduleCmd::Show => show(&c.get("/api/v1/schedule").await?),
        ScheduleCmd::Add {
            room,
            at,
            action,
            days,
            unless_downloading,
            warn_secs,
        } => {
            let cur = c.get("/api/v1/schedule").await?;
            if !cur.is_ok() {
                return show(&cur);
            }
            let mut list = entries(&cur);
            list.push(json!({
                "room": room,
                "at": at,
                "action": action,
                "days": days,
                "unless": if unless_downloading { json!(["downloading"]) } else { json!([]) },
                "warn_secs": warn_secs,
            }));
            show(&c.put("/api/v1/schedule", &list).await?)
        }
        ScheduleCmd::Remove { id } => {
            let cur = c.get("/api/v1/schedule").await?;
            if !cur.is_ok() {
                return show(&cur);
            }
            let mut list = entries(&cur);
            let before = list.len();
            list.retain(|e| e["id"].as_str() != Some(id.as_str()));
            if list.len() == before {
                anyhow::bail!("no schedule entry has id {id:?}");
            }
            show(&c.put("/api/v1/schedule", &list).await?)
        }
        ScheduleCmd::Put { file } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let list: Value = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            show(&c.put("/api/v1/schedule", &list).await?)
        }
    }
}
