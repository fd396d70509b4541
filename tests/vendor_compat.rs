//! Wire compatibility with the vendor's two terminal generations and its
//! server, from the frames they really send: the v2.28 C terminal's bodies
//! as `../shared/vendor-captures/rescue-v2.28-vs-voi-server.log` recorded
//! them (cJSON with tabs), and the dianshang server's habits that running it
//! showed (notes §11): `encoding = 1` on plain JSON, 1015 sent with
//! `data_type = 1`, a 9019 that fails, a bare Success to 9023.
//!
//! Our binaries are real (voi-server, voi-agent, their BitTorrent engines);
//! the vendor peers are played by raw frames.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use voi::protocol::{Envelope, Frame, ServiceCode};

const U: &str = "91f9d1ba-cb4a-41ba-971a-618f9e306571";
const G: &str = "f15a1759-789e-4e17-a3e1-e723121e9314";
const MAC: &str = "52:54:00:C0:FF:EE";

fn layer(level: u8) -> String {
    format!("voi_{level}_{U}")
}

/// A request as the v2.28 terminal frames it: data_type 1, encoding 0,
/// client_type 5 (or 2 installed), sequence 0, the body bytes as given.
fn v228(code: u32, token: &[u8], body: &str) -> Frame {
    Frame {
        service_code: code,
        sequence_code: 0,
        data_type: 1,
        client_type: 5,
        req_or_res: 1,
        token: bytes::Bytes::copy_from_slice(token),
        payload: bytes::Bytes::copy_from_slice(body.as_bytes()),
    }
}

/// The transcript's bodies, with its literal tabs and newlines.
fn login_body(ip: &str) -> String {
    format!("{{\n\t\"mac\":\t\"{MAC}\",\n\t\"ip\":\t\"{ip}\"\n}}")
}
fn mac_body() -> String {
    format!("{{\n\t\"mac\":\t\"{MAC}\"\n}}")
}
const CONFIG_VERSION_BODY: &str = "{\n\t\"mac\":\t\"52:54:00:C0:FF:EE\",\n\t\"platform\":\t\"x86\",\n\t\"soft_version\":\t\"2.28\",\n\t\"disk_residue\":\t1000000\n}";

/// A raw terminal connection speaking the transcript's frames.
struct VendorTerminal {
    c: RawClient,
}

impl VendorTerminal {
    async fn connect(addr: std::net::SocketAddr) -> Self {
        VendorTerminal {
            c: RawClient::connect(addr).await,
        }
    }

    async fn send(&mut self, f: Frame) {
        self.c.io.send(f).await.expect("send");
    }

    /// The answer to `code`, skipping commands the server pushes meanwhile
    /// (returned in `pushed`).
    async fn answer(&mut self, code: u32, pushed: &mut Vec<Frame>) -> (Frame, Envelope<Value>) {
        loop {
            let f = self.c.recv().await.expect("an answer");
            if f.is_response() && f.service_code == code {
                let env = f.json().expect("envelope");
                return (f, env);
            }
            pushed.push(f);
        }
    }

    async fn request(&mut self, code: u32, body: &str) -> (Frame, Envelope<Value>) {
        let token = self.c.token.clone();
        self.send(v228(code, &token, body)).await;
        let mut pushed = Vec::new();
        self.answer(code, &mut pushed).await
    }

    /// 9001, 9004 as the v2.28 terminal sends them.
    async fn log_in(&mut self, ip: &str) -> Envelope<Value> {
        let (f, env) = self.request(9001, &login_body(ip)).await;
        self.c.token = f.token.clone();
        env
    }

    /// A reply to a pushed command, as v2.28 writes it: sequence 0 and
    /// `{code, msg, data{mac, batch_no}}` pretty-printed with tabs.
    async fn reply(&mut self, cmd: &Frame, batch_no: &Value) {
        let body = format!(
            "{{\n\t\"code\":\t0,\n\t\"msg\":\t\"Success\",\n\t\"data\":\t{{\n\t\t\"mac\":\t\"{MAC}\",\n\t\t\"batch_no\":\t{batch_no}\n\t}}\n}}"
        );
        let f = Frame {
            service_code: cmd.service_code,
            sequence_code: 0,
            data_type: 1,
            client_type: 2,
            req_or_res: 2,
            token: self.c.token.clone(),
            payload: body.into_bytes().into(),
        };
        self.send(f).await;
    }
}

