#![allow(dead_code)]
//! Shared helpers: real servers and agents on loopback, a raw protocol client.

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_util::codec::Framed;

use voi::agent::config::{AgentConfig, EffectMode, PlatformConfig};
use voi::agent::Agent;
use voi::protocol::{ClientType, Envelope, Frame, FrameCodec, ServiceCode};
use voi::server::client::ApiClient;
use voi::server::registry::ServerEvent;
use voi::server::{Server, ServerConfig, ServerHandle};

pub mod capture;
pub mod lan;
pub mod liar;
mod needs;
pub mod pki;
#[allow(unused_imports)]
pub use needs::*;

pub fn init_log() {
    let _ = voi::cli_support::logger("warn").is_test(true).try_init();
}

pub fn server_config(dir: &Path, listen: &str) -> ServerConfig {
    ServerConfig {
        listen: listen.into(),
        api_listen: "127.0.0.1:0".into(),
        tracker_listen: "127.0.0.1:0".into(),
        data_dir: dir.to_path_buf(),
        heartbeat_secs: 1,
        bt_listen_port: 0,
        // The tests' library files are whole before any scan: a short
        // second look keeps each scan of a new file quick.
        library_settle_ms: 300,
        // The vendor's admin/admin, which the screen and command tests
        // type; a server without it makes a random one (admin_password).
        admin_password_md5: Some(voi::protocol::md5_hex(b"admin")),
        ..ServerConfig::default()
    }
}

pub async fn start_server(dir: &Path) -> ServerHandle {
    init_log();
    Server::start(server_config(dir, "127.0.0.1:0"))
        .await
        .expect("server starts")
}

/// The latest report of one kind on a terminal's record.
pub fn report(h: &ServerHandle, mac: &str, key: &str) -> Option<Value> {
    h.server
        .store
        .terminal(mac)
        .ok()
        .flatten()
        .and_then(|r| r.reports.get(key).cloned())
}

pub fn api(h: &ServerHandle) -> ApiClient {
    ApiClient::new(format!("http://{}", h.api_addr), h.server.api_token.clone())
}

pub fn agent_config(dir: &Path, port: u16, mac: &str) -> AgentConfig {
    let mut cfg = AgentConfig::new("127.0.0.1", dir);
    cfg.server_port = port;
    cfg.mac = Some(mac.into());
    cfg.heartbeat_secs = 1;
    cfg.request_timeout_secs = 3;
    cfg.performance_secs = 0;
    cfg.connect_retry_ms = 300;
    cfg.platform = PlatformConfig::all(EffectMode::Recording);
    cfg.bt.listen_port = 0;
    cfg
}

pub fn start_agent(cfg: AgentConfig) -> (Arc<Agent>, tokio::task::JoinHandle<()>) {
    init_log();
    let agent = Agent::new(cfg).expect("agent config is valid");
    let task = tokio::spawn(agent.clone().run());
    (agent, task)
}

/// Waits for the first event matching `pred`.
pub async fn wait_event(
    rx: &mut broadcast::Receiver<ServerEvent>,
    secs: u64,
    pred: impl Fn(&ServerEvent) -> bool,
) -> ServerEvent {
    tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            match rx.recv().await {
                Ok(ev) if pred(&ev) => return ev,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event channel closed: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no matching event within {secs} s"))
}

pub fn is_login(mac: &str) -> impl Fn(&ServerEvent) -> bool + '_ {
    move |e| matches!(e, ServerEvent::Login { mac: m, .. } if m == mac)
}

pub fn is_heartbeat(mac: &str) -> impl Fn(&ServerEvent) -> bool + '_ {
    move |e| matches!(e, ServerEvent::Heartbeat { mac: m } if m == mac)
}

/// A protocol client that writes frames by hand.
pub struct RawClient {
    pub io: Framed<TcpStream, FrameCodec>,
    pub token: bytes::Bytes,
    seq: u32,
}

