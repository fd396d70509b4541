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
