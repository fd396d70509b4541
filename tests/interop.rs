//! Our torrent files and tracker with a BitTorrent implementation nobody
//! here wrote: one aria2c seeds a real qcow2 layer, another downloads it
//! through voi-server's tracker. Needs aria2c (apt-get install aria2);
//! Skips with one line without it (see tests/common/needs.rs).

mod common;

use common::{aria2c, Proc};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test]
async fn aria2c_swarm_through_our_tracker_and_torrent() {
    if !common::has(
        "aria2c_swarm_through_our_tracker_and_torrent",
        &[common::ARIA2C],
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let h = common::start_server(&dir.path().join("s")).await;
    let url = format!("http://127.0.0.1:{}/announce", h.server.tracker_addr.port());

    // A real layer: a qcow2 image with 24 MiB of data in it.
    let seed_dir = dir.path().join("seed");
    std::fs::create_dir_all(&seed_dir).expect("dir");
    let name = "voi_0_91f9d1ba-cb4a-41ba-971a-618f9e306571";
    let layer = seed_dir.join(name);
    assert!(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&layer)
        .arg("64M")
        .status()
        .expect("qemu-img")
        .success());
    assert!(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x5a 0 24M"])
        .arg(&layer)
        .stdout(Stdio::null())
        .status()
        .expect("qemu-io")
        .success());
    let t = voi::bt::torrent::create(&layer, &url, 256 * 1024).expect("torrent");
    let torrent = dir.path().join(format!("{name}.torrent"));
    std::fs::write(&torrent, &t.bytes).expect("write");
    // The tracker keeps swarms only for what the server knows (issue
    // 38.4): this torrent is one an operator sent to terminals (1015).
    h.server.images.expect_info_hash(&t.info_hash_hex());

    let port = |n: u16| (20000 + std::process::id() % 20000) as u16 + n;
    let _seeder = Proc(
        aria2c(&[
            &format!("--dir={}", seed_dir.display()),
            "--check-integrity=true",
            "--seed-ratio=0.0",
            &format!("--listen-port={}", port(1)),
            torrent.to_str().expect("utf8"),
        ])
        .spawn()
        .expect("aria2c"),
    );
    // Wait until the seeder has announced.
    let start = Instant::now();
    while h.server.tracker.swarm_size(&t.info_hash) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the seeder never announced"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let get_dir = dir.path().join("get");
    let mut leecher = aria2c(&[
        &format!("--dir={}", get_dir.display()),
        "--seed-time=0",
        &format!("--listen-port={}", port(2)),
        torrent.to_str().expect("utf8"),
    ])
    .spawn()
    .expect("aria2c");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = leecher.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = leecher.kill();
            panic!("download did not finish in 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "leecher: {status}");
    eprintln!(
        "aria2c fetched {} bytes through our tracker in {:?}",
        t.length,
        start.elapsed()
    );
    let got = get_dir.join(name);
    assert_eq!(
        std::fs::read(&got).expect("downloaded"),
        std::fs::read(&layer).expect("original")
    );
    voi::disk::qemu_img::check(&got).expect("the downloaded layer passes qemu-img check");
    h.stop().await;
}
