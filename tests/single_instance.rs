//! One process per data dir, and a busy port is a busy port, with the real
//! binaries: a second `voi-agent` or `voi-server` on a data dir in use is
//! refused with a clear message and touches nothing; a seeder port held by
//! another program is waited for and named, and no session state is moved
//! aside. An agent that cannot reach its server says so at the default log
//! level, and `ctl status` shows why and since when.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > Duration::from_secs(secs) {
            let log = what
                .rsplit_once(" in ")
                .and_then(|(_, p)| std::fs::read_to_string(p).ok())
                .unwrap_or_default();
            panic!("timed out after {secs} s waiting for {what}\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn agent_toml(dir: &Path, server_port: u16) -> std::path::PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "server_ip = \"127.0.0.1\"\nserver_port = {server_port}\nmac = \"AA:00:00:00:0F:01\"\ndata_dir = \"{}\"\nconnect_retry_ms = 300\n[platform]\npower = \"recording\"\nboot = \"recording\"\nhostname = \"recording\"\nnetwork = \"recording\"\n[bt]\nlisten_port = 0\n",
            dir.join("data").display()
        ),
    )
    .expect("agent.toml");
    path
}

/// `voi-agent --config C run`, or `voi-server run --config C`.
fn spawn(bin: &str, args: &[&str], config: &Path, log: &Path) -> Proc {
    let mut cmd = Command::new(bin);
    if bin.ends_with("voi-server") {
        cmd.args(args).arg("--config").arg(config);
    } else {
        cmd.arg("--config").arg(config).args(args);
    }
    Proc(
        cmd
            // The systemd units' level: nothing set, so the default (info).
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log"))
            .spawn()
            .expect("spawn"),
    )
}

#[test]
fn a_second_agent_on_a_data_dir_is_refused_and_the_first_keeps_working() {
    let dir = tempfile::tempdir().expect("tmp");
    // Nothing listens at the server's port: the agent must say so.
    let dead_port = free_port();
    let cfg = agent_toml(dir.path(), dead_port);
    let agent = env!("CARGO_BIN_EXE_voi-agent");
    let _first = spawn(agent, &["run"], &cfg, &dir.path().join("first.log"));
    let data = dir.path().join("data");
    wait_until("the first agent's control socket", 30, || {
        data.join("control.sock").exists()
    });
    wait_until("the first agent's engine", 30, || {
        data.join("disks/.bt").exists() || data.join("bt").exists()
    });
    std::thread::sleep(Duration::from_secs(1));
    let before = entries(&data);

    let out = Command::new(agent)
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .env_remove("RUST_LOG")
        .output()
        .expect("second agent");
    let said = String::from_utf8_lossy(&out.stderr);
    eprintln!("second agent: {} {said}", out.status);
    assert!(!out.status.success(), "a second agent must not run");
    assert!(said.contains("another voi-agent is running"), "{said}");
    assert_eq!(
        entries(&data),
        before,
        "the second agent touched the data dir"
    );
    assert!(
        !entries(&data).iter().any(|e| e.contains("broken")),
        "{:?}",
        entries(&data)
    );

    // The first still answers on its control socket, and says why it is
    // offline and since when.
    let status = Command::new(agent)
        .arg("--config")
        .arg(&cfg)
        .args(["ctl", "status"])
        .output()
        .expect("ctl status");
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "ctl status: {text}");
    assert!(text.contains("last_error"), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{dead_port}")), "{text}");
    assert!(text.contains("unreachable_since"), "{text}");
    // At the default level, the first failed connect is in the log.
    let log = std::fs::read_to_string(dir.path().join("first.log")).expect("log");
    assert!(
        log.contains(&format!("cannot reach the server at 127.0.0.1:{dead_port}")),
        "{log}"
    );
}

#[test]
fn a_second_server_is_refused_and_a_busy_seeder_port_is_named_not_treated_as_damage() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let toml = |name: &str, bt: u16| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "listen = \"127.0.0.1:{}\"\napi_listen = \"127.0.0.1:{}\"\ntracker_listen = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\napi_token = \"t\"\nbt_listen_port = {bt}\n",
                free_port(),
                free_port(),
                free_port(),
                data.display()
            ),
        )
        .expect("toml");
        path
    };
    let server = env!("CARGO_BIN_EXE_voi-server");
    // Another program holds the seeder's port.
    let holder = std::net::TcpListener::bind("0.0.0.0:0").expect("hold a port");
    let busy = holder.local_addr().expect("addr").port();
    let first_cfg = toml("first.toml", busy);
    let log = dir.path().join("first.log");
    let _first = spawn(server, &["run"], &first_cfg, &log);
    wait_until(
        &format!("the busy port named in {}", log.display()),
        30,
        || {
            std::fs::read_to_string(&log)
                .is_ok_and(|l| l.contains(&format!("port {busy} is in use")))
        },
    );
    assert!(
        !entries(&data.join("bt"))
            .iter()
            .any(|e| e.contains("broken")),
        "a busy port moved session state aside: {:?}",
        entries(&data.join("bt"))
    );
    // Freed, the server comes up on it.
    drop(holder);
    wait_until("the seeder on its port", 40, || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("terminal protocol on"))
    });

    let before = entries(&data);
    let out = Command::new(server)
        .arg("run")
        .arg("--config")
        .arg(toml("second.toml", free_port()))
        .output()
        .expect("second server");
    let said = String::from_utf8_lossy(&out.stderr);
    eprintln!("second server: {} {said}", out.status);
    assert!(!out.status.success());
    assert!(said.contains("another voi-server is running"), "{said}");
    assert_eq!(
        entries(&data),
        before,
        "the second server touched the data dir"
    );
}

/// The server's log at its default level: logins, an operator action, a
/// disconnection, and two agents configured with one MAC, named as a
/// conflict with both addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_server_log_names_logins_actions_departures_and_a_mac_conflict() {
    let dir = tempfile::tempdir().expect("tmp");
    let (port, api) = (free_port(), free_port());
    let path = dir.path().join("server.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:{port}\"\napi_listen = \"127.0.0.1:{api}\"\ntracker_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\napi_token = \"t\"\nbt_listen_port = 0\nheartbeat_secs = 1\n",
            dir.path().join("data").display()
        ),
    )
    .expect("toml");
    let log = dir.path().join("server.log");
    let _server = spawn(env!("CARGO_BIN_EXE_voi-server"), &["run"], &path, &log);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until("the server", 30, || read().contains("terminal protocol on"));
    let mac = "AA:00:00:00:0F:21";
    let (a, ta) = start_agent(agent_config(&dir.path().join("a"), port, mac));
    wait_until("a login line", 30, || {
        read().contains(&format!("{mac} logged in from"))
    });
    let (b, tb) = start_agent(agent_config(&dir.path().join("b"), port, mac));
    wait_until("the conflict", 30, || {
        read().contains("two terminals claim this MAC")
    });
    b.shutdown.cancel();
    let _ = tb.await;
    api_put(
        &format!("http://127.0.0.1:{api}/api/v1/terminals/{mac}/admission"),
        r#"{"admission":"accepted"}"#,
    );
    wait_until("the operator's action", 30, || {
        read().contains(&format!("PUT /api/v1/terminals/{mac}/admission -> 200"))
    });
    a.shutdown.cancel();
    let _ = ta.await;
    wait_until("the departure", 30, || {
        read().contains(&format!("{mac} disconnected"))
    });
}
