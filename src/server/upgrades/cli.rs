//! `ctl upgrade-publish`, `ctl upgrades` and `ctl upgrade`: releasing an
//! agent version to a room, a few terminals at a time.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

use crate::server::client::ApiClient;

pub async fn publish(
    c: &ApiClient,
    file: &std::path::Path,
    platform: &str,
    version: &str,
    raw: bool,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let env = c
        .put_bytes(
            &format!(
                "/api/v1/upgrades/{platform}/{version}{}",
                if raw { "?raw=true" } else { "" }
            ),
            bytes,
        )
        .await?;
    crate::cli_support::print_line(&serde_json::to_string_pretty(&env)?);
    if env.is_ok() {
        Ok(())
    } else {
        anyhow::bail!("server answered {} {}", env.code, env.msg)
    }
}

/// The outcome of one terminal's upgrade to `version`, once there is one.
fn outcome(row: &Value, version: &str) -> Option<(bool, String)> {
    let u = &row["upgrade"];
    if u["version"].as_str() != Some(version) {
        return None;
    }
    match u["state"].as_str() {
        Some("installed") if u["running"].as_str() == Some(version) => {
            Some((true, format!("runs {version}")))
        }
        Some("rolled_back") => Some((
            false,
            format!("rolled back: {}", u["reason"].as_str().unwrap_or("")),
        )),
        Some("failed") => Some((
            false,
            format!("refused: {}", u["reason"].as_str().unwrap_or("")),
        )),
        _ => None,
    }
}

/// Sends 1030 to `batch` terminals at a time and, unless `no_wait`, waits
/// for each batch to run the version (or roll back) before the next; a
/// batch with a failure stops the rollout.
/// What `ctl upgrade` was asked.
pub struct Rollout {
    pub macs: Option<String>,
    pub all: bool,
    pub version: String,
    pub batch: usize,
    pub force: bool,
    pub no_wait: bool,
    pub wait_secs: u64,
}

pub async fn rollout(c: &ApiClient, r: Rollout) -> anyhow::Result<()> {
    let Rollout {
        macs,
        all,
        version,
        batch,
        force,
        no_wait,
        wait_secs,
    } = r;
    let version = version.as_str();
    let macs: Vec<String> = if all {
        let env = c.get("/api/v1/upgrades").await?;
        env.data
            .as_ref()
            .and_then(|d| d["terminals"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter(|t| t["online"] == true && t["version"].as_str() != Some(version))
            .filter_map(|t| t["mac"].as_str().map(str::to_string))
            .collect()
    } else {
        macs.unwrap_or_default()
            .split(',')
            .filter(|m| !m.is_empty())
            .map(|m| {
                crate::protocol::normalize_mac(m)
                    .ok_or_else(|| anyhow::anyhow!("{m:?} is not a MAC"))
            })
            .collect::<anyhow::Result<_>>()?
    };
    if macs.is_empty() {
        anyhow::bail!("no terminal to upgrade (all online ones run {version} already?)");
    }
    let mut failed = 0;
    for (n, chunk) in macs.chunks(batch.max(1)).enumerate() {
        crate::cli_support::print_line(&format!("batch {}: {}", n + 1, chunk.join(", ")));
        let env = c
            .post(
                "/api/v1/upgrades/push",
                &json!({ "macs": chunk, "version": version, "force": force }),
            )
            .await?;
        if !env.is_ok() {
            anyhow::bail!("server answered {} {}", env.code, env.msg);
        }
        let mut waiting: BTreeMap<String, ()> = BTreeMap::new();
        for r in env
            .data
            .as_ref()
            .and_then(|d| d["results"].as_array().cloned())
            .unwrap_or_default()
        {
            let mac = r["mac"].as_str().unwrap_or_default().to_string();
            crate::cli_support::print_line(&format!("{mac}: {}", r["text"].as_str().unwrap_or("")));
            if r["ok"] == true {
                waiting.insert(mac, ());
            } else {
                failed += 1;
            }
        }
        if no_wait {
            continue;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait_secs);
        while !waiting.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let Ok(env) = c.get("/api/v1/upgrades").await else {
                continue;
            };
            for t in env
                .data
                .as_ref()
                .and_then(|d| d["terminals"].as_array().cloned())
                .unwrap_or_default()
            {
                let mac = t["mac"].as_str().unwrap_or_default().to_string();
                if !waiting.contains_key(&mac) {
                    continue;
                }
                if let Some((ok, text)) = outcome(&t, version) {
                    waiting.remove(&mac);
                    crate::cli_support::print_line(&format!("{mac}: {text}"));
                    if !ok {
                        failed += 1;
                    }
                }
            }
        }
        for mac in waiting.keys() {
            crate::cli_support::print_line(&format!("{mac}: no outcome within {wait_secs} s"));
            failed += 1;
        }
        if failed > 0 {
            anyhow::bail!("{failed} terminal(s) did not upgrade; the rollout stops here");
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} terminal(s) were refused");
    }
    Ok(())
}