fn sectors_of(path: &Path) -> String {
    std::fs::metadata(path)
        .expect("layer")
        .len()
        .div_ceil(512)
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_v2_28_terminal_session_as_recorded() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let mut t = VendorTerminal::connect(h.addr).await;

    // 9001: token in the header and in data, with the server's time beside it.
    let env = t.log_in("127.0.0.1").await;
    assert_eq!(env.code, 0, "{}", env.msg);
    let data = env.data.expect("data");
    assert_eq!(
        data["token"].as_str().map(str::as_bytes),
        Some(&t.c.token[..])
    );
    assert!(
        data["datetime"].as_str().is_some_and(|d| d.len() == 19),
        "{data}"
    );

    // 9004 from a terminal never configured: -1, as the vendor server says.
    let (_, env) = t.request(9004, CONFIG_VERSION_BODY).await;
    assert_eq!(env.data.expect("data")["conf_version"], -1);

    // 9005: never an empty server_ip; here (no NAT, no advertise_ip) the
    // address it reached us at, inside the program object.
    let (_, env) = t.request(9005, &mac_body()).await;
    let data = env.data.expect("data");
    assert_eq!(data["setup_info"]["program"]["server_ip"], "127.0.0.1");
    assert_eq!(data["soft_version"], "2.28");

    // The D test terminal's `encoding = 1` on plain JSON: read, answered.
    let hb = v228(9000, &t.c.token.clone(), &mac_body());
    t.c.send_raw(&with_encoding_1(&hb)).await;
    let (_, env) = t.answer(9000, &mut Vec::new()).await;
    assert_eq!(env.code, 0, "heartbeat with encoding 1: {}", env.msg);

    // A wrong token: 60000, and the token it got echoed in the header.
    t.send(v228(9000, b"0123456789abcdef0123456789abcdef", &mac_body()))
        .await;
    let (f, env) = t.answer(9000, &mut Vec::new()).await;
    assert_eq!(env.code, 60000);
    assert_eq!(&f.token[..], b"0123456789abcdef0123456789abcdef");

    // Reports as v2.28 and the upper client send them: none refused.
    let layer0 = layer(0);
    for body in [
        // The transcript's finished report, torrent_name with .torrent.
        format!("{{\n\t\"torrent_name\":\t\"{layer0}.torrent\",\n\t\"mac\":\t\"{MAC}\",\n\t\"progress\":\t100,\n\t\"state\":\t\"finished\",\n\t\"download_rate\":\t\"0\",\n\t\"upload_rate\":\t\"0\",\n\t\"total_size\":\t\"0\",\n\t\"file_size\":\t\"0\"\n}}"),
        // The HTTP path: an empty torrent_name.
        format!("{{\n\t\"torrent_name\":\t\"\",\n\t\"mac\":\t\"{MAC}\",\n\t\"progress\":\t100,\n\t\"state\":\t\"finished\",\n\t\"download_rate\":\t\"0\",\n\t\"upload_rate\":\t\"0\",\n\t\"total_size\":\t\"0\",\n\t\"file_size\":\t\"197120\"\n}}"),
        // No state at all.
        format!("{{\"torrent_name\":\"{layer0}.torrent\",\"mac\":\"{MAC}\",\"progress\":40}}"),
    ] {
        let (_, env) = t.request(9025, &body).await;
        assert_eq!(env.code, 0, "{body}: {}", env.msg);
    }
    let (_, env) = t
        .request(
            9015,
            r#"{"torrent_id":"0d5c8e5e-4c1e-4f0a-9b61-2a1f5b1f1c11","msg":"ok","result":1}"#,
        )
        .await;
    assert_eq!(env.code, 0, "{}", env.msg);
    // Progress is kept under the layer name, where `ctl images` shows it.
    let images = api(&h).get("/api/v1/images").await.expect("api");
    let progress = &images.data.expect("data")["progress"][MAC];
    assert_eq!(progress[&layer0]["progress"], 40, "{progress}");

    // v2.28's disk_residue is in sectors (CONFIG_VERSION_BODY: 1000000):
    // kept and shown in GB, as the other generation's (issue 39.11).
    let rec = h.server.store.terminal(MAC).ok().flatten().expect("record");
    let gb = 1_000_000.0 * 512.0 / f64::from(1u32 << 30);
    assert!(
        (rec.config.disk_residue - gb).abs() < 1e-9,
        "{}",
        rec.config.disk_residue
    );
    // A command v2.28 never answers: sent, and said so at once.
    let started = Instant::now();
    let r = api(&h)
        .push(MAC, "watermark_switch", json!({"switch": 1}), 30)
        .await
        .expect("api");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(r.code, 0);
    assert_eq!(
        r.msg,
        "no reply: this terminal's software (2.28) does not answer watermark_switch"
    );
    let pushed = t.c.recv().await.expect("1022 still went out");
    assert_eq!(pushed.service_code, 1022);
    // Nor, by its dispatch, 1010 (issue 39.8): said at once, not after 30 s.
    let started = Instant::now();
    let r = api(&h)
        .push(
            MAC,
            "add_data_disk",
            json!({"size": 100, "enable": 1, "restore": 0}),
            30,
        )
        .await
        .expect("api");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(r.msg.contains("does not answer add_data_disk"), "{}", r.msg);
    let pushed = t.c.recv().await.expect("1010 still went out");
    assert_eq!(pushed.service_code, 1010);
    // Numbering cannot include it: a session waiting for it never closes.
    let o = api(&h)
        .post("/api/v1/order", &json!({"start_id": 1, "macs": [MAC]}))
        .await
        .expect("api");
    assert_ne!(o.code, 0);
    assert!(o.msg.contains("does not answer order"), "{}", o.msg);

    // 9002: logged out and offline, but the socket stays and a heartbeat
    // on it is answered.
    let (_, env) = t.request(9002, &login_body("127.0.0.1")).await;
    assert_eq!(env.code, 0);
    let (_, env) = t.request(9000, &mac_body()).await;
    assert_eq!(env.code, 0, "heartbeat after logout: {}", env.msg);
    let view = api(&h)
        .get(&format!("/api/v1/terminals/{MAC}"))
        .await
        .expect("api");
    assert_eq!(view.data.expect("data")["online"], false);
    h.stop().await;
}

#[tokio::test]
async fn a_terminal_behind_nat_is_never_sent_an_address_that_strands_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    // Loopback socket, but the terminal says it is 10.0.2.15: QEMU's user
    // network (the PXE test) looks exactly like this.
    let mut t = VendorTerminal::connect(h.addr).await;
    assert_eq!(t.log_in("10.0.2.15").await.code, 0);
    let (_, env) = t.request(9005, &mac_body()).await;
    assert_eq!(env.code, 0);
    let data = env.data.expect("data");
    let program = data["setup_info"]["program"]
        .as_object()
        .expect("the program object stays");
    assert!(!program.contains_key("server_ip"), "{data}");
    // A loopback server_ip stored from an earlier 9006 (an agent on the
    // server's own host once used this MAC) strands it as well: not given.
    h.server
        .store
        .update_terminal(MAC, |r| {
            r.config.setup_info.program.server_ip = "127.0.0.1".into();
        })
        .expect("store");
    let (_, env) = t.request(9005, &mac_body()).await;
    let data = env.data.expect("data");
    assert!(
        data["setup_info"]["program"].get("server_ip").is_none(),
        "a stored loopback server_ip was handed to a terminal behind NAT: {data}"
    );
    h.stop().await;

    // With advertise_ip configured, that is what every terminal gets.
    let mut cfg = server_config(&dir.path().join("s2"), "127.0.0.1:0");
    cfg.advertise_ip = Some("192.0.2.7".into());
    let h = voi::server::Server::start(cfg).await.expect("server");
    let mut t = VendorTerminal::connect(h.addr).await;
    assert_eq!(t.log_in("10.0.2.15").await.code, 0);
    let (_, env) = t.request(9005, &mac_body()).await;
    assert_eq!(
        env.data.expect("data")["setup_info"]["program"]["server_ip"],
        "192.0.2.7"
    );
    h.stop().await;
}

