//! Terminal admission: real servers with a policy, real agents and
//! hand-written clients, decisions made through the operator API and kept
//! across a restart.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use voi::protocol::ServiceCode;
use voi::server::admission::{Admission, AdmissionPolicy};
use voi::server::registry::ServerEvent;
use voi::server::Server;

fn asked<'a>(mac: &'a str, service: &'static str, code: i64) -> impl Fn(&ServerEvent) -> bool + 'a {
    move |e| {
        matches!(e, ServerEvent::Request { mac: m, service: s, code: c }
            if m == mac && s == service && *c == code)
    }
}

fn refused(mac: &str) -> impl Fn(&ServerEvent) -> bool + '_ {
    move |e| matches!(e, ServerEvent::Refused { mac: m, .. } if m == mac)
}

fn standing(h: &voi::server::ServerHandle, mac: &str) -> Option<Admission> {
    h.server
        .store
        .terminal(mac)
        .expect("store")
        .map(|r| r.admission)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_pending_a_new_terminal_waits_for_an_operator_and_decisions_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let mut cfg = server_config(&dir.path().join("s"), &format!("127.0.0.1:{port}"));
    cfg.admission = AdmissionPolicy::Pending;
    init_log();
    let h = Server::start(cfg.clone()).await.expect("server");
    let mut ev = h.server.registry.events.subscribe();

    // A MAC never seen before logs in, heartbeats and is listed pending; it
    // is told nothing (its 9007 is refused with 60001) and no command
    // reaches it.
    let mac = "AA:00:00:00:81:01";
    let (a, ta) = start_agent(agent_config(&dir.path().join("a"), port, mac));
    wait_event(&mut ev, 20, is_login(mac)).await;
    wait_event(&mut ev, 20, asked(mac, "get_desktop_group_list", 60001)).await;
    wait_event(&mut ev, 10, is_heartbeat(mac)).await;
    assert_eq!(standing(&h, mac), Some(Admission::Pending));
    let view = api(&h)
        .get(&format!("/api/v1/terminals/{mac}"))
        .await
        .expect("api");
    let data = view.data.expect("data");
    assert_eq!(data["admission"], "pending");
    assert_eq!(data["online"], true);
    let pushed = api(&h)
        .post(
            &format!("/api/v1/terminals/{mac}/commands"),
            &json!({"command": "update_name", "params": {"name": "sneaky"}}),
        )
        .await
        .expect("api");
    assert_eq!(pushed.code, 60001, "{pushed:?}");
    let numbering = api(&h)
        .post("/api/v1/order", &json!({"start_id": 1, "macs": [mac]}))
        .await
        .expect("api");
    assert_ne!(numbering.code, 0, "a pending terminal takes no number");
    assert_ne!(a.state.read(|s| s.terminal.name.clone()), "sneaky");

    // Accepted through the API: its session is closed, it logs in again
    // and its start-up requests are answered.
    let env = api(&h)
        .put(
            &format!("/api/v1/terminals/{mac}/admission"),
            &json!({"admission": "accepted"}),
        )
        .await
        .expect("api");
    assert_eq!(env.code, 0, "{env:?}");
    wait_event(&mut ev, 20, asked(mac, "get_desktop_group_list", 0)).await;
    let (_, env) = h
        .server
        .push(
            mac,
            ServiceCode::UpdateName,
            json!({"name": "room-1"}),
            Duration::from_secs(10),
        )
        .await
        .expect("accepted terminals take commands");
    assert_eq!(env.code, 0);
    assert_eq!(a.state.read(|s| s.terminal.name.clone()), "room-1");

    // A second terminal, rejected: disconnected, and every login after
    // that is refused with 60001 and stores nothing new.
    let mac2 = "AA:00:00:00:81:02";
    let (b, tb) = start_agent(agent_config(&dir.path().join("b"), port, mac2));
    wait_event(&mut ev, 20, is_login(mac2)).await;
    let env = api(&h)
        .put(
            &format!("/api/v1/terminals/{mac2}/admission"),
            &json!({"admission": "rejected"}),
        )
        .await
        .expect("api");
    assert_eq!(env.code, 0);
    wait_event(&mut ev, 20, refused(mac2)).await;

    // A restart keeps both decisions.
    h.stop().await;
    let h = Server::start(cfg.clone()).await.expect("server again");
    let mut ev = h.server.registry.events.subscribe();
    wait_event(&mut ev, 30, asked(mac, "get_desktop_group_list", 0)).await;
    wait_event(&mut ev, 30, refused(mac2)).await;
    assert_eq!(standing(&h, mac), Some(Admission::Accepted));
    assert_eq!(standing(&h, mac2), Some(Admission::Rejected));
    assert!(
        b.live().logins <= 1,
        "the rejected terminal never got back in"
    );

    // A bad decision is a clear 400, not a change.
    let env = api(&h)
        .put(
            &format!("/api/v1/terminals/{mac}/admission"),
            &json!({"admission": "maybe"}),
        )
        .await
        .expect("api");
    assert_eq!(env.code, 88888);
    assert_eq!(standing(&h, mac), Some(Admission::Accepted));

    for (agent, task) in [(a, ta), (b, tb)] {
        agent.shutdown.cancel();
        let _ = task.await;
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_allow_list_only_macs_an_operator_accepted_log_in() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = server_config(&dir.path().join("s"), "127.0.0.1:0");
    cfg.admission = AdmissionPolicy::AllowList;
    init_log();
    let h = Server::start(cfg).await.expect("server");
    let mac = "AA:00:00:00:82:01";

    // Unknown: refused with 60001, the socket closed, nothing stored.
    let mut c = RawClient::connect(h.addr).await;
    let env = c.login(mac).await;
    assert_eq!(env.code, 60001, "{env:?}");
    assert!(env.msg.contains("allow-list"), "{}", env.msg);
    assert!(c.closed().await);
    assert_eq!(standing(&h, mac), None);

    // Put on the list before it connects: it logs in and is served.
    let env = api(&h)
        .put(
            &format!("/api/v1/terminals/{mac}/admission"),
            &json!({"admission": "accepted"}),
        )
        .await
        .expect("api");
    assert_eq!(env.code, 0);
    let mut c = RawClient::connect(h.addr).await;
    assert_eq!(c.login(mac).await.code, 0);
    let (_, env) = c
        .request(ServiceCode::GetDesktopGroupList, &json!({"mac": mac}))
        .await;
    assert_eq!(env.code, 0, "{env:?}");
    h.stop().await;
}
