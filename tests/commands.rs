//! One end-to-end test per terminal command, through the real server and
//! agent, each with its bad-input case.

mod common;

use common::*;
use serde_json::{json, Value};

use std::sync::Arc;
use std::time::Duration;
use voi::agent::control_socket::{self, ControlRequest};
use voi::agent::platform::{BootTarget, JournalEntry, RecordingPlatform};
use voi::agent::Agent;
use voi::protocol::messages::DesktopGroup;
use voi::server::registry::ServerEvent;
use voi::server::{ServerConfig, ServerHandle};

struct Rig {
    _dir: tempfile::TempDir,
    h: ServerHandle,
    agent: Arc<Agent>,
    task: tokio::task::JoinHandle<()>,
    mac: String,
}

impl Rig {
    async fn new(mac: &str) -> Rig {
        let dir = tempfile::tempdir().expect("tmp");
        let h = start_server(&dir.path().join("s")).await;
        let mut ev = h.server.registry.events.subscribe();
        let (agent, task) = start_agent(agent_config(&dir.path().join("a"), h.addr.port(), mac));
        wait_event(&mut ev, 10, is_heartbeat(mac)).await;
        Rig {
            _dir: dir,
            h,
            agent,
            task,
            mac: mac.into(),
        }
    }

    /// Pushes and returns the terminal's reply envelope, or the server's
    /// own refusal when it would not send the command at all.
    async fn push(&self, command: &str, params: Value) -> Value {
        let r = api(&self.h)
            .push(&self.mac, command, params, 10)
            .await
            .expect("api");
        if !r.is_ok() {
            return json!({"code": r.code, "msg": r.msg});
        }
        r.data.expect("data")["reply"].clone()
    }

    fn journal(&self) -> Vec<JournalEntry> {
        RecordingPlatform::read_journal(&self.agent.cfg.journal_path())
    }

