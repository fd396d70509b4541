//! The README's first command, `voi-server demo`, run as the built binary:
//! it must exit 0 and get as far as a verified layer on the agent.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn the_readmes_demo_exits_0_with_the_layer_verified() {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_voi-server"))
        .arg("demo")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run voi-server demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "voi-server demo exited {:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    // qemu-utils is on every machine the README names, so the BitTorrent
    // step is never skipped here.
    assert!(
        !stdout.contains("skipping the BitTorrent step"),
        "the demo skipped its layer:\n{stdout}"
    );
    assert!(
        stdout.contains("pieces and qcow2 image verified"),
        "the demo did not report a verified layer:\n{stdout}"
    );
    assert!(stdout.contains("[demo] done"), "{stdout}");
    assert!(started.elapsed() < Duration::from_secs(120));
    println!("voi-server demo: exit 0 in {:?}", started.elapsed());
}

/// `cross/e2e.sh` is what CI runs on the aarch64 build after the suite; run
/// it here natively on this build's binaries so that a change to `ctl`'s
/// output (it once broke on tables replacing JSON) fails the suite, not the
/// deployment step after it.
#[test]
fn the_cross_end_to_end_script_passes_on_the_native_binaries() {
    let server = std::path::Path::new(env!("CARGO_BIN_EXE_voi-server"));
    let dir = server.parent().expect("binary directory");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/cross/e2e.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(dir)
        .output()
        .expect("run cross/e2e.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("e2e ok"),
        "cross/e2e.sh failed ({:?}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