/// 9023 as v2.28 sends them at first boot: levels 0-2 of each disk type,
/// with `diff_disk_uuid: ""` for the types the group lacks.
fn diff_disk_requests() -> Vec<String> {
    let mut out = Vec::new();
    for (ty, uuid, levels) in [(0, U, 0..=2), (1, "", 0..=2), (2, "", 0..=0)] {
        for l in levels {
            out.push(format!(
                "{{\n\t\"mac\":\t\"{MAC}\",\n\t\"desktop_group_uuid\":\t\"{G}\",\n\t\"diff_disk_uuid\":\t\"{uuid}\",\n\t\"diff_level\":\t{l},\n\t\"diff_disk_type\":\t{ty}\n}}"
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_v2_28_terminal_gets_its_desktop_by_1017_and_url() {
    if !has(
        "a_v2_28_terminal_gets_its_desktop_by_1017_and_url",
        &[ARIA2C],
    ) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let lib = h.server.images.dir().to_path_buf();
    make_base(&lib.join(layer(0)), 8);
    h.server.images.scan().await.expect("scan");
    h.server
        .store
        .put_group(&layer_group("g1", G, U, &[0]))
        .expect("group");
    let mut t = VendorTerminal::connect(h.addr).await;
    assert_eq!(t.log_in("127.0.0.1").await.code, 0);
    t.request(9004, CONFIG_VERSION_BODY).await;

    // 9023 x7: the layer the library holds comes with its URL and its real
    // size in sectors; the others are 60024; no 1015 follows for v2.28.
    let mut pushed = Vec::new();
    let token = t.c.token.clone();
    for body in diff_disk_requests() {
        t.send(v228(9023, &token, &body)).await;
    }
    let mut answers = Vec::new();
    for _ in 0..7 {
        answers.push(t.answer(9023, &mut pushed).await.1);
    }
    let found: Vec<&Envelope<Value>> = answers.iter().filter(|e| e.code == 0).collect();
    assert_eq!(found.len(), 1, "{answers:?}");
    let d = found[0].data.as_ref().expect("data");
    assert_eq!(d["file_size"], sectors_of(&lib.join(layer(0))));
    assert!(d["download_url"]
        .as_str()
        .is_some_and(|u| u.ends_with(&format!("/torrents/{}.torrent", layer(0)))));
    assert!(answers
        .iter()
        .filter(|e| e.code != 0)
        .all(|e| e.code == 60024));

    // The operator sends the desktop: v2.28 gets 1017, never 1008/1015.
    let api_client = api(&h);
    let send = tokio::spawn(async move {
        api_client
            .post(
                &format!("/api/v1/terminals/{MAC}/download_desktop"),
                &json!({"group_uuid": G, "timeout_secs": 20}),
            )
            .await
    });
    let cmd = loop {
        let f = t.c.recv().await.expect("a command");
        if !f.is_response() {
            break f;
        }
    };
    assert_eq!(cmd.service_code, 1017, "v2.28 acts on send_desktop only");
    let body: Value = cmd.json().expect("json");
    let disk = &body["desktop"]["disks"][0];
    assert_eq!(disk["file_size"], sectors_of(&lib.join(layer(0))));
    assert!(disk["real_size"].is_string(), "sizes travel as strings");
    let url = disk["download_url"].as_str().expect("url").to_string();
    t.reply(&cmd, &body["batch_no"]).await;
    let sent = send.await.expect("join").expect("api");
    assert_eq!(sent.code, 0, "{}", sent.msg);
    assert!(pushed
        .iter()
        .all(|f| f.service_code != 1008 && f.service_code != 1015));

    // The terminal fetches the torrent by URL and the layer over
    // BitTorrent with a client nobody here wrote.
    let torrent = voi::agent::transfers::fetch_torrent(&url)
        .await
        .expect("torrent");
    let tpath = dir.path().join("t.torrent");
    std::fs::write(&tpath, &torrent).expect("write");
    let get = dir.path().join("get");
    let status = aria2c(&[
        &format!("--dir={}", get.display()),
        "--seed-time=0",
        &format!("--listen-port={}", free_port()),
        tpath.to_str().expect("utf8"),
    ])
    .status()
    .expect("aria2c");
    assert!(status.success());
    assert_eq!(
        std::fs::read(get.join(layer(0))).expect("fetched"),
        std::fs::read(lib.join(layer(0))).expect("library"),
        "byte-identical"
    );
    // Its report, as recorded, reaches the operator under the layer name.
    let report = format!("{{\n\t\"torrent_name\":\t\"{}.torrent\",\n\t\"mac\":\t\"{MAC}\",\n\t\"progress\":\t100,\n\t\"state\":\t\"finished\",\n\t\"download_rate\":\t\"0\",\n\t\"upload_rate\":\t\"0\",\n\t\"total_size\":\t\"0\",\n\t\"file_size\":\t\"0\"\n}}", layer(0));
    assert_eq!(t.request(9025, &report).await.1.code, 0);
    let images = api(&h).get("/api/v1/images").await.expect("api");
    assert_eq!(
        images.data.expect("data")["progress"][MAC][layer(0)]["progress"],
        100
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_older_terminal_gets_a_1015_after_its_9023() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let lib = h.server.images.dir().to_path_buf();
    make_base(&lib.join(layer(0)), 4);
    h.server.images.scan().await.expect("scan");
    h.server
        .store
        .put_group(&layer_group("g1", G, U, &[0]))
        .expect("group");
    let mut t = VendorTerminal::connect(h.addr).await;
    assert_eq!(t.log_in("127.0.0.1").await.code, 0);
    let older = CONFIG_VERSION_BODY.replace("2.28", "2.20");
    t.request(9004, &older).await;
    let (_, env) = t.request(9023, &diff_disk_requests()[0]).await;
    assert_eq!(env.code, 0);
    // Then, as the vendor server does, the layer as a binary 1015.
    let f = t.c.recv().await.expect("a 1015 follows");
    assert_eq!(f.service_code, 1015);
    assert_eq!(f.data_type, 0);
    let s = voi::protocol::torrent_struct::SendTorrent::parse(&f.payload).expect("struct");
    assert_eq!(s.uuid, U);
    assert_eq!(s.file_size.to_string(), sectors_of(&lib.join(layer(0))));
    let img = h.server.images.get(&layer(0)).expect("image");
    assert_eq!(&s.torrent[..], &img.torrent[..]);
    h.stop().await;
}

/// The header byte the vendor server sets on everything it sends.
fn with_encoding_1(f: &Frame) -> Vec<u8> {
    let mut b = f.to_bytes().to_vec();
    b[17] = 1;
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_agent_takes_a_desktop_from_a_vendor_style_server() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("tmp");
    // The layer's seeder and tracker: a voi-server library. The "vendor"
    // server the agent talks to is played by hand and knows no manifests
    // and no trackers (its 9019 fails).
    let seeder = start_server(&dir.path().join("seeder")).await;
    let lib = seeder.server.images.dir().to_path_buf();
    make_base(&lib.join(layer(0)), 8);
    seeder.server.images.scan().await.expect("scan");
    let img = seeder.server.images.get(&layer(0)).expect("image");
    let group = layer_group("g1", G, U, &[0]);

    let vendor = FakeServer::new().await;
    let mac = "AA:00:00:00:13:01";
    let (agent, task) = start_agent(agent_config(&dir.path().join("a"), vendor.port(), mac));
    let mut conn = vendor.accept().await;
    let task_uuid = "6a1f0d38-7c1e-4bb4-9d0e-3e2f1a5c0b77";
    let mut sent_commands = false;
    let (mut saw_1004, mut saw_1015, mut progress, mut result) = (false, None, 0, None);
    let mut last_9025: Option<Value> = None;
    let mut results: Vec<Value> = Vec::new();
    let mut finals: Vec<Value> = Vec::new();
    let again_uuid = "7b2e1e49-8d2f-4cc5-8e1f-4f3a2b6d1c88";
    let mut sent_again = false;
    let mut again_reply: Option<Envelope<Value>> = None;
    let start = Instant::now();
    while results.len() < 2 || (sent_again && again_reply.is_none()) {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "no 9015 within 90 s (1004 {saw_1004}, 1015 {saw_1015:?}, 9025 x{progress})"
        );
        let f = tokio::time::timeout(Duration::from_secs(30), conn.next())
            .await
            .expect("traffic")
            .expect("open")
            .expect("frame");
        if f.is_response() {
            let env: Envelope<Value> = f.json().expect("reply");
            match f.service_code {
                1004 => {
                    assert_eq!(env.code, 0, "1004 with encoding 1: {}", env.msg);
                    saw_1004 = true;
                }
                1015 if saw_1015.is_none() => saw_1015 = Some(env),
                1015 => again_reply = Some(env),
                _ => {}
            }
            continue;
        }
        let answer = match f.service_code {
            // The vendor server without a controller image IP.
            9019 => json!({"code": 50004, "msg": "ParamError"}),
            9007 => json!({"code": 0, "msg": "Success", "data": {"desktop_group_list": [group]}}),
            // A bare Success, then the layer as a 1015 (below).
            9023 => json!({"code": 0, "msg": "Success"}),
            9004 => json!({"code": 0, "msg": "Success", "data": {"conf_version": -1}}),
            9010 => {
                json!({"code": 0, "msg": "Success", "data": {"batch_no": 0, "terminal_id": -1}})
            }
            9025 => {
                progress += 1;
                let body: Value = f.json().expect("9025");
                if body["state"] == "finished" {
                    finals.push(body.clone());
                }
                last_9025 = Some(body);
                json!({"code": 0, "msg": "Success"})
            }
            9015 => {
                let body = f.json::<Value>().expect("9015");
                result.get_or_insert(body.clone());
                results.push(body);
                json!({"code": 0, "msg": "Success"})
            }
            _ => json!({"code": 0, "msg": "Success"}),
        };
        let a = FakeServer::answer(&f, answer);
        conn.get_mut()
            .write_all(&with_encoding_1(&a))
            .await
            .expect("answer");
        // The same layer again, now that it is here (D makes a task row
        // for it): answered already_present, then 9025 finished 100 and a
        // 9015, as for a download.
        if result.is_some() && !sent_again {
            sent_again = true;
            let d = &group.disks[0];
            let body = voi::server::Server::send_torrent_body(&group, d, &img, again_uuid);
            let mut push = command(1015, &body.encode());
            push.data_type = 1;
            conn.get_mut()
                .write_all(&with_encoding_1(&push))
                .await
                .expect("1015 again");
        }
        if f.service_code == 9023 && !sent_commands {
            sent_commands = true;
            // encoding 1 on a plain JSON command.
            let rename = command(1004, br#"{"batch_no":41,"name":"PC-41","conf_version":1}"#);
            conn.get_mut()
                .write_all(&with_encoding_1(&rename))
                .await
                .expect("1004");
            // The 1015 struct with data_type 1, as the vendor's socket
            // wrapper sends it.
            let d = &group.disks[0];
            let body = voi::server::Server::send_torrent_body(&group, d, &img, task_uuid);
            let mut push = command(1015, &body.encode());
            push.data_type = 1;
            conn.get_mut()
                .write_all(&with_encoding_1(&push))
                .await
                .expect("1015");
        }
    }
    assert!(saw_1004, "the 1004 with encoding 1 was answered");
    let reply = saw_1015.expect("the 1015 was answered");
    assert_eq!(reply.code, 0, "{}", reply.msg);
    assert_eq!(
        reply.data.as_ref().expect("data")["batch_no"],
        task_uuid,
        "answered with the task uuid"
    );
    assert!(progress >= 1, "9025 reached the server");
    assert_eq!(result.expect("9015")["result"], 1);
    // The already-present layer's own 9015 and final 9025.
    let again = again_reply.expect("the second 1015 was answered");
    assert_eq!(again.data.as_ref().expect("data")["already_present"], true);
    assert_eq!(results[1]["result"], 1, "{results:?}");
    assert!(finals.len() >= 2, "a final 9025 for each: {finals:?}");
    for f in &finals {
        assert_eq!(f["progress"], 100, "{f}");
        // The vendor's server keeps the last rate it hears: never "0".
        let rate = f["download_rate"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| f["download_rate"].to_string());
        assert_ne!(rate, "0", "final 9025 with rate 0: {f}");
    }
    let _ = last_9025;
    let got = agent.cfg.disk_dir().join(layer(0));
    assert_eq!(
        std::fs::read(&got).expect("layer"),
        std::fs::read(lib.join(layer(0))).expect("library")
    );
    voi::disk::qemu_img::check(&got).expect("qemu-img check");
    agent.shutdown.cancel();
    let _ = task.await;
    seeder.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_100_gb_data_disk_is_thin_and_its_overcommit_is_reported() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let mac = "AA:00:00:00:13:02";
    let mut ev = h.server.registry.events.subscribe();
    let (agent, task) = start_agent(agent_config(&dir.path().join("a"), h.addr.port(), mac));
    wait_event(&mut ev, 20, is_heartbeat(mac)).await;
    // The vendor UI asks for 100 GB; ask for more than any test disk has,
    // so the overcommit shows wherever this runs.
    let (_, env) = h
        .server
        .push(
            mac,
            ServiceCode::AddDataDisk,
            json!({"size": 16000, "enable": 1, "restore": 0}),
            Duration::from_secs(20),
        )
        .await
        .expect("reply");
    assert_eq!(env.code, 0, "{}", env.msg);
    let name = env.data.expect("data")["disk"]
        .as_str()
        .expect("disk")
        .to_string();
    let path = agent.cfg.disk_dir().join(&name);
    voi::disk::qemu_img::check(&path).expect("qemu-img check");
    let header = voi::disk::qcow2::read_header(&path).expect("header");
    assert_eq!(header.virtual_size, 16000 << 30);
    assert!(std::fs::metadata(&path).expect("file").len() < 16 << 20);
    assert!(agent
        .state
        .read(|s| s.notices.iter().any(|n| n.contains("overcommitted"))));
    assert!(agent
        .state
        .read(|s| s.notices.iter().any(|n| n.contains("GB = 2^30 bytes"))));
    // 9004 reports the file system's free space, not 0: the vendor's
    // server ignores a 0 and keeps a stale figure.
    let free = nix::sys::statvfs::statvfs(&agent.cfg.data_dir).expect("statvfs");
    #[allow(clippy::unnecessary_cast)]
    let free = free.blocks_available() as u64 * free.fragment_size() as u64;
    let residue = agent.disk_residue_gb();
    assert!(residue > 0.0, "residue {residue}");
    assert!(
        (residue - free as f64 / (1u64 << 30) as f64).abs() < 1.0,
        "residue {residue} GB, free {free} bytes"
    );
    agent.shutdown.cancel();
    let _ = task.await;
    h.stop().await;
}

/// Only a successful 9007 removes layers: the vendor's server (D) answers
/// -1 without its yzy_server, and the agent then keeps every layer; the
/// next 9007 that succeeds without the group removes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_9007_deletes_nothing_and_a_successful_one_does() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = agent_config(&dir.path().join("a"), 0, "AA:00:00:00:13:21");
    let disks = cfg.disk_dir();
    std::fs::create_dir_all(&disks).expect("disks");
    make_base(&disks.join(layer(0)), 1);
    let vendor = FakeServer::new().await;
    let mut cfg = cfg;
    cfg.server_port = vendor.port();
    let (agent, task) = start_agent(cfg);
    let mut conn = vendor.accept().await;
    let mut lists = 0;
    let start = Instant::now();
    // Two failed 9007s (the login's and a 1024's), then one that works.
    let mut sent_1024 = false;
    loop {
        assert!(start.elapsed() < Duration::from_secs(60), "no 9007s");
        let f = tokio::time::timeout(Duration::from_secs(20), conn.next())
            .await
            .expect("traffic")
            .expect("open")
            .expect("frame");
        if f.is_response() {
            continue;
        }
        let answer = if f.service_code == 9007 {
            lists += 1;
            if lists <= 2 {
                json!({"code": -1, "msg": "yzy_server unreachable"})
            } else {
                json!({"code": 0, "msg": "Success", "data": {"desktop_group_list": []}})
            }
        } else {
            json!({"code": 0, "msg": "Success", "data": {"conf_version": -1, "batch_no": 0, "terminal_id": -1}})
        };
        conn.send(FakeServer::answer(&f, answer))
            .await
            .expect("answer");
        if f.service_code == 9007 && lists <= 2 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(
                disks.join(layer(0)).exists(),
                "a failed 9007 deleted the layer"
            );
            if !sent_1024 {
                sent_1024 = true;
                conn.send(command(1024, br#"{"batch_no": 5}"#))
                    .await
                    .expect("1024");
            } else {
                conn.send(command(1024, br#"{"batch_no": 6}"#))
                    .await
                    .expect("1024");
            }
        }
        if lists == 3 {
            break;
        }
    }
    let start = Instant::now();
    while disks.join(layer(0)).exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a successful 9007 without the group kept its layer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.shutdown.cancel();
    let _ = task.await;
}

/// 1018 push_task_result, as D's web side sends it (push_bt_result): taken
/// and recorded, answered Success with its batch_no, not NotImplemented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_task_result_is_recorded_and_answered_with_its_batch_no() {
    let dir = tempfile::tempdir().expect("tmp");
    let vendor = FakeServer::new().await;
    let (agent, task) = start_agent(agent_config(
        &dir.path().join("a"),
        vendor.port(),
        "AA:00:00:00:13:31",
    ));
    let mut conn = vendor.accept().await;
    FakeServer::serve_startup(&mut conn).await;
    conn.send(command(
        1018,
        br#"{"batch_no": 1777, "torrent_id": "0d1c2b3a-voi_1", "result": 1, "msg": "finished"}"#,
    ))
    .await
    .expect("1018");
    let reply = loop {
        let f = FakeServer::next_reply(&mut conn).await;
        if f.service_code == 1018 {
            break f;
        }
    };
    let env: Envelope<Value> = reply.json().expect("env");
    assert_eq!(env.code, 0, "{}", env.msg);
    assert_eq!(env.data.as_ref().expect("data")["batch_no"], 1777);
    // D's own BT ids are numbers, and it passes them through (issue 39.3).
    conn.send(command(
        1018,
        br#"{"batch_no": 1778, "torrent_id": 4711, "result": 2, "msg": "failed"}"#,
    ))
    .await
    .expect("1018 with a number");
    let reply = loop {
        let f = FakeServer::next_reply(&mut conn).await;
        if f.service_code == 1018 {
            break f;
        }
    };
    let env: Envelope<Value> = reply.json().expect("env");
    assert_eq!(env.code, 0, "a numeric torrent_id: {}", env.msg);
    assert!(agent
        .state
        .read(|s| s.notices.iter().any(|n| n.contains("0d1c2b3a-voi_1"))));
    agent.shutdown.cancel();
    let _ = task.await;
}

/// The first 9006 carries what D's check_config demands: a mask (else
/// 60006) and program.server_ip (else 60014), from the interface and the
/// session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_9006_carries_a_mask_and_the_server_ip() {
    let dir = tempfile::tempdir().expect("tmp");
    let vendor = FakeServer::new().await;
    let (agent, task) = start_agent(agent_config(
        &dir.path().join("a"),
        vendor.port(),
        "AA:00:00:00:13:41",
    ));
    let mut conn = vendor.accept().await;
    let start = Instant::now();
    let body = loop {
        assert!(start.elapsed() < Duration::from_secs(30), "no 9006");
        let f = tokio::time::timeout(Duration::from_secs(20), conn.next())
            .await
            .expect("traffic")
            .expect("open")
            .expect("frame");
        if f.is_response() {
            continue;
        }
        let code = f.service_code;
        conn.send(FakeServer::answer(
            &f,
            json!({"code": 0, "msg": "Success", "data": {"conf_version": -1, "batch_no": 0, "terminal_id": -1}}),
        ))
        .await
        .expect("answer");
        if code == 9006 {
            break f.json::<Value>().expect("9006");
        }
    };
    let has_interface = voi::agent::interfaces::detect(None).is_ok_and(|i| i.ipv4.is_some());
    eprintln!("9006: {body}");
    assert_eq!(
        body["setup_info"]["program"]["server_ip"], "127.0.0.1",
        "{body}"
    );
    if has_interface {
        assert_ne!(body["mask"], "", "{body}");
    }
    agent.shutdown.cancel();
    let _ = task.await;
}

/// 9005 as the vendor means it: its name becomes the host name, as 1004's
/// does; its `ip` for a terminal without a static address is the server's
/// record of the session's source, never made the terminal's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_9005_name_becomes_the_hostname_and_its_ip_is_no_order() {
    use voi::agent::platform::{JournalEntry, RecordingPlatform};
    let dir = tempfile::tempdir().expect("tmp");
    let vendor = FakeServer::new().await;
    let (agent, task) = start_agent(agent_config(
        &dir.path().join("a"),
        vendor.port(),
        "AA:00:00:00:13:51",
    ));
    let mut conn = vendor.accept().await;
    let start = Instant::now();
    let mut answered_9005 = false;
    while !answered_9005 {
        assert!(start.elapsed() < Duration::from_secs(30), "no 9005");
        let f = tokio::time::timeout(Duration::from_secs(20), conn.next())
            .await
            .expect("traffic")
            .expect("open")
            .expect("frame");
        if f.is_response() {
            continue;
        }
        let answer = match f.service_code {
            9004 => json!({"code": 0, "msg": "Success", "data": {"conf_version": 5}}),
            9005 => {
                answered_9005 = true;
                json!({"code": 0, "msg": "Success", "data": {
                    "mac": "AA:00:00:00:13:51", "name": "PC-7", "ip": "10.9.9.9", "is_dhcp": 1,
                    "mask": "255.255.255.0", "gateway": "10.9.9.1", "dns1": "", "dns2": "",
                    "conf_version": 5, "terminal_id": 7, "platform": "x86", "soft_version": "2.28",
                    "disk_residue": 1.0,
                    "setup_info": {"mode": {"show_desktop_type": 0, "auto_desktop": 0}, "program": {"server_ip": ""}}
                }})
            }
            _ => {
                json!({"code": 0, "msg": "Success", "data": {"conf_version": -1, "batch_no": 0, "terminal_id": -1}})
            }
        };
        conn.send(FakeServer::answer(&f, answer))
            .await
            .expect("answer");
    }
    let journal = agent.cfg.journal_path();
    let start = Instant::now();
    loop {
        let j = RecordingPlatform::read_journal(&journal);
        if j.contains(&JournalEntry::SetHostname {
            name: "PC-7".into(),
        }) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no hostname: {j:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let j = RecordingPlatform::read_journal(&journal);
    assert!(
        !j.iter()
            .any(|e| matches!(e, JournalEntry::ApplyNetwork { .. })),
        "{j:?}"
    );
    let t = agent.state.read(|s| s.terminal.clone());
    assert_eq!(t.name, "PC-7");
    assert_eq!(t.terminal_id, 7);
    assert_ne!(
        t.ip, "10.9.9.9",
        "the server's record became the terminal's address"
    );
    // The next session, to a server that lost its record: the 9006 says
    // the interface's address, not the server's old record (issue 39.5).
    drop(conn);
    let mut conn = vendor.accept().await;
    let start = Instant::now();
    let body = loop {
        assert!(start.elapsed() < Duration::from_secs(30), "no 9006");
        let f = tokio::time::timeout(Duration::from_secs(20), conn.next())
            .await
            .expect("traffic")
            .expect("open")
            .expect("frame");
        if f.is_response() {
            continue;
        }
        let code = f.service_code;
        conn.send(FakeServer::answer(
            &f,
            json!({"code": 0, "msg": "Success", "data": {"conf_version": -1, "batch_no": 0, "terminal_id": -1}}),
        ))
        .await
        .expect("answer");
        if code == 9006 {
            break f.json::<Value>().expect("9006");
        }
    };
    assert_ne!(
        body["ip"], "10.9.9.9",
        "the 9006 reported the server's record: {body}"
    );
    // The interface's address, as its mask is the interface's.
    let interface_ip = voi::agent::interfaces::detect(None)
        .ok()
        .and_then(|i| i.ipv4)
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    assert_eq!(body["ip"], interface_ip.as_str(), "{body}");
    agent.shutdown.cancel();
    let _ = task.await;
}

/// For R >= 2.25, which sends no 9015, the last 9025 is the result: at
/// 100 a success, at 0 a failure, filed as task_result so the API and
/// `--wait` see it. Pinning such a terminal to 1015 (which it answers and
/// then ignores) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_28_terminal_s_last_9025_is_its_result_and_1015_cannot_be_pinned() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let mac = "AA:00:00:00:13:61";
    let mut c = RawClient::connect(h.addr).await;
    assert!(c.login(mac).await.is_ok());
    let (_, env) = c
        .request(
            ServiceCode::GetConfigVersionId,
            &json!({"mac": mac, "platform": "x86", "soft_version": "2.28", "disk_residue": 10}),
        )
        .await;
    assert!(env.is_ok(), "{env:?}");
    for (level, progress) in [(0u8, 100), (1, 0)] {
        let (_, env) = c
            .request(
                ServiceCode::BtTaskState,
                &json!({"mac": mac, "torrent_name": format!("{}.torrent", layer(level)),
                        "progress": progress, "state": "finished", "download_rate": "0",
                        "upload_rate": "0", "total_size": "0", "file_size": "0"}),
            )
            .await;
        assert!(env.is_ok(), "{env:?}");
    }
    let rec = h
        .server
        .store
        .terminal(mac)
        .expect("store")
        .expect("record");
    assert_eq!(
        rec.reports[&format!("task_result:{}", layer(0))]["result"],
        1
    );
    assert_eq!(
        rec.reports[&format!("task_result:{}", layer(1))]["result"],
        2
    );
    let pinned = api(&h)
        .put(
            &format!("/api/v1/terminals/{mac}/delivery"),
            &json!({"delivery": "1015"}),
        )
        .await
        .expect("api");
    assert_ne!(pinned.code, 0, "{pinned:?}");
    assert!(pinned.msg.contains("1017"), "{}", pinned.msg);
    h.stop().await;
}

/// The desktop in a 1017 is kept: a group that D delivered by 1017 boots
/// although no 9007 lists it (D's 9007 may fail, or not know it yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_desktop_sent_by_1017_is_bootable_without_a_9007() {
    let dir = tempfile::tempdir().expect("tmp");
    let seeder = start_server(&dir.path().join("seeder")).await;
    let lib = seeder.server.images.dir().to_path_buf();
    make_base(&lib.join(layer(0)), 2);
    seeder.server.images.scan().await.expect("scan");
    let url = seeder.server.torrent_url(&layer(0), None);
    let vendor = FakeServer::new().await;
    let (agent, task) = start_agent(agent_config(
        &dir.path().join("a"),
        vendor.port(),
        "AA:00:00:00:13:71",
    ));
    let mut conn = vendor.accept().await;
    // Its 9007 fails, as D's does without its yzy_server.
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < Duration::from_secs(30), "no startup");
        let f = tokio::time::timeout(Duration::from_secs(20), conn.next())
            .await
            .expect("traffic")
            .expect("open")
            .expect("frame");
        if f.is_response() {
            continue;
        }
        let answer = if f.service_code == 9007 {
            json!({"code": -1, "msg": "yzy_server unreachable"})
        } else {
            json!({"code": 0, "msg": "Success", "data": {"conf_version": -1, "batch_no": 0, "terminal_id": -1}})
        };
        conn.send(FakeServer::answer(&f, answer))
            .await
            .expect("answer");
        if f.service_code == ServiceCode::OrderQuery as u32 {
            break;
        }
    }
    let send = json!({"batch_no": 88, "desktop": {
        "desktop_group_name": "lab-1017", "desktop_group_uuid": G, "diff_mode": 1,
        // As D's web side builds it (send_desktop_terminal): the restore
        // flag spelled sys_restore / data_restore, no desktop_group_restore.
        "sys_restore": 1, "data_restore": 1, "desktop_is_dhcp": 1, "default_desktop_group": true,
        "os_sys_type": 3,
        "disks": [{"uuid": U, "type": 0, "dif_level": 0, "prefix": "voi", "real_size": "4194304",
                   "reserve_size": "0", "max_dif": 2, "operate_id": 0, "download_url": url}]
    }});
    conn.send(command(1017, send.to_string().as_bytes()))
        .await
        .expect("1017");
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the layer never arrived"
        );
        // Answer whatever it asks meanwhile (9025, 9015).
        if let Ok(Some(Ok(f))) = tokio::time::timeout(Duration::from_millis(200), conn.next()).await
        {
            if !f.is_response() {
                let _ = conn
                    .send(FakeServer::answer(&f, json!({"code": 0, "msg": "Success"})))
                    .await;
            }
        }
        if agent.cfg.disk_dir().join(layer(0)).exists() {
            break;
        }
    }
    let groups = agent.state.read(|s| s.desktop_groups.clone());
    let g = groups
        .iter()
        .find(|g| g.desktop_group_uuid == G)
        .expect("the 1017's group is kept");
    assert_eq!(g.desktop_group_restore, 1);
    assert_eq!(g.diff_mode, 1);
    let plan = agent
        .desktops
        .boot_plan(&groups, G, false)
        .expect("bootable without a 9007");
    eprintln!("boot plan: {plan:?}");
    agent.shutdown.cancel();
    let _ = task.await;
    seeder.stop().await;
}

/// v2.28's failed torrent fetch ("finished" at 0 with no torrent name) is
/// filed against the layer its 1017 carried; and a 1005 it never answers
/// does not become the server_ip that 9005 hands out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_v2_28_failure_names_its_layer_and_an_unanswered_1005_is_not_handed_out() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let lib = h.server.images.dir().to_path_buf();
    make_base(&lib.join(layer(0)), 1);
    h.server.images.scan().await.expect("scan");
    h.server
        .store
        .put_group(&layer_group("g", G, U, &[0]))
        .expect("group");
    let mac = "AA:00:00:00:13:81";
    let mut c = RawClient::connect(h.addr).await;
    assert!(c.login(mac).await.is_ok());
    let (_, env) = c
        .request(
            ServiceCode::GetConfigVersionId,
            &json!({"mac": mac, "platform": "x86", "soft_version": "2.28", "disk_residue": 10}),
        )
        .await;
    assert!(env.is_ok());
    // download-desktop: the terminal answers its 1017 with 0.
    deliver_by_1017(&h, &mut c, mac).await;
    // This first delivery succeeds (its last 9025 is the result)...
    let (_, env) = c
        .request(
            ServiceCode::BtTaskState,
            &json!({"mac": mac, "torrent_name": format!("{}.torrent", layer(0)), "progress": 100, "state": "finished",
                    "download_rate": "0", "upload_rate": "0", "total_size": "1", "file_size": "1"}),
        )
        .await;
    assert!(env.is_ok(), "{env:?}");
    // ...then the terminal is cleared and the desktop sent again (issue
    // 39.7): a new delivery, whose failure the old success must not mask.
    deliver_by_1017(&h, &mut c, mac).await;
    // Its torrent fetch fails.
    let (_, env) = c
        .request(
            ServiceCode::BtTaskState,
            &json!({"mac": mac, "torrent_name": "", "progress": 0, "state": "finished",
                    "download_rate": "0", "upload_rate": "0", "total_size": "0", "file_size": "0"}),
        )
        .await;
    assert!(env.is_ok(), "{env:?}");
    let rec = h
        .server
        .store
        .terminal(mac)
        .expect("store")
        .expect("record");
    let r = &rec.reports[&format!("task_result:{}", layer(0))];
    assert_eq!(r["result"], 2, "{r}");
    let view = api(&h)
        .get(&format!("/api/v1/terminals/{mac}"))
        .await
        .expect("terminal");
    let transfers = view.data.expect("data")["transfers"].clone();
    let row = transfers
        .as_array()
        .and_then(|t| t.iter().find(|x| x["layer"] == layer(0).as_str()).cloned())
        .unwrap_or_else(|| panic!("the failure is not in transfers[]: {transfers}"));
    assert_eq!(row["result"], 2, "the old success masks the failure: {row}");
    assert_ne!(row["progress"], 100, "{row}");

    // A 1005 v2.28 never answers: sent, kept apart, not handed out.
    let sent = h
        .server
        .push(
            mac,
            ServiceCode::UpdateConfig,
            json!({"mode": {"show_desktop_type": 0, "auto_desktop": 1}, "program": {"server_ip": "10.66.66.66"}}),
            Duration::from_secs(5),
        )
        .await;
    assert!(
        matches!(sent, Err(voi::server::PushError::NoReply(..))),
        "{sent:?}"
    );
    let rec = h
        .server
        .store
        .terminal(mac)
        .expect("store")
        .expect("record");
    assert!(rec.reports.contains_key("unconfirmed:update_config"));
    assert_ne!(rec.config.setup_info.program.server_ip, "10.66.66.66");
    let (_, env) = c
        .request(ServiceCode::GetConfigInfo, &json!({"mac": mac}))
        .await;
    assert!(
        !env.data
            .as_ref()
            .is_some_and(|d| d.to_string().contains("10.66.66.66")),
        "9005 handed out an unconfirmed server_ip: {env:?}"
    );
    h.stop().await;
}

