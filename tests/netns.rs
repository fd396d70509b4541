//! update_ip for real: the agent runs inside a network namespace joined to
//! the host by a veth pair; the server listens on the host end. The test
//! creates and removes everything itself. Needs root and iproute2; skips
//! with one line without them.

mod common;

use common::*;
use serde_json::{json, Value};
use std::process::{Command, Stdio};

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

struct Netns {
    name: String,
    host_if: String,
    guest_if: String,
    subnet: u8,
}

impl Netns {
    fn create(tag: u8) -> Result<Netns, String> {
        let pid = std::process::id() % 10000;
        let n = Netns {
            name: format!("voi-{pid}-{tag}"),
            host_if: format!("vh{pid}x{tag}"),
            guest_if: format!("va{pid}x{tag}"),
            subnet: (20 + (pid % 100) as u8 + tag * 101) % 250 + 1,
        };
        ip(&["netns", "add", &n.name])?;
        ip(&[
            "link",
            "add",
            &n.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &n.guest_if,
        ])?;
        ip(&["link", "set", &n.guest_if, "netns", &n.name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", n.addr(1)),
            "dev",
            &n.host_if,
        ])?;
        ip(&["link", "set", &n.host_if, "up"])?;
        n.exec(&["link", "set", "lo", "up"])?;
        n.exec(&[
            "addr",
            "add",
            &format!("{}/24", n.addr(2)),
            "dev",
            &n.guest_if,
        ])?;
        n.exec(&["link", "set", &n.guest_if, "up"])?;
        Ok(n)
    }

    fn addr(&self, host: u8) -> String {
        format!("10.201.{}.{host}", self.subnet)
    }

    fn exec(&self, args: &[&str]) -> Result<String, String> {
        let mut a = vec!["netns", "exec", &self.name, "ip"];
        a.extend_from_slice(args);
        ip(&a)
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["-j"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.exec(&a).expect("ip -j")).expect("json")
    }

    fn guest_addresses(&self) -> Vec<String> {
        let v = self.json(&["addr", "show", "dev", &self.guest_if]);
        v[0]["addr_info"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|i| i["family"] == "inet")
                    .filter_map(|i| i["local"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn default_gateway(&self) -> Option<String> {
        let v = self.json(&["route", "show", "default"]);
        v[0]["gateway"].as_str().map(String::from)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys the veth pair with it.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}

fn is_login_from<'a>(
    mac: &'a str,
    ip: &'a str,
) -> impl Fn(&voi::server::registry::ServerEvent) -> bool + 'a {
    move |e| matches!(e, voi::server::registry::ServerEvent::Login { mac: m, ip: i, .. } if m == mac && i == ip)
}

#[tokio::test]
async fn update_ip_changes_address_route_dns_and_rolls_back_when_cut_off() {
    if !has(
        "update_ip_changes_address_route_dns_and_rolls_back_when_cut_off",
        &[Need::Root, IP],
    ) {
        return;
    }
    let ns = Netns::create(1).unwrap_or_else(|e| panic!("cannot create a network namespace : {e}"));
    let dir = tempfile::tempdir().expect("tmp");
    let h = voi::server::Server::start(server_config(
        &dir.path().join("s"),
        &format!("{}:0", ns.addr(1)),
    ))
    .await
    .expect("server");
    let mut ev = h.server.registry.events.subscribe();

    let etc = dir.path().join("etc");
    std::fs::create_dir_all(&etc).expect("etc");
    let adir = dir.path().join("a");
    let cfg_path = dir.path().join("agent.toml");
    std::fs::write(
        &cfg_path,
        format!(
            r#"server_ip = "{server}"
server_port = {port}
interface = "{iface}"
data_dir = "{data}"
heartbeat_secs = 1
request_timeout_secs = 3
connect_retry_ms = 300
performance_secs = 0
change_confirm_secs = 8
[platform]
power = "recording"
boot = "recording"
hostname = "recording"
network = "linux"
etc_dir = "{etc}"
"#,
            server = ns.addr(1),
            port = h.addr.port(),
            iface = ns.guest_if,
            data = adir.display(),
            etc = etc.display()
        ),
    )
    .expect("config");
    let log = std::fs::File::create(dir.path().join("agent.log")).expect("log");
    let agent = Proc(
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                env!("CARGO_BIN_EXE_voi-agent"),
                "--config",
            ])
            .arg(&cfg_path)
            .arg("run")
            .env("RUST_LOG", "voi=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn agent"),
    );

