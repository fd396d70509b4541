//! A LAN of network namespaces for the tests that need real addresses: a
//! switch (a bridge in a namespace of its own), hosts plugged into it, and
//! the test's own namespace on it too, at .254. Needs root and iproute2.

use std::path::Path;
use std::process::{Command, Stdio};

use super::{sh, Proc};

/// A switch namespace with a bridge, and hosts plugged into it.
pub struct Lan {
    pub tag: String,
    pub switch: String,
    pub hosts: Vec<String>,
    pub root_if: String,
}

impl Lan {
    pub fn switch_port(&self, host: usize) -> String {
        format!("{}p{host}", self.tag)
    }

    pub fn ns(&self, host: usize) -> String {
        format!("voi-chaos-{}-{host}", self.tag)
    }

    pub fn create(subnet: &str, hosts: usize) -> Result<Lan, String> {
        Self::create_tagged("", subnet, hosts)
    }

    /// A second LAN of the same test process needs a `suffix` of its own
    /// (one letter: interface names have 15 bytes).
    pub fn create_tagged(suffix: &str, subnet: &str, hosts: usize) -> Result<Lan, String> {
        let tag = format!("vc{}{suffix}", std::process::id() % 100000);
        let mut lan = Lan {
            switch: format!("voi-chaos-{tag}-sw"),
            root_if: format!("{tag}r"),
            hosts: Vec::new(),
            tag,
        };
        sh(&["ip", "netns", "add", &lan.switch])?;
        let sw = |a: &[&str]| {
            let mut v = vec!["ip", "-n", &lan.switch];
            v.extend_from_slice(a);
            sh(&v)
        };
        sw(&["link", "add", "br0", "type", "bridge"])?;
        sw(&["link", "set", "br0", "up"])?;
        // The test itself (root namespace) is on the switch too, at .254.
        let root_peer = format!("{}s", lan.root_if);
        sh(&[
            "ip",
            "link",
            "add",
            &lan.root_if,
            "type",
            "veth",
            "peer",
            "name",
            &root_peer,
            "netns",
            &lan.switch,
        ])?;
        sw(&["link", "set", &root_peer, "master", "br0", "up"])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{subnet}.254/24"),
            "dev",
            &lan.root_if,
        ])?;
        sh(&["ip", "link", "set", &lan.root_if, "up"])?;
        for h in 0..hosts {
            let ns = lan.ns(h);
            sh(&["ip", "netns", "add", &ns])?;
            lan.hosts.push(ns.clone());
            let port = lan.switch_port(h);
            sh(&[
                "ip",
                "-n",
                &ns,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &lan.switch,
            ])?;
            sw(&["link", "set", &port, "master", "br0", "up"])?;
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{subnet}.{}/24", h + 1),
                "dev",
                "eth0",
            ])?;
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(lan)
    }

    /// Pulls or plugs a host's cable at the switch.
    pub fn cable(&self, host: usize, up: bool) -> Result<(), String> {
        let port = self.switch_port(host);
        sh(&[
            "ip",
            "-n",
            &self.switch,
            "link",
            "set",
            &port,
            if up { "up" } else { "down" },
        ])
    }

    /// Bytes the switch sent to a host (its traffic in, all restarts of
    /// the program there included).
    pub fn bytes_to(&self, host: usize) -> u64 {
        self.port_counter(host, "tx_bytes")
    }

    /// Bytes a host sent into the switch.
    pub fn bytes_from(&self, host: usize) -> u64 {
        self.port_counter(host, "rx_bytes")
    }

    pub fn port_counter(&self, host: usize, counter: &str) -> u64 {
        let path = format!(
            "/sys/class/net/{}/statistics/{counter}",
            self.switch_port(host)
        );
        Command::new("ip")
            .args(["netns", "exec", &self.switch, "cat", &path])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
            .parse()
            .unwrap_or(0)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for h in &self.hosts {
            let _ = sh(&["ip", "netns", "del", h]);
        }
        let _ = sh(&["ip", "link", "del", &self.root_if]);
        let _ = sh(&["ip", "netns", "del", &self.switch]);
    }
}

pub fn spawn_in(ns: &str, program: &str, args: &[&str], log: &Path) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log");
    Proc(
        Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("VOI_LAN_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect(program),
    )
}