/// `download-desktop` of group G to a v2.28-style terminal, which answers
/// its 1017 with 0.
async fn deliver_by_1017(h: &voi::server::ServerHandle, c: &mut RawClient, mac: &'static str) {
    let server = h.server.clone();
    let push = tokio::spawn(async move {
        server
            .download_desktop(mac, G, Duration::from_secs(10))
            .await
            .expect("download_desktop")
    });
    let f = loop {
        let f = c.recv().await.expect("a command");
        if f.service_code == 1017 {
            break f;
        }
    };
    let reply = Frame::response_json(
        &f,
        voi::protocol::ClientType::Linux,
        &c.token,
        &Envelope::ok(json!({"batch_no": f.json::<Value>().expect("1017")["batch_no"]})),
    )
    .expect("reply");
    c.io.send(reply).await.expect("answer 1017");
    push.await.expect("push");
}

/// 9008 from `voi-agent ctl verify-admin`, as D reads it: the body names
/// the user `username` (D answers -1 with KeyError on `user_name`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_admin_sends_username_as_the_vendor_server_reads_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let vendor = FakeServer::new().await;
    let cfg = agent_config(&dir.path().join("a"), vendor.port(), "AA:00:00:00:13:91");
    let socket = cfg.control_socket_path();
    let (agent, task) = start_agent(cfg);
    let mut conn = vendor.accept().await;
    FakeServer::serve_startup(&mut conn).await;
    let ctl = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_voi-agent"))
            .arg("ctl")
            .arg("--socket")
            .arg(&socket)
            .args(["verify-admin", "admin", "secret"])
            .output()
            .expect("ctl")
    });
    let body = loop {
        let f = tokio::time::timeout(Duration::from_secs(20), conn.next())
            .await
            .expect("traffic")
            .expect("open")
            .expect("frame");
        if f.is_response() {
            continue;
        }
        let code = f.service_code;
        conn.send(FakeServer::answer(&f, json!({"code": 0, "msg": "Success"})))
            .await
            .expect("answer");
        if code == 9008 {
            break f.json::<Value>().expect("9008");
        }
    };
    let out = ctl.await.expect("ctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(body["username"], "admin", "{body}");
    assert!(body.get("user_name").is_none(), "{body}");
    agent.shutdown.cancel();
    let _ = task.await;
}