impl RawClient {
    pub async fn connect(addr: std::net::SocketAddr) -> RawClient {
        let s = TcpStream::connect(addr).await.expect("connect");
        RawClient {
            io: Framed::new(s, FrameCodec::default()),
            token: bytes::Bytes::new(),
            seq: 0,
        }
    }

    /// From the local address `from` (127.0.0.2 on loopback stands for a
    /// second host on the LAN).
    pub async fn connect_from(from: &str, addr: std::net::SocketAddr) -> RawClient {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind(format!("{from}:0").parse().expect("from"))
            .expect("bind");
        let s = sock.connect(addr).await.expect("connect");
        RawClient {
            io: Framed::new(s, FrameCodec::default()),
            token: bytes::Bytes::new(),
            seq: 0,
        }
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.io.get_ref().local_addr().expect("addr")
    }

    pub async fn send_json(&mut self, code: ServiceCode, body: &Value) {
        self.seq += 1;
        let f = Frame::request_json(code, self.seq, ClientType::Linux, &self.token, body)
            .expect("json");
        self.io.send(f).await.expect("send");
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.io.get_mut().write_all(bytes).await.expect("write");
    }

    /// Next frame, or None on close / timeout.
    pub async fn recv(&mut self) -> Option<Frame> {
        match tokio::time::timeout(Duration::from_secs(5), self.io.next()).await {
            Ok(Some(Ok(f))) => Some(f),
            _ => None,
        }
    }

    pub async fn request(&mut self, code: ServiceCode, body: &Value) -> (Frame, Envelope<Value>) {
        self.send_json(code, body).await;
        loop {
            let f = self.recv().await.expect("an answer");
            if f.service_code == code as u32 {
                let env = f.json().expect("envelope");
                return (f, env);
            }
        }
    }

    pub async fn login(&mut self, mac: &str) -> Envelope<Value> {
        let (f, env) = self
            .request(
                ServiceCode::TerminalLogin,
                &serde_json::json!({"mac": mac, "ip": "127.0.0.1"}),
            )
            .await;
        self.token = f.token.clone();
        env
    }