    async fn journal_until(&self, want: &JournalEntry) -> Vec<JournalEntry> {
        for _ in 0..50 {
            let j = self.journal();
            if j.contains(want) {
                return j;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("journal never showed {want:?}: {:?}", self.journal());
    }

    async fn stop(self) {
        self.agent.shutdown.cancel();
        let _ = self.task.await;
        self.h.stop().await;
    }
}

fn code(reply: &Value) -> i64 {
    reply["code"].as_i64().expect("code")
}

#[tokio::test]
async fn shutdown_replies_then_powers_off() {
    let rig = Rig::new("AA:00:00:00:01:01").await;
    let bad = rig.push("shutdown", json!({"batch_no": [1]})).await;
    assert_eq!(code(&bad), 88888);
    assert!(rig.journal().is_empty(), "a refused shutdown does nothing");
    let r = rig.push("shutdown", json!({})).await;
    assert_eq!(code(&r), 0);
    assert!(rig.journal().is_empty(), "the reply comes before the act");
    rig.journal_until(&JournalEntry::PowerOff).await;
    rig.stop().await;
}

#[tokio::test]
async fn restart_replies_then_reboots() {
    let rig = Rig::new("AA:00:00:00:01:02").await;
    assert_eq!(
        code(&rig.push("restart", json!({"batch_no": {}})).await),
        88888
    );
    assert_eq!(code(&rig.push("restart", json!({})).await), 0);
    rig.journal_until(&JournalEntry::Reboot).await;
    rig.stop().await;
}

#[tokio::test]
async fn pxe_start_selects_network_boot_then_reboots() {
    let rig = Rig::new("AA:00:00:00:01:03").await;
    assert_eq!(
        code(&rig.push("pxe_start", json!({"batch_no": null})).await),
        88888
    );
    assert_eq!(code(&rig.push("pxe_start", json!({})).await), 0);
    let j = rig.journal_until(&JournalEntry::Reboot).await;
    assert_eq!(
        j[0],
        JournalEntry::SetNextBoot {
            target: BootTarget::Pxe
        }
    );
    rig.stop().await;
}

#[tokio::test]
async fn maintenance_commands_select_maintenance_entry() {
    let rig = Rig::new("AA:00:00:00:01:04").await;
    assert_eq!(
        code(
            &rig.push("enter_maintenance_mode", json!({"batch_no": true}))
                .await
        ),
        88888
    );
    assert_eq!(
        code(&rig.push("enter_maintenance_mode", json!({})).await),
        0
    );
    assert_eq!(code(&rig.push("enter_maintain", json!({})).await), 0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let j = rig.journal();
    let maint = JournalEntry::SetNextBoot {
        target: BootTarget::Maintenance,
    };
    assert_eq!(j.iter().filter(|e| **e == maint).count(), 2, "{j:?}");
    rig.stop().await;
}

#[tokio::test]
async fn update_name_sets_name_hostname_and_conf_version() {
    let rig = Rig::new("AA:00:00:00:01:05").await;
    let bad = rig
        .push("update_name", json!({"name": "fourteen-bytes"}))
        .await;
    assert_eq!(code(&bad), 60009);
    assert_eq!(rig.agent.state.read(|s| s.terminal.name.clone()), "");
    let r = rig.push("update_name", json!({"name": "ROOM1-PC07"})).await;
    assert_eq!(code(&r), 0);
    let (name, ver) = rig
        .agent
        .state
        .read(|s| (s.terminal.name.clone(), s.terminal.conf_version));
    assert_eq!(name, "ROOM1-PC07");
    let server_ver = rig
        .h
        .server
        .store
        .terminal(&rig.mac)
        .expect("store")
        .expect("rec")
        .config
        .conf_version;
    assert_eq!(ver, server_ver, "agent and server agree on conf_version");
    assert!(rig.journal().contains(&JournalEntry::SetHostname {
        name: "ROOM1-PC07".into()
    }));
    // Persisted: a fresh read of the state file shows it.
    let saved: Value =
        serde_json::from_slice(&std::fs::read(rig.agent.cfg.state_path()).expect("state"))
            .expect("json");
    assert_eq!(saved["terminal"]["name"], "ROOM1-PC07");
    rig.stop().await;
}

#[tokio::test]
async fn update_config_applies_mode_and_refuses_bad_values() {
    let rig = Rig::new("AA:00:00:00:01:06").await;
    let bad = rig
        .push("update_config", json!({"mode": {"show_desktop_type": 7, "auto_desktop": 0}, "program": {"server_ip": ""}}))
        .await;
    assert_eq!(code(&bad), 60012);
    let bad = rig
        .push("update_config", json!({"mode": {"show_desktop_type": 1, "auto_desktop": 0}, "program": {"server_ip": "999.1.1.1"}}))
        .await;
    assert_eq!(code(&bad), 60014);
    let r = rig
        .push("update_config", json!({"mode": {"show_desktop_type": 2, "auto_desktop": 1}, "program": {"server_ip": ""}}))
        .await;
    assert_eq!(code(&r), 0);
    let mode = rig.agent.state.read(|s| s.terminal.setup_info.mode.clone());
    assert_eq!((mode.show_desktop_type, mode.auto_desktop), (2, 1));
    rig.stop().await;
}

#[tokio::test]
async fn update_config_server_ip_moves_the_session() {
    let dir = tempfile::tempdir().expect("tmp");
    let a = start_server(&dir.path().join("a")).await;
    let port = a.addr.port();
    // The second server listens on another loopback address, same port.
    let b = voi::server::Server::start(ServerConfig {
        listen: format!("127.0.0.2:{port}"),
        ..server_config(&dir.path().join("b"), "")
    })
    .await
    .expect("server b");
    let mac = "AA:00:00:00:01:07";
    let mut ev_a = a.server.registry.events.subscribe();
    let mut ev_b = b.server.registry.events.subscribe();
    let (agent, task) = start_agent(agent_config(&dir.path().join("agent"), port, mac));
    // Heartbeats start after the startup sequence, so 9005 is behind us.
    wait_event(&mut ev_a, 10, is_heartbeat(mac)).await;
    let r = api(&a)
        .push(mac, "update_config", json!({"mode": {"show_desktop_type": 0, "auto_desktop": 0}, "program": {"server_ip": "127.0.0.2"}}), 10)
        .await
        .expect("api");
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.data.expect("data")["reply"]["code"], 0);
    wait_event(&mut ev_b, 10, is_login(mac)).await;
    assert_eq!(agent.server_addr(), format!("127.0.0.2:{port}"));
    // Persisted, and the pending move was confirmed by the login.
    let saved: Value =
        serde_json::from_slice(&std::fs::read(agent.cfg.state_path()).expect("state"))
            .expect("json");
    assert_eq!(saved["server_ip_override"], "127.0.0.2");
    wait_until(|| agent.state.read(|s| s.pending_change.is_none())).await;
    agent.shutdown.cancel();
    let _ = task.await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn unreachable_new_server_is_rolled_back() {
    let dir = tempfile::tempdir().expect("tmp");
    let a = start_server(&dir.path().join("a")).await;
    let mac = "AA:00:00:00:01:08";
    let mut ev = a.server.registry.events.subscribe();
    let mut cfg = agent_config(&dir.path().join("agent"), a.addr.port(), mac);
    cfg.change_confirm_secs = 3;
    let (agent, task) = start_agent(cfg);
    wait_event(&mut ev, 10, is_heartbeat(mac)).await;
    // Nobody listens on 127.0.0.3.
    let r = api(&a)
        .push(mac, "update_config", json!({"mode": {"show_desktop_type": 0, "auto_desktop": 0}, "program": {"server_ip": "127.0.0.3"}}), 10)
        .await
        .expect("api");
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.data.expect("data")["reply"]["code"], 0);
    wait_event(&mut ev, 20, is_login(mac)).await;
    assert_eq!(agent.server_addr(), format!("127.0.0.1:{}", a.addr.port()));
    let notices = agent.state.read(|s| s.notices.clone());
    assert!(
        notices
            .iter()
            .any(|n| n.contains("rolled back move to server 127.0.0.3")),
        "{notices:?}"
    );
    agent.shutdown.cancel();
    let _ = task.await;
    a.stop().await;
}

async fn wait_until(f: impl Fn() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("condition not reached");
}

#[tokio::test]
async fn update_ip_refuses_bad_fields_and_changes_nothing() {
    let rig = Rig::new("AA:00:00:00:01:09").await;
    let base = json!({"ip": "10.9.0.20", "mask": "255.255.255.0", "gateway": "10.9.0.1", "dns1": "10.9.0.53", "dns2": ""});
    for (key, value, expected) in [
        ("mask", "255.0.255.0", 60006),
        ("gateway", "10.9.1.1", 60007),
        ("dns1", "nope", 60008),
        ("ip", "10.9.0.255", 88888),
    ] {
        let mut p = base.clone();
        p[key] = json!(value);
        let r = rig.push("update_ip", p).await;
        assert_eq!(code(&r), expected, "{key}={value}: {r}");
    }
    assert!(rig.journal().is_empty(), "no network change was attempted");
    assert!(rig
        .agent
        .state
        .read(|s| s.network.is_none() && s.pending_change.is_none()));
    rig.stop().await;
}

#[tokio::test]
async fn delete_forgets_number_and_registers_again() {
    let rig = Rig::new("AA:00:00:00:01:0A").await;
    rig.agent
        .state
        .update(|s| s.terminal.terminal_id = 4)
        .expect("set");
    let mut ev = rig.h.server.registry.events.subscribe();
    assert_eq!(
        code(&rig.push("delete", json!({"batch_no": [0]})).await),
        88888
    );
    assert_eq!(rig.agent.state.read(|s| s.terminal.terminal_id), 4);
    assert_eq!(code(&rig.push("delete", json!({})).await), 0);
    wait_event(&mut ev, 10, is_login(&rig.mac)).await;
    assert_eq!(rig.agent.state.read(|s| s.terminal.terminal_id), -1);
    rig.stop().await;
}

#[tokio::test]
async fn update_desktop_group_info_refetches_the_list() {
    let rig = Rig::new("AA:00:00:00:01:0B").await;
    assert!(rig.agent.state.read(|s| s.desktop_groups.is_empty()));
    let g = DesktopGroup {
        desktop_group_uuid: "f15a1759-789e-4e17-a3e1-e723121e9314".into(),
        desktop_group_name: "lab".into(),
        ..Default::default()
    };
    assert!(api(&rig.h)
        .put("/api/v1/desktop_groups", &g)
        .await
        .expect("api")
        .is_ok());
    assert_eq!(
        code(
            &rig.push("update_desktop_group_info", json!({"batch_no": [2]}))
                .await
        ),
        88888
    );
    assert_eq!(
        code(&rig.push("update_desktop_group_info", json!({})).await),
        0
    );
    wait_until(|| rig.agent.state.read(|s| s.desktop_groups.len() == 1)).await;
    rig.stop().await;
}

#[tokio::test]
async fn watermark_switch_persists_and_refuses_other_values() {
    let rig = Rig::new("AA:00:00:00:01:0C").await;
    assert_eq!(
        code(&rig.push("watermark_switch", json!({"switch": 2})).await),
        88888
    );
    assert!(!rig.agent.state.read(|s| s.watermark));
    assert_eq!(
        code(&rig.push("watermark_switch", json!({"switch": 1})).await),
        0
    );
    let st = control_socket::call(
        &rig.agent.cfg.control_socket_path(),
        &ControlRequest::Status,
    )
    .await
    .expect("ctl");
    assert_eq!(st.data.expect("data")["watermark"], true);
    rig.stop().await;
}

#[tokio::test]
async fn performance_reports_reach_the_server() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let mac = "AA:00:00:00:01:0D";
    let mut ev = h.server.registry.events.subscribe();
    let mut cfg = agent_config(&dir.path().join("a"), h.addr.port(), mac);
    cfg.performance_secs = 1;
    let (agent, task) = start_agent(cfg);
    wait_event(&mut ev, 10, |e| matches!(e, ServerEvent::Request { service, code: 0, .. } if service == "update_performance")).await;
    let rec = h.server.store.terminal(mac).expect("store").expect("rec");
    let perf = &rec.reports["performance"];
    assert_eq!(perf["name"], "Sensors");
    assert!(perf["desc"]
        .as_array()
        .expect("groups")
        .iter()
        .any(|g| g["name"] == "Generic Memory (/ram)"));
    agent.shutdown.cancel();
    let _ = task.await;
    h.stop().await;
}

#[tokio::test]
async fn control_interface_date_and_admin_check() {
    let rig = Rig::new("AA:00:00:00:01:0E").await;
    let sock = rig.agent.cfg.control_socket_path();
    let d = control_socket::call(&sock, &ControlRequest::GetDateTime)
        .await
        .expect("ctl");
    assert!(d.ok, "{d:?}");
    assert!(d.data.expect("data")["datetime"].as_str().is_some());
    let good = control_socket::call(
        &sock,
        &ControlRequest::VerifyAdmin {
            user: "admin".into(),
            password: "admin".into(),
        },
    )
    .await
    .expect("ctl");
    assert!(good.ok, "{good:?}");
    let bad = control_socket::call(
        &sock,
        &ControlRequest::VerifyAdmin {
            user: "admin".into(),
            password: "nope".into(),
        },
    )
    .await
    .expect("ctl");
    assert!(!bad.ok);
    assert!(bad.error.expect("error").contains("60022"));
    rig.stop().await;
}

async fn ctl(agent: &Agent, req: ControlRequest) -> voi::agent::control_socket::ControlResponse {
    control_socket::call(&agent.cfg.control_socket_path(), &req)
        .await
        .expect("ctl")
}

fn proposed(agent: &Agent) -> Option<i64> {
    agent
        .state
        .read(|s| s.pending_order.as_ref().map(|o| o.terminal_id))
}

async fn wait_proposed(agent: &Agent, want: Option<i64>) {
    for _ in 0..100 {
        if proposed(agent) == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{} never saw proposal {want:?} (has {:?})",
        agent.mac,
        proposed(agent)
    );
}

#[tokio::test]
async fn numbering_flow_across_a_room() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let mut ev = h.server.registry.events.subscribe();
    let macs = [
        "AA:00:00:00:02:01",
        "AA:00:00:00:02:02",
        "AA:00:00:00:02:03",
    ];
    let mut agents = Vec::new();
    for m in macs {
        agents.push(start_agent(agent_config(
            &dir.path().join(m.replace(':', "")),
            h.addr.port(),
            m,
        )));
        wait_event(&mut ev, 10, is_heartbeat(m)).await;
    }
    let a = api(&h);
    let r = a
        .post("/api/v1/order", &json!({"start_id": 10}))
        .await
        .expect("api");
    assert!(r.is_ok(), "{r:?}");
    for (agent, _) in &agents {
        wait_proposed(agent, Some(10)).await;
    }
    let (a1, a2, a3) = (&agents[0].0, &agents[1].0, &agents[2].0);

