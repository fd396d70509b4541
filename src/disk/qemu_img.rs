//! `qemu-img`, always with JSON output; human-readable text is never parsed.

use serde_json::Value;
use std::path::Path;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum QemuImgError {
    #[error("cannot run qemu-img: {0}")]
    Spawn(std::io::Error),
    #[error("qemu-img {args}: {status}: {stderr}")]
    Failed {
        args: String,
        status: String,
        stderr: String,
    },
    #[error("qemu-img {0}: unreadable JSON: {1}")]
    Json(String, serde_json::Error),
}

fn run(args: &[&str]) -> Result<Vec<u8>, QemuImgError> {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .map_err(QemuImgError::Spawn)?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(QemuImgError::Failed {
            args: args.join(" "),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap_or("")
}

pub fn info(path: &Path) -> Result<Value, QemuImgError> {
    let out = run(&["info", "--output=json", "-U", p(path)])?;
    serde_json::from_slice(&out).map_err(|e| QemuImgError::Json("info".into(), e))
}

/// `qemu-img check`: Ok with the JSON report when the image has no
/// corruption (leaks are harmless and reported, not failed).
pub fn check(path: &Path) -> Result<Value, QemuImgError> {
    let out = Command::new("qemu-img")
        .args(["check", "--output=json", "-U", p(path)])
        .output()
        .map_err(QemuImgError::Spawn)?;
    let report: Value = match serde_json::from_slice(&out.stdout) {
        Ok(v) => v,
        // No report at all: qemu-img could not open the image (or its
        // backing file); its words say why.
        Err(_) if !out.status.success() => {
            return Err(QemuImgError::Failed {
                args: format!("check {}", path.display()),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
        Err(e) => return Err(QemuImgError::Json("check".into(), e)),
    };
    // Exit 0: clean; 3: leaked clusters only. Anything else is damage.
    match out.status.code() {
        Some(0) | Some(3) if report["corruptions"].as_u64().unwrap_or(0) == 0 => Ok(report),
        _ => Err(QemuImgError::Failed {
            args: format!("check {}", path.display()),
            status: out.status.to_string(),
            stderr: report.to_string(),
        }),
    }
}

/// A new, empty image of `size` bytes.
pub fn create(path: &Path, size: u64) -> Result<(), QemuImgError> {
    run(&["create", "-q", "-f", "qcow2", p(path), &size.to_string()]).map(drop)
}

/// An overlay on `backing`, named relative to the overlay's directory.
pub fn create_overlay(path: &Path, backing_rel: &str) -> Result<(), QemuImgError> {
    run(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        backing_rel,
        "-F",
        "qcow2",
        p(path),
    ])
    .map(drop)
}

/// Writes `top`'s data into its backing file, leaving `top` intact (`-d`)
/// so an interrupted commit can simply be run again.
pub fn commit_keep(top: &Path) -> Result<(), QemuImgError> {
    run(&["commit", "-q", "-d", "-f", "qcow2", p(top)]).map(drop)
}

/// Points `image` at a new backing file without copying data; only valid
/// when the new backing holds the same guest view as the old one.
pub fn rebase_unsafe(image: &Path, backing_rel: &str) -> Result<(), QemuImgError> {
    run(&[
        "rebase",
        "-q",
        "-u",
        "-f",
        "qcow2",
        "-b",
        backing_rel,
        "-F",
        "qcow2",
        p(image),
    ])
    .map(drop)
}

/// Whether two images show the same guest content.
pub fn same_content(a: &Path, b: &Path) -> Result<bool, QemuImgError> {
    let out = Command::new("qemu-img")
        .args(["compare", "-q", "-U", p(a), p(b)])
        .output()
        .map_err(QemuImgError::Spawn)?;
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(QemuImgError::Failed {
            args: "compare".into(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        }),
    }
}

/// Grows an image to `size` bytes.
pub fn resize(path: &Path, size: u64) -> Result<(), QemuImgError> {
    run(&["resize", "-q", "-f", "qcow2", p(path), &size.to_string()]).map(drop)
}
