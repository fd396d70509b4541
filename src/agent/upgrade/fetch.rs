//! Fetching a package: the manifest (small, bounded) and the binary, with
//! resume from what a cut left in the partial file, the manifest's size as
//! the limit, and its sha256 checked before anything is installed.

use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::upgrade_package::{UpgradeManifest, MAX_MANIFEST_BYTES};

fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(30))
        // The URL was checked to name the server this agent is connected
        // to (`upgrade::check`); a redirect must not lead elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())
}

pub async fn manifest(url: &str) -> Result<UpgradeManifest, String> {
    let mut resp = client()?
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url}: {}", resp.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{url}: {e}"))? {
        body.extend_from_slice(&chunk);
        if body.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(format!(
                "{url}: the manifest is over {MAX_MANIFEST_BYTES} bytes"
            ));
        }
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url}: not a package manifest: {e}"))
}

fn checked(url: &str, part: &Path, m: &UpgradeManifest) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(part).map_err(|e| format!("{}: {e}", part.display()))?;
    if bytes.len() as u64 != m.size {
        return Err(format!(
            "{url}: {} bytes of the {} the manifest names",
            bytes.len(),
            m.size
        ));
    }
    let sha = crate::bt::manifest::to_hex(&Sha256::digest(&bytes));
    if sha != m.sha256 {
        let _ = std::fs::remove_file(part);
        return Err(format!(
            "{url}: sha256 {sha} is not the manifest's {}",
            m.sha256
        ));
    }
    Ok(bytes)
}

/// The whole binary, resumed from `part`, checked against the manifest.
pub async fn binary(url: &str, part: &Path, m: &UpgradeManifest) -> Result<Vec<u8>, String> {
    let have = std::fs::metadata(part).map(|md| md.len()).unwrap_or(0);
    if have == m.size {
        // A cut after the last byte: what is there may be all of it.
        if let Ok(bytes) = checked(url, part, m) {
            return Ok(bytes);
        }
    }
    let have = if have >= m.size { 0 } else { have };
    let mut req = client()?.get(url);
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut resp = req.send().await.map_err(|e| format!("{url}: {e}"))?;
    let resumed = resp.status() == reqwest::StatusCode::PARTIAL_CONTENT && have > 0;
    if !resp.status().is_success() {
        return Err(format!("{url}: {}", resp.status()));
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(part)
        .map_err(|e| format!("{}: {e}", part.display()))?;
    let mut len = if resumed { have } else { 0 };
    if resumed {
        log::info!("upgrade: resuming {url} at {have} bytes");
    }
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{url}: {e}"))? {
        len += chunk.len() as u64;
        if len > m.size {
            drop(file);
            let _ = std::fs::remove_file(part);
            return Err(format!(
                "{url}: more than the {} bytes the manifest names",
                m.size
            ));
        }
        file.write_all(&chunk)
            .map_err(|e| format!("{}: {e}", part.display()))?;
    }
    file.sync_all().map_err(|e| e.to_string())?;
    drop(file);
    let bytes = std::fs::read(part).map_err(|e| format!("{}: {e}", part.display()))?;
    if bytes.len() as u64 != m.size {
        return Err(format!(
            "{url}: {} bytes of the {} the manifest names",
            bytes.len(),
            m.size
        ));
    }
    let sha = crate::bt::manifest::to_hex(&Sha256::digest(&bytes));
    if sha != m.sha256 {
        let _ = std::fs::remove_file(part);
        return Err(format!(
            "{url}: sha256 {sha} is not the manifest's {}",
            m.sha256
        ));
    }
    Ok(bytes)
}