    assert!(
        ctl(a1, ControlRequest::OrderConfirm { terminal_id: 10 })
            .await
            .ok
    );
    assert_eq!(a1.state.read(|s| s.terminal.terminal_id), 10);
    wait_proposed(a2, Some(11)).await;
    wait_proposed(a3, Some(11)).await;

    let taken = ctl(a2, ControlRequest::OrderConfirm { terminal_id: 10 }).await;
    assert!(taken.error.expect("error").contains("60020"));
    let low = ctl(a2, ControlRequest::OrderConfirm { terminal_id: 3 }).await;
    assert!(low.error.expect("error").contains("60018"));
    assert!(
        ctl(a2, ControlRequest::OrderConfirm { terminal_id: 11 })
            .await
            .ok
    );
    wait_proposed(a3, Some(12)).await;
    assert!(
        ctl(a3, ControlRequest::OrderConfirm { terminal_id: 12 })
            .await
            .ok
    );

    // Everyone numbered: the server ends the session with -1.
    for (agent, _) in &agents {
        wait_proposed(agent, None).await;
    }
    let o = a.get("/api/v1/order").await.expect("api");
    assert!(o.data.expect("data")["order"].is_null());
    let ids: Vec<i64> = macs
        .iter()
        .map(|m| {
            h.server
                .store
                .terminal(m)
                .expect("store")
                .expect("rec")
                .config
                .terminal_id
        })
        .collect();
    assert_eq!(ids, vec![10, 11, 12]);

