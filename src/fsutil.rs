//! Crash-safe file replacement: temp file in the same directory, fsync,
//! rename over the target, fsync the directory. A reader sees the old file or
//! the new one, never a torn mix, whenever power is cut.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    } else {
        crate::crashpoint::hit(&format!("write {}", name.to_string_lossy()));
    }
    result
}

/// Makes renames and links in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fsync_dir(dir)?;
    crate::crashpoint::hit(&format!(
        "sync {}",
        dir.file_name().unwrap_or(dir.as_os_str()).to_string_lossy()
    ));
    Ok(())
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes JSON atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    atomic_write(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("state.json");
        atomic_write(&p, b"one").expect("write");
        atomic_write(&p, b"two").expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        let names: Vec<_> = fs::read_dir(d.path())
            .expect("ls")
            .filter_map(|e| e.ok())
            .collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn missing_dir_is_an_error_not_a_panic() {
        assert!(atomic_write(Path::new("/nonexistent-dir-voi/x"), b"x").is_err());
    }
}

/// An exclusive lock on a program's data directory, held while the value
/// lives: a second instance on the same directory is refused before it
/// touches anything (it would rename the first's BitTorrent session aside,
/// take its control socket, and fight it for the terminal's session).
#[derive(Debug)]
pub struct DirLock {
    _file: nix::fcntl::Flock<File>,
}

/// Takes `<dir>/.lock` for `program`, or says who holds it.
pub fn lock_dir(dir: &Path, program: &str) -> Result<DirLock, String> {
    use std::io::{Read, Seek};
    let path = dir.join(".lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(mut locked) => {
            // Who holds it, for the next one's message.
            let _ = locked.set_len(0);
            let _ = locked.seek(io::SeekFrom::Start(0));
            let _ = write!(locked, "{}", std::process::id());
            Ok(DirLock { _file: locked })
        }
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            Err(format!(
                "another {program} is running on {} (pid {}); stop it first, or give this one its own data_dir",
                dir.display(),
                if pid.is_empty() { "unknown" } else { pid }
            ))
        }
        Err((_, e)) => Err(format!("locking {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod lock_tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_dir_is_refused_and_names_the_holder() {
        let d = tempfile::tempdir().expect("tmp");
        let first = lock_dir(d.path(), "voi-agent").expect("first");
        let second = lock_dir(d.path(), "voi-agent").expect_err("second");
        assert!(second.contains("another voi-agent"), "{second}");
        assert!(second.contains(&std::process::id().to_string()), "{second}");
        drop(first);
        lock_dir(d.path(), "voi-agent").expect("free again");
    }
}