/// Issue 39.10: a 1012 with an empty dns1, which D accepts, is sent by our
/// server and applied by our agent (no 60008 on either side).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_update_ip_with_an_empty_dns1_is_sent_and_applied() {
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let mac = "AA:00:00:00:39:10";
    let mut ev = h.server.registry.events.subscribe();
    let (agent, task) = start_agent(agent_config(&dir.path().join("a"), h.addr.port(), mac));
    wait_event(&mut ev, 20, is_heartbeat(mac)).await;
    let env = api(&h)
        .push(
            mac,
            "update_ip",
            json!({"ip": "172.16.1.40", "mask": "255.255.255.0", "gateway": "172.16.1.1", "dns1": "", "dns2": ""}),
            10,
        )
        .await
        .expect("push");
    assert!(env.is_ok(), "{env:?}");
    assert_eq!(
        env.data
            .as_ref()
            .and_then(|d| d.pointer("/reply/code"))
            .and_then(Value::as_i64),
        Some(0),
        "{env:?}"
    );
    let journal_path = agent.cfg.journal_path();
    wait_for("the address applied", 20, || {
        voi::agent::platform::RecordingPlatform::read_journal(&journal_path)
            .iter()
            .any(|e| format!("{e:?}").contains("172.16.1.40"))
    })
    .await;
    agent.shutdown.cancel();
    let _ = task.await;
    h.stop().await;
}

