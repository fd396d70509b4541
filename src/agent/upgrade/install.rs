//! The install layout under `[upgrade] root`:
//!
//! ```text
//! versions/<version>/voi-agent      one directory per version, never edited
//! current -> versions/<version>     switched with one rename
//! ```
//!
//! Everything here is a file-system step that is durable when it returns.

use std::io::Write;
use std::path::{Path, PathBuf};

pub fn version_dir(root: &Path, version: &str) -> PathBuf {
    root.join("versions").join(version)
}

pub fn binary(root: &Path, version: &str) -> PathBuf {
    version_dir(root, version).join("voi-agent")
}

pub fn current_link(root: &Path) -> PathBuf {
    root.join("current")
}

/// The binary `current` leads to, when it does.
pub fn current_binary(root: &Path) -> Option<PathBuf> {
    let b = current_link(root).join("voi-agent");
    b.is_file().then_some(b)
}

/// The version `current` points at.
pub fn current_version(root: &Path) -> Option<String> {
    let target = std::fs::read_link(current_link(root)).ok()?;
    target.file_name().map(|n| n.to_string_lossy().into_owned())
}

/// Points `current` at `version` with a rename, so it is the old target or
/// the new one and never missing.
pub fn switch(root: &Path, version: &str) -> std::io::Result<()> {
    let target = Path::new("versions").join(version);
    if !root.join(&target).join("voi-agent").is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("version {version} is not installed"),
        ));
    }
    let tmp = root.join(".current.new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&target, &tmp)?;
    std::fs::rename(&tmp, current_link(root))?;
    crate::fsutil::sync_dir(root)?;
    crate::crashpoint::hit("upgrade switch current");
    Ok(())
}

/// Puts `bytes` in as `versions/<version>/voi-agent`, executable, fsynced,
/// by a rename; an existing one is kept (versions are never edited).
pub fn put(root: &Path, version: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
    let dir = version_dir(root, version);
    let dest = dir.join("voi-agent");
    if dest.is_file() {
        return Ok(dest);
    }
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(".voi-agent.tmp");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o755)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &dest)?;
    crate::fsutil::sync_dir(&dir)?;
    crate::fsutil::sync_dir(&root.join("versions"))?;
    crate::crashpoint::hit("upgrade install version");
    Ok(dest)
}

/// Removes versions other than `keep` (the running one and its fallback).
pub fn prune(root: &Path, keep: &[&str]) {
    let Ok(entries) = std::fs::read_dir(root.join("versions")) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name.as_str()) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_switch_and_prune() {
        let d = tempfile::tempdir().expect("tmp");
        let root = d.path();
        assert!(switch(root, "0.2.0").is_err(), "not installed yet");
        put(root, "0.1.0", b"old").expect("put");
        put(root, "0.2.0", b"new").expect("put");
        switch(root, "0.1.0").expect("switch");
        assert_eq!(current_version(root).as_deref(), Some("0.1.0"));
        switch(root, "0.2.0").expect("switch");
        assert_eq!(current_version(root).as_deref(), Some("0.2.0"));
        assert_eq!(
            std::fs::read(current_binary(root).expect("bin")).expect("read"),
            b"new"
        );
        // Versions are never edited.
        put(root, "0.2.0", b"other").expect("put");
        assert_eq!(std::fs::read(binary(root, "0.2.0")).expect("read"), b"new");
        put(root, "0.0.9", b"older").expect("put");
        prune(root, &["0.1.0", "0.2.0"]);
        assert!(!version_dir(root, "0.0.9").exists());
        assert!(version_dir(root, "0.1.0").exists());
    }
}