    let login = wait_event(&mut ev, 15, |e| {
        matches!(e, voi::server::registry::ServerEvent::Login { .. })
    })
    .await;
    let voi::server::registry::ServerEvent::Login {
        mac, ip: first_ip, ..
    } = login
    else {
        unreachable!()
    };
    assert_eq!(first_ip, ns.addr(2));
    wait_event(&mut ev, 10, is_heartbeat(&mac)).await;

    // 1. A good change: new address, gateway and DNS, session back up.
    let new_ip = ns.addr(3);
    let r = api(&h)
        .push(
            &mac,
            "update_ip",
            json!({"ip": new_ip, "mask": "255.255.255.0", "gateway": ns.addr(1),
                   "dns1": ns.addr(53), "dns2": ns.addr(54)}),
            10,
        )
        .await
        .expect("api");
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.data.as_ref().expect("data")["reply"]["code"], 0, "{r:?}");
    wait_event(&mut ev, 15, is_login_from(&mac, &new_ip)).await;
    wait_event(&mut ev, 10, is_heartbeat(&mac)).await;
    assert_eq!(ns.guest_addresses(), vec![new_ip.clone()]);
    assert_eq!(ns.default_gateway(), Some(ns.addr(1)));
    let resolv = std::fs::read_to_string(etc.join("resolv.conf")).expect("resolv.conf");
    assert!(
        resolv.contains(&format!(
            "nameserver {}\nnameserver {}\n",
            ns.addr(53),
            ns.addr(54)
        )),
        "{resolv}"
    );
    let unit = std::fs::read_to_string(
        etc.join(format!("systemd/network/10-voi-{}.network", ns.guest_if)),
    )
    .expect("unit");
    assert!(unit.contains(&format!("Address={new_ip}/24")), "{unit}");
    let rec = h.server.store.terminal(&mac).expect("store").expect("rec");
    assert_eq!(rec.config.ip, new_ip);
    let state: Value =
        serde_json::from_slice(&std::fs::read(adir.join("state.json")).expect("state"))
            .expect("json");
    assert_eq!(state["network"]["address"], new_ip.as_str());
    assert_eq!(state["terminal"]["conf_version"], rec.config.conf_version);

    // 2. A change that cuts the terminal off: it comes back on its own.
    let stranded = format!("10.202.{}.2", ns.subnet);
    let r = api(&h)
        .push(
            &mac,
            "update_ip",
            json!({"ip": stranded, "mask": "255.255.255.0", "gateway": format!("10.202.{}.1", ns.subnet),
                   "dns1": "10.202.0.53", "dns2": ""}),
            10,
        )
        .await
        .expect("api");
    assert_eq!(r.data.as_ref().expect("data")["reply"]["code"], 0, "{r:?}");
    wait_event(&mut ev, 40, is_login_from(&mac, &new_ip)).await;
    assert_eq!(ns.guest_addresses(), vec![new_ip.clone()]);
    assert_eq!(ns.default_gateway(), Some(ns.addr(1)));
    let state: Value =
        serde_json::from_slice(&std::fs::read(adir.join("state.json")).expect("state"))
            .expect("json");
    let notices = state["notices"].to_string();
    assert!(
        notices.contains("rolled back network change to"),
        "{notices}"
    );
    assert_eq!(state["network"]["address"], new_ip.as_str());

    drop(agent);
    h.stop().await;
}