/// Issue 39.2: D puts a room back on DHCP by bumping `conf_version` with
/// `is_dhcp: 1` in 9005 (no command). A terminal with a static address
/// set here switches to DHCP through the same pending change as 1012, and
/// the login that follows confirms it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_9005_with_is_dhcp_puts_a_static_terminal_back_on_dhcp() {
    use voi::agent::platform::{JournalEntry, RecordingPlatform};
    let dir = tempfile::tempdir().expect("tmp");
    let vendor = FakeServer::new().await;
    let mac = "AA:00:00:00:13:52";
    let cfg = agent_config(&dir.path().join("a"), vendor.port(), mac);
    std::fs::create_dir_all(&cfg.data_dir).expect("dir");
    std::fs::write(
        cfg.state_path(),
        serde_json::to_vec(&json!({
            "network": {"interface": "eth0", "address": "10.9.9.20", "prefix_len": 24, "gateway": "10.9.9.1", "dns": []},
            "terminal": {"mac": mac, "ip": "10.9.9.20", "is_dhcp": 0, "mask": "255.255.255.0", "conf_version": 5}
        }))
        .expect("json"),
    )
    .expect("state");
    let (agent, task) = start_agent(cfg);
    let serve = |answered: &mut bool, f: &voi::protocol::Frame| match f.service_code {
        9004 => json!({"code": 0, "msg": "Success", "data": {"conf_version": 6}}),
        9005 => {
            *answered = true;
            json!({"code": 0, "msg": "Success", "data": {
                "mac": mac, "name": "PC-8", "ip": "10.9.9.20", "is_dhcp": 1,
                "mask": "255.255.255.0", "gateway": "10.9.9.1", "dns1": "", "dns2": "",
                "conf_version": 6, "terminal_id": 8, "platform": "x86", "soft_version": "2.28",
                "disk_residue": 1.0,
                "setup_info": {"mode": {"show_desktop_type": 0, "auto_desktop": 0}, "program": {"server_ip": ""}}
            }})
        }
        _ => {
            json!({"code": 0, "msg": "Success", "data": {"conf_version": -1, "batch_no": 0, "terminal_id": -1}})
        }
    };
    // The first session: 9004 says 6, 9005 says DHCP.
    let mut conn = vendor.accept().await;
    let mut answered = false;
    let start = Instant::now();
    while !answered {
        assert!(start.elapsed() < Duration::from_secs(30), "no 9005");
        let f = tokio::time::timeout(Duration::from_secs(20), conn.next())
            .await
            .expect("traffic")
            .expect("open")
            .expect("frame");
        if f.is_response() {
            continue;
        }
        let a = serve(&mut answered, &f);
        conn.send(FakeServer::answer(&f, a)).await.expect("answer");
    }
    let journal = agent.cfg.journal_path();
    let start = Instant::now();
    while !RecordingPlatform::read_journal(&journal)
        .iter()
        .any(|e| matches!(e, JournalEntry::ApplyDhcp { .. }))
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no switch to DHCP"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pending = agent.state.read(|s| s.pending_change.clone());
    assert!(
        matches!(pending, Some(voi::agent::state::PendingChange::Dhcp { .. })),
        "{pending:?}"
    );
    // It logs in again from its new address: that confirms the change.
    let mut conn = vendor.accept().await;
    let start = Instant::now();
    while agent.state.read(|s| s.pending_change.is_some()) {
        assert!(start.elapsed() < Duration::from_secs(30), "not confirmed");
        if let Ok(Some(Ok(f))) = tokio::time::timeout(Duration::from_millis(200), conn.next()).await
        {
            if !f.is_response() {
                let mut ignored = false;
                let a = serve(&mut ignored, &f);
                conn.send(FakeServer::answer(&f, a)).await.expect("answer");
            }
        }
    }
    let (network, is_dhcp) = agent
        .state
        .read(|s| (s.network.clone(), s.terminal.is_dhcp));
    assert!(network.is_none(), "{network:?}");
    assert_eq!(is_dhcp, 1);
    agent.shutdown.cancel();
    let _ = task.await;
}