    /// True when the peer closed the connection (reads hit EOF).
    pub async fn closed(&mut self) -> bool {
        let mut buf = BytesMut::new();
        use tokio::io::AsyncReadExt;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), self.io.get_mut().read_buf(&mut buf))
                .await
            {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// Runs a command (ip, tc, …); its stderr is the error.
pub fn sh(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A child process killed and reaped when dropped.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// aria2c on a closed LAN: no DHT, LPD or PEX, quiet.
pub fn aria2c(args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new("aria2c");
    c.args([
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--file-allocation=none",
        "--console-log-level=warn",
        "--summary-interval=0",
    ])
    .args(args)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    c
}

/// The default desktop group: one system disk `disk_uuid` at `levels`
/// (1 GiB virtual, up to two diffs).
pub fn layer_group(
    name: &str,
    group_uuid: &str,
    disk_uuid: &str,
    levels: &[i64],
) -> voi::protocol::messages::DesktopGroup {
    use voi::protocol::messages::{DesktopGroup, DiskInfo};
    use voi::protocol::Sectors;
    DesktopGroup {
        desktop_group_name: name.into(),
        desktop_group_uuid: group_uuid.into(),
        default_desktop_group: true,
        os_sys_type: 3,
        disks: levels
            .iter()
            .map(|&l| DiskInfo {
                uuid: disk_uuid.into(),
                disk_type: 0,
                dif_level: l,
                prefix: "voi".into(),
                max_dif: Some(2),
                operate_id: 0,
                real_size: Sectors(1 << 21),
                reserve_size: Sectors(0),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// A base layer holding `mib` MiB of random data.
pub fn make_base(path: &Path, mib: u64) {
    let raw = path.with_extension("raw");
    let ok = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("head -c {mib}M /dev/urandom > '{}'", raw.display()))
        .status()
        .expect("sh")
        .success();
    assert!(ok, "random data");
    let out = std::process::Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(path)
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "qemu-img convert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(&raw).expect("rm raw");
}

/// Polls `f` until it holds, failing after `secs`.
pub async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the agent's layer `name` is in its chain and seeding.
pub fn seeding(agent: &Agent, name: &str) -> bool {
    agent
        .transfers
        .get()
        .and_then(|t| t.get(name))
        .is_some_and(|(r, _)| r.stage == voi::agent::transfers::tasks::Stage::Seeding)
}

/// `PUT <url>` with a JSON body and the operator token `t`, through curl
/// (from this test's own namespace, so it also reaches a server in
/// another one); the request must succeed. Returns the answer's body.
pub fn api_put(url: &str, body: &str) -> String {
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-m",
            "10",
            "-X",
            "PUT",
            "-H",
            "Authorization: Bearer t",
        ])
        .args(["-H", "content-type: application/json", "-d", body])
        .arg(url)
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "PUT {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A port nothing listens on right now (for configs that need a number).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Runs a command that must succeed.
pub fn run(cmd: &mut std::process::Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A diff over `parent` (relative name, same directory) with `mib` MiB
/// written.
/// An empty qcow2 `name` in `dir`, backed by `parent` (named relatively).
pub fn make_overlay(dir: &Path, name: &str, parent: &str) {
    run(std::process::Command::new("qemu-img")
        .current_dir(dir)
        .args([
            "create", "-q", "-f", "qcow2", "-b", parent, "-F", "qcow2", name,
        ]));
}

pub fn make_diff(dir: &Path, name: &str, parent: &str, mib: u64, pattern: u8) {
    make_overlay(dir, name, parent);
    run(std::process::Command::new("qemu-io")
        .current_dir(dir)
        .args(["-f", "qcow2", "-c"])
        .arg(format!("write -P {pattern} 0 {mib}M"))
        .arg(name));
}

/// A server written by hand: answers the agent's requests with `{code:0}`
/// unless told otherwise, and lets the test inject frames.
pub struct FakeServer {
    listener: TcpListener,
}

pub type Conn = Framed<tokio::net::TcpStream, FrameCodec>;

impl FakeServer {
    pub async fn new() -> FakeServer {
        FakeServer {
            listener: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        }
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().expect("addr").port()
    }

    pub async fn accept(&self) -> Conn {
        let (s, _) = tokio::time::timeout(Duration::from_secs(15), self.listener.accept())
            .await
            .expect("agent connects")
            .expect("accept");
        Framed::new(s, FrameCodec::default())
    }

    pub fn answer(req: &Frame, body: serde_json::Value) -> Frame {
        Frame::response_json(
            req,
            ClientType::Server,
            &bytes::Bytes::from_static(b"tok"),
            &body,
        )
        .expect("frame")
    }

    /// Answers requests until the startup sequence is done (9010 answered).
    pub async fn serve_startup(conn: &mut Conn) {
        loop {
            let f = tokio::time::timeout(Duration::from_secs(10), conn.next())
                .await
                .expect("request")
                .expect("open")
                .expect("frame");
            let code = f.service_code;
            conn.send(Self::answer(
                &f,
                json!({"code": 0, "msg": "Success",
                       "data": {"conf_version": -1, "batch_no": 0, "terminal_id": -1}}),
            ))
            .await
            .expect("send");
            if code == ServiceCode::OrderQuery as u32 {
                return;
            }
        }
    }

    /// Next command reply from the agent (skipping its requests).
    pub async fn next_reply(conn: &mut Conn) -> Frame {
        loop {
            let f = tokio::time::timeout(Duration::from_secs(10), conn.next())
                .await
                .expect("reply in time")
                .expect("open")
                .expect("frame");
            if f.is_response() {
                return f;
            }
            let _ = conn
                .send(Self::answer(&f, json!({"code": 0, "msg": "Success"})))
                .await;
        }
    }
}

pub fn command(code: u32, payload: &[u8]) -> Frame {
    Frame {
        service_code: code,
        sequence_code: 77,
        data_type: 1,
        client_type: 4,
        req_or_res: 1,
        token: bytes::Bytes::from_static(b"tok"),
        payload: bytes::Bytes::copy_from_slice(payload),
    }
}