    // Cancel path: a new session, then -1 to everyone.
    assert!(a
        .post("/api/v1/order", &json!({"start_id": 1}))
        .await
        .expect("api")
        .is_ok());
    wait_proposed(a1, Some(1)).await;
    assert!(a.delete("/api/v1/order").await.expect("api").is_ok());
    for (agent, _) in &agents {
        wait_proposed(agent, None).await;
    }
    for (agent, task) in agents {
        agent.shutdown.cancel();
        let _ = task.await;
    }
    h.stop().await;
}

/// Issue 38.13: the offline settings password is kept only as the server
/// signed it (a salted scrypt hash, manifest key). A terminal flashed with
/// the server's key opens its settings offline with that password and no
/// other; one flashed with another key (its server is not the one
/// answering) keeps nothing from a 9008 "yes".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_password_is_kept_only_as_the_server_signed_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let mut ev = h.server.registry.events.subscribe();
    let verify = |agent: Arc<Agent>, password: &'static str| async move {
        control_socket::call(
            &agent.cfg.control_socket_path(),
            &ControlRequest::VerifyAdmin {
                user: "admin".into(),
                password: password.into(),
            },
        )
        .await
        .expect("ctl")
    };
    // Flashed with another server's key: a "yes" plants nothing.
    let other_key = voi::bt::manifest::to_hex(
        ed25519_dalek::SigningKey::from_bytes(&[9; 32])
            .verifying_key()
            .as_bytes(),
    );
    let mut cfg = agent_config(&dir.path().join("b"), h.addr.port(), "AA:00:00:00:01:1F");
    cfg.bt.manifest_key = Some(other_key);
    let (stranger, stranger_task) = start_agent(cfg);
    wait_event(&mut ev, 20, is_heartbeat("AA:00:00:00:01:1F")).await;
    assert!(verify(stranger.clone(), "admin").await.ok);
    assert!(stranger.state.read(|s| s.offline_admin.is_none()));
    stranger.shutdown.cancel();
    let _ = stranger_task.await;
    // Flashed with this server's key: kept, and it opens offline.
    let mut cfg = agent_config(&dir.path().join("a"), h.addr.port(), "AA:00:00:00:01:1E");
    cfg.bt.manifest_key = Some(h.server.images.manifest_public_key());
    let (agent, task) = start_agent(cfg);
    wait_event(&mut ev, 20, is_heartbeat("AA:00:00:00:01:1E")).await;
    assert!(verify(agent.clone(), "admin").await.ok);
    let kept = agent.state.read(|s| s.offline_admin.clone()).expect("kept");
    assert_ne!(kept.hash, voi::protocol::md5_hex(b"admin"), "no bare md5");
    let state = std::fs::read_to_string(agent.cfg.state_path()).expect("state");
    assert!(
        !state.contains(&voi::protocol::md5_hex(b"admin")),
        "{state}"
    );
    h.stop().await;
    wait_for("the agent offline", 20, || agent.link().is_none()).await;
    let offline = verify(agent.clone(), "admin").await;
    assert!(offline.ok, "{offline:?}");
    assert_eq!(offline.data.expect("data")["by"], "local");
    let wrong = verify(agent.clone(), "nope").await;
    assert!(!wrong.ok, "{wrong:?}");
    agent.shutdown.cancel();
    let _ = task.await;
}
