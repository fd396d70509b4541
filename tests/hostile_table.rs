//! Hostile input against both real binaries, as a table: every case gets a
//! protocol error or a closed connection, the process survives, and no file
//! appears outside its data dir.
//!
//! The server cases talk to `voi-server` over loopback with a hand-written
//! client; the agent cases drive `voi-agent` from a hand-written server.

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use voi::protocol::{Envelope, Frame, Header, ServiceCode};

const MAC: &str = "AA:00:00:00:0B:01";
const OTHER_MAC: &str = "AA:00:00:00:0B:99";
const G: &str = "5f0c2a8e-1d7b-4c1e-9a63-2b7e0d9f4a11";
const U: &str = "0b3f6a52-7c1d-4e8a-b5f2-9d4c3e2a1b00";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// This exact result code.
    Code(i64),
    /// Any documented error code (not 0).
    Refused,
    /// The peer closes the connection.
    Closed,
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Code(i64),
    Closed,
    Nothing,
}

fn meets(o: &Outcome, e: Expect) -> bool {
    match (o, e) {
        (Outcome::Code(c), Expect::Code(want)) => *c == want,
        (Outcome::Code(c), Expect::Refused) => *c != 0,
        (Outcome::Closed, Expect::Closed) => true,
        _ => false,
    }
}

/// What a case sends.
enum Send {
    Json(u32, Value),
    Raw(u32, u8, Vec<u8>),
    /// A frame with this token instead of the session's.
    Token(u32, Value, &'static [u8]),
    /// Bytes written as they are.
    Bytes(Vec<u8>),
    /// A valid frame written one byte every 300 ms.
    Slow(u32, Value),
}

struct Case {
    name: &'static str,
    /// Whether the case runs on a connection that has logged in.
    login: bool,
    send: Send,
    expect: Expect,
}

fn header_bytes(code: u32, data_size: u32, token_len: u16, supplementary: u16) -> Vec<u8> {
    let mut h: Header = command(code, b"").header();
    h.data_size = data_size;
    let mut b = h.to_bytes().to_vec();
    b[20..22].copy_from_slice(&token_len.to_le_bytes());
    b[22..24].copy_from_slice(&supplementary.to_le_bytes());
    b
}

/// A single-file torrent by hand, so names and sizes can be anything.
fn torrent(name: &str, length: u64, piece_length: u64) -> Vec<u8> {
    use voi::bt::bencode::{put_bytes, put_int};
    let pieces = length.div_ceil(piece_length) as usize;
    let mut t = b"d8:announce".to_vec();
    put_bytes(&mut t, b"http://127.0.0.1:1/announce");
    t.extend_from_slice(b"4:infod6:length");
    put_int(&mut t, length);
    t.extend_from_slice(b"4:name");
    put_bytes(&mut t, name.as_bytes());
    t.extend_from_slice(b"12:piece length");
    put_int(&mut t, piece_length);
    t.extend_from_slice(b"6:pieces");
    put_bytes(&mut t, &vec![7u8; pieces * 20]);
    t.extend_from_slice(b"ee");
    t
}

fn uuid_bytes(s: &str) -> [u8; 36] {
    let mut b = [0u8; 36];
    let n = s.len().min(36);
    b[..n].copy_from_slice(&s.as_bytes()[..n]);
    b
}

/// 9014's 66-byte struct (notes §5.3) around `torrent`.
fn upload_struct(uuid: &str, level: i32, data_len: u64, torrent: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_slice(&uuid_bytes(uuid));
    b.put_i8(0);
    b.put_i8(0);
    b.put_i32_le(level);
    b.put_u64_le(1 << 21);
    b.put_u64_le(0);
    b.put_u64_le(data_len);
    b.put_slice(torrent);
    b.to_vec()
}

/// 1015's 150-byte struct (notes §5.2) around `torrent`.
fn send_struct(uuid: &str, level: i32, data_len: u64, torrent: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_slice(&uuid_bytes(uuid));
    b.put_i8(0);
    b.put_i8(0);
    b.put_i32_le(level);
    b.put_u64_le(1 << 21);
    b.put_u64_le(1 << 21);
    b.put_u64_le(1 << 30);
    b.put_u64_le(data_len);
    b.put_slice(&uuid_bytes("9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a"));
    b.put_slice(&uuid_bytes(G));
    b.put_u32_le(1);
    b.put_slice(torrent);
    b.to_vec()
}

fn server_cases() -> Vec<Case> {
    let deep = "[".repeat(100_000);
    let c = |name, login, send, expect| Case {
        name,
        login,
        send,
        expect,
    };
    use Expect::*;
    use Send::*;
    vec![
        c("login: mac is a path", false, Json(9001, json!({"mac": "../../../etc/passwd", "ip": "127.0.0.1"})), Code(60005)),
        c("login: mac with a slash inside", false, Json(9001, json!({"mac": "AA:BB:CC:DD:EE:FF/../x", "ip": "127.0.0.1"})), Code(60005)),
        c("login: mac with NUL", false, Json(9001, json!({"mac": "AA:BB:CC:DD:EE:\u{0}F", "ip": "127.0.0.1"})), Code(60005)),
        c("login: not JSON", false, Raw(9001, 1, b"{mac: AA".to_vec()), Code(88888)),
        c("login: mac is a number", false, Json(9001, json!({"mac": 12, "ip": "x"})), Refused),
        c("request with no token before login", false, Json(9000, json!({"mac": MAC})), Code(60000)),
        c("request with a wrong token", true, Token(9000, json!({"mac": MAC}), b"0123456789abcdef0123456789abcdef"), Code(60000)),
        c("request with an empty token", true, Token(9004, json!({"mac": MAC}), b""), Code(60000)),
        c("mac of another terminal in the body", true, Json(9000, json!({"mac": OTHER_MAC})), Code(60005)),
        c("mac path trick in the body", true, Json(9007, json!({"mac": "../../x", "ip": "1.1.1.1"})), Code(60005)),
        c("unknown service code", true, Json(4242, json!({"mac": MAC})), Code(88888)),
        c("a command code sent as a request", true, Json(1004, json!({"batch_no": 1, "name": "x"})), Code(88888)),
        c("service code 0", true, Json(0, json!({})), Code(88888)),
        c("disk_residue beyond f64", true, Raw(9004, 1, format!(r#"{{"mac":"{MAC}","platform":"x86","soft_version":"2.28","disk_residue":"1e400"}}"#).into_bytes()), Code(88888)),
        c("disk_residue negative and huge", true, Json(9004, json!({"mac": MAC, "platform": "x86", "soft_version": "2.28", "disk_residue": -1e300})), Code(88888)),
        c("JSON nested 100000 deep", true, Raw(9000, 1, deep.into_bytes()), Code(88888)),
        c("body not UTF-8", true, Raw(9000, 1, vec![b'{', 0xff, 0xfe, b'}']), Code(88888)),
        c("binary body where JSON belongs", true, Raw(9004, 0, b"\x00\x01\x02".to_vec()), Code(88888)),
        c("9026 group uuid is a path", true, Json(9026, json!({"mac": MAC, "desktop_group_list": [{"desktop_group_name": "g", "desktop_group_uuid": "../../../tmp/voi-pwned", "disks": []}]})), Refused),
        c("9026 disk uuid is a path", true, Json(9026, json!({"mac": MAC, "desktop_group_list": [{"desktop_group_name": "g", "desktop_group_uuid": G, "disks": [{"uuid": "../../voi-pwned", "type": 0, "dif_level": 0, "prefix": "voi", "real_size": 1}]}]})), Refused),
        c("9023 diff disk uuid is a path", true, Json(9023, json!({"mac": MAC, "desktop_group_uuid": G, "diff_disk_uuid": "../../../etc/shadow", "diff_level": 1, "diff_disk_type": 0})), Refused),
        c("9023 level overflowing", true, Json(9023, json!({"mac": MAC, "desktop_group_uuid": G, "diff_disk_uuid": U, "diff_level": 1e30, "diff_disk_type": 0})), Refused),
        c("9018 group uuid is not a uuid", true, Json(9018, json!({"mac": MAC, "desktop_group_uuid": "/etc/passwd"})), Refused),
        c("9025 torrent name is a path", true, Json(9025, json!({"mac": MAC, "torrent_name": "../../voi-pwned.torrent", "progress": 5, "state": "downloading", "download_rate": "1", "upload_rate": "1", "total_size": "1", "file_size": "1"})), Code(88888)),
        c("9025 progress negative", true, Json(9025, json!({"mac": MAC, "torrent_name": format!("voi_0_{U}.torrent"), "progress": -40, "state": "downloading", "download_rate": "1", "upload_rate": "1", "total_size": "1", "file_size": "1"})), Code(88888)),
        c("9015 disk name is a path", true, Json(9015, json!({"mac": MAC, "ip": "1.1.1.1", "disk": "../../voi_0_x", "result": 1})), Code(88888)),
        c("9014 torrent naming a path", true, Raw(9014, 0, { let t = torrent("../../voi-pwned", 1 << 20, 1 << 18); upload_struct(U, 0, t.len() as u64, &t) }), Refused),
        c("9014 uuid is a path", true, Raw(9014, 0, { let t = torrent(&format!("voi_0_{U}"), 1 << 20, 1 << 18); upload_struct("../../../../../../../tmp/voi-pwned", 0, t.len() as u64, &t) }), Refused),
        c("9014 data_len beyond the body", true, Raw(9014, 0, { let t = torrent(&format!("voi_0_{U}"), 1 << 20, 1 << 18); upload_struct(U, 0, u64::MAX, &t) }), Refused),
        c("9014 negative level", true, Raw(9014, 0, { let t = torrent(&format!("voi_0_{U}"), 1 << 20, 1 << 18); upload_struct(U, -3, t.len() as u64, &t) }), Refused),
        c("9014 JSON where the struct belongs", true, Json(9014, json!({"mac": MAC, "uuid": U})), Code(88888)),
        c("huge data_size", true, Bytes(header_bytes(9000, u32::MAX, 0, 0)), Closed),
        c("huge token_length and supplementary", true, Bytes(header_bytes(9000, 16, u16::MAX, u16::MAX)), Closed),
        c("slowloris: a frame one byte at a time", true, Slow(9000, json!({"mac": MAC})), Closed),
    ]
}

fn agent_cases() -> Vec<Case> {
    let c = |name, send, expect| Case {
        name,
        login: true,
        send,
        expect,
    };
    let disk = |uuid: &str, size: Value| json!({"uuid": uuid, "type": 0, "dif_level": 0, "prefix": "voi", "real_size": size});
    use Expect::*;
    use Send::*;
    vec![
        c(
            "1004 name is a path",
            Json(
                1004,
                json!({"batch_no": 1, "name": "../../etc", "conf_version": 1}),
            ),
            Code(60009),
        ),
        c(
            "1004 name with NUL and newline",
            Json(
                1004,
                json!({"batch_no": 2, "name": "a\u{0}\nb", "conf_version": 1}),
            ),
            Code(60009),
        ),
        c(
            "1004 conf_version overflowing",
            Raw(
                1004,
                1,
                br#"{"batch_no": 3, "name": "ok", "conf_version": 1e400}"#.to_vec(),
            ),
            Code(88888),
        ),
        c(
            "1011 terminal_id overflowing",
            Raw(
                1011,
                1,
                br#"{"batch_no": 4, "terminal_id": 99999999999999999999}"#.to_vec(),
            ),
            Code(88888),
        ),
        c(
            "1011 terminal_id negative",
            Json(1011, json!({"batch_no": 5, "terminal_id": -7})),
            Refused,
        ),
        c(
            "1010 data disk of negative size",
            Json(
                1010,
                json!({"batch_no": 6, "enable": 1, "restore": 0, "size": -10}),
            ),
            Refused,
        ),
        c(
            "1010 data disk beyond the disk",
            Json(
                1010,
                json!({"batch_no": 7, "enable": 1, "restore": 0, "size": i64::MAX}),
            ),
            Refused,
        ),
        c(
            "1012 ip with a path",
            Json(
                1012,
                json!({"batch_no": 8, "ip": "10.0.0.2/../../x", "mask": "255.255.255.0", "gateway": "10.0.0.1", "dns1": "", "dns2": "", "conf_version": 1}),
            ),
            Refused,
        ),
        c(
            "1012 mask not contiguous",
            Json(
                1012,
                json!({"batch_no": 9, "ip": "10.0.0.2", "mask": "255.0.255.0", "gateway": "10.0.0.1", "dns1": "", "dns2": "", "conf_version": 1}),
            ),
            Code(60006),
        ),
        c(
            "1005 server_ip is a shell command",
            Json(
                1005,
                json!({"batch_no": 10, "conf_version": 2, "mode": {}, "program": {"server_ip": "$(reboot)"}}),
            ),
            Refused,
        ),
        c(
            "1013 diff disk uuid is a path",
            Json(
                1013,
                json!({"batch_no": 11, "disk_info_list": [{"name": "x", "uuid": "../../../tmp/voi-pwned", "version": 1, "download_url": "http://127.0.0.1:1/x"}]}),
            ),
            Refused,
        ),
        c(
            "1013 download_url is a local file",
            Json(
                1013,
                json!({"batch_no": 12, "disk_info_list": [{"name": "x", "uuid": U, "version": 1, "download_url": "file:///etc/shadow"}]}),
            ),
            Refused,
        ),
        c(
            "1008 disk uuid is a path",
            Json(
                1008,
                json!({"batch_no": 13, "desktop": {"name": "d", "desc": "", "uuid": G, "disks": [disk("../../voi-pwned", json!(1))]}}),
            ),
            Refused,
        ),
        c(
            "1008 group uuid is a path",
            Json(
                1008,
                json!({"batch_no": 14, "desktop": {"name": "d", "desc": "", "uuid": "../../voi-pwned", "disks": [disk(U, json!(1))]}}),
            ),
            Refused,
        ),
        c(
            "1015 torrent naming a path",
            Raw(1015, 0, {
                let t = torrent("../../voi-pwned", 1 << 20, 1 << 18);
                send_struct(U, 0, t.len() as u64, &t)
            }),
            Code(88888),
        ),
        c(
            "1015 uuid is a path",
            Raw(1015, 0, {
                let t = torrent(&format!("voi_0_{U}"), 1 << 20, 1 << 18);
                send_struct("../../../../../../../tmp/voi-pwned", 0, t.len() as u64, &t)
            }),
            Code(88888),
        ),
        c(
            "1015 level out of range",
            Raw(1015, 0, {
                let t = torrent(&format!("voi_0_{U}"), 1 << 20, 1 << 18);
                send_struct(U, 200, t.len() as u64, &t)
            }),
            Code(88888),
        ),
        c(
            "1015 data_len beyond the body",
            Raw(1015, 0, {
                let t = torrent(&format!("voi_0_{U}"), 1 << 20, 1 << 18);
                send_struct(U, 0, u64::MAX, &t)
            }),
            Code(88888),
        ),
        c(
            "1015 a layer larger than the disk",
            Raw(1015, 0, {
                let t = torrent(&format!("voi_0_{U}"), 1 << 50, 1 << 34);
                send_struct(U, 0, t.len() as u64, &t)
            }),
            Refused,
        ),
        c(
            "1017 torrent URL is a local file",
            Json(
                1017,
                json!({"batch_no": 15, "desktop": {"desktop_group_name": "g", "desktop_group_uuid": G, "desktop_ip": "", "desktop_mask": "", "desktop_gateway": "", "desktop_dns1": "", "desktop_dns2": "", "default_desktop_group": true, "desktop_name": "d", "desktop_group_desc": "", "disks": [{"uuid": U, "type": 0, "dif_level": 0, "prefix": "voi", "real_size": 1, "download_url": "file:///etc/shadow"}]}}),
            ),
            Refused,
        ),
        c(
            "1020 upload of a disk uuid that is a path",
            Json(
                1020,
                json!({"batch_no": 16, "desktop": {"uuid": G, "disks": [{"uuid": "../../../etc", "type": 0, "dif_level": 0, "prefix": "voi"}]}}),
            ),
            Refused,
        ),
        c(
            "1021 unknown torrent id with a path",
            Json(
                1021,
                json!({"batch_no": 17, "torrent_id": "../../../etc/passwd"}),
            ),
            Refused,
        ),
        c(
            "1031 desktop uuid is a path",
            Json(1031, json!({"batch_no": 18, "desktop_uuid": "../../"})),
            Refused,
        ),
        c(
            "1022 switch overflowing",
            Raw(1022, 1, br#"{"batch_no": 19, "switch": 1e999}"#.to_vec()),
            Code(88888),
        ),
        c(
            "unknown command code 1999",
            Json(1999, json!({"batch_no": 20})),
            Code(88888),
        ),
        c(
            "command with a wrong token",
            Token(
                1022,
                json!({"batch_no": 21, "switch": 1}),
                b"not-the-session-token",
            ),
            Code(60000),
        ),
        c(
            "command with no token",
            Token(1022, json!({"batch_no": 22, "switch": 1}), b""),
            Code(60000),
        ),
        c(
            "command naming another mac",
            Json(1009, json!({"batch_no": 23, "mac": OTHER_MAC})),
            Code(60005),
        ),
        c(
            "batch_no of a nested object",
            Raw(
                1022,
                1,
                br#"{"batch_no": {"a": [1]}, "switch": 1}"#.to_vec(),
            ),
            Code(88888),
        ),
        c(
            "huge data_size",
            Bytes(header_bytes(1004, u32::MAX, 3, 0)),
            Closed,
        ),
        c(
            "slowloris server: a command one byte at a time",
            Slow(1022, json!({"batch_no": 24, "switch": 1})),
            Closed,
        ),
    ]
}

fn frame_of(send: &Send, token: &Bytes) -> Option<Frame> {
    let (code, data_type, payload, token) = match send {
        Send::Json(code, v) => (*code, 1, serde_json::to_vec(v).ok()?, token.clone()),
        Send::Raw(code, dt, p) => (*code, *dt, p.clone(), token.clone()),
        Send::Token(code, v, t) => (*code, 1, serde_json::to_vec(v).ok()?, Bytes::from_static(t)),
        Send::Slow(code, v) => (*code, 1, serde_json::to_vec(v).ok()?, token.clone()),
        Send::Bytes(_) => return None,
    };
    let mut f = command(code, &payload);
    f.data_type = data_type;
    f.token = token;
    Some(f)
}

/// Writes a case's bytes to a raw socket.
async fn write_case(io: &mut tokio::net::TcpStream, send: &Send, token: &Bytes) {
    match send {
        Send::Bytes(b) => {
            let _ = io.write_all(b).await;
        }
        Send::Slow(..) => {
            let bytes = frame_of(send, token)
                .map(|f| f.to_bytes())
                .unwrap_or_default();
            for b in bytes.iter() {
                if io.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        _ => {
            if let Some(f) = frame_of(send, token) {
                let _ = io.write_all(&f.to_bytes()).await;
            }
        }
    }
}

/// The answer to `code`, or a close, within `secs` (skipping anything else).
async fn outcome(
    io: &mut tokio_util::codec::Framed<tokio::net::TcpStream, voi::protocol::FrameCodec>,
    code: Option<u32>,
    secs: u64,
    mut other: impl FnMut(&Frame) -> Option<Frame>,
) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, io.next()).await {
            Err(_) => return Outcome::Nothing,
            Ok(None) | Ok(Some(Err(_))) => return Outcome::Closed,
            Ok(Some(Ok(f))) => {
                if code == Some(f.service_code) && f.is_response() {
                    return match f.json::<Envelope<Value>>() {
                        Ok(env) => Outcome::Code(env.code),
                        Err(_) => Outcome::Code(-12345),
                    };
                }
                if let Some(reply) = other(&f) {
                    if io.send(reply).await.is_err() {
                        return Outcome::Closed;
                    }
                }
            }
        }
    }
}

/// Every file under `root`, relative to it.
fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap_or(&p).to_path_buf());
            }
        }
    }
    out
}

/// Nothing outside the data dirs: only the test's own config and log files
/// may sit beside them, and no "voi-pwned" anywhere on the machine's /tmp.
fn assert_confined(sandbox: &Path, data_dirs: &[&str]) {
    for f in files_under(sandbox) {
        let inside = data_dirs.iter().any(|d| f.starts_with(d));
        let own = f.extension().is_some_and(|e| e == "toml" || e == "log");
        assert!(
            inside || own,
            "a file was written outside the data dir: {f:?}"
        );
        assert!(!f.to_string_lossy().contains("voi-pwned"), "{f:?}");
    }
    assert!(!Path::new("/tmp/voi-pwned").exists());
    assert!(!Path::new("/voi-pwned").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_cases_against_the_server_binary() {
    let sandbox = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let data = sandbox.path().join("data");
    std::fs::write(
        sandbox.path().join("server.toml"),
        format!(
            "listen = \"127.0.0.1:{port}\"\napi_listen = \"127.0.0.1:0\"\ntracker_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\napi_token = \"t\"\nbt_listen_port = 0\nidle_close_secs = 3\n",
            data.display()
        ),
    )
    .expect("server.toml");
    let mut server = Proc(
        Command::new(env!("CARGO_BIN_EXE_voi-server"))
            .arg("run")
            .arg("--config")
            .arg(sandbox.path().join("server.toml"))
            .current_dir(sandbox.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(sandbox.path().join("server.log")).expect("log"))
            .spawn()
            .expect("voi-server"),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let start = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "server never listened"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let cases = server_cases();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let mut c = RawClient::connect(addr).await;
        if case.login {
            assert!(c.login(MAC).await.is_ok(), "{}: login", case.name);
        }
        let code = match &case.send {
            Send::Json(code, _) | Send::Raw(code, ..) | Send::Token(code, ..) => Some(*code),
            _ => None,
        };
        let token = c.token.clone();
        write_case(c.io.get_mut(), &case.send, &token).await;
        let got = outcome(&mut c.io, code, 10, |_| None).await;
        eprintln!("server | {:45} | {got:?}", case.name);
        if !meets(&got, case.expect) {
            failures.push(format!(
                "{}: expected {:?}, got {got:?}",
                case.name, case.expect
            ));
        }
        assert!(
            server.0.try_wait().expect("wait").is_none(),
            "the server died on {}",
            case.name
        );
    }
    // Still serving after all of it.
    let mut c = RawClient::connect(addr).await;
    assert!(c.login(MAC).await.is_ok());
    let (_, env) = c
        .request(ServiceCode::Heartbeat, &json!({"mac": MAC}))
        .await;
    assert!(env.is_ok());
    assert_confined(sandbox.path(), &["data"]);
    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_cases_against_the_agent_binary() {
    let sandbox = tempfile::tempdir().expect("tmp");
    let fake = FakeServer::new().await;
    let data = sandbox.path().join("data");
    std::fs::write(
        sandbox.path().join("agent.toml"),
        format!(
            "server_ip = \"127.0.0.1\"\nserver_port = {}\nmac = \"{MAC}\"\ndata_dir = \"{}\"\nheartbeat_secs = 1\nrequest_timeout_secs = 2\nconnect_retry_ms = 200\nperformance_secs = 0\n[bt]\nlisten_port = 0\n[platform]\npower = \"recording\"\nboot = \"recording\"\nhostname = \"recording\"\nnetwork = \"recording\"\n",
            fake.port(),
            data.display()
        ),
    )
    .expect("agent.toml");
    let mut agent = Proc(
        Command::new(env!("CARGO_BIN_EXE_voi-agent"))
            .arg("--config")
            .arg(sandbox.path().join("agent.toml"))
            .arg("run")
            .current_dir(sandbox.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(sandbox.path().join("agent.log")).expect("log"))
            .spawn()
            .expect("voi-agent"),
    );
    let cases = agent_cases();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let mut failures = Vec::new();
    let mut conn = fake.accept().await;
    FakeServer::serve_startup(&mut conn).await;
    let token = Bytes::from_static(b"tok");
    let answer = |f: &Frame| {
        (!f.is_response()).then(|| FakeServer::answer(f, json!({"code": 0, "msg": "Success"})))
    };
    for case in &cases {
        let code = match &case.send {
            Send::Json(code, _)
            | Send::Raw(code, ..)
            | Send::Token(code, ..)
            | Send::Slow(code, _) => Some(*code),
            Send::Bytes(_) => None,
        };
        // The agent keeps talking (heartbeats) while a slow frame trickles,
        // so the write runs beside the reads.
        let got = if matches!(case.send, Send::Slow(..) | Send::Bytes(_)) {
            // Nothing is answered while the bytes trickle in: the agent must
            // give up on this server by itself.
            let (rd, mut wr) = conn.into_inner().into_split();
            let bytes = match &case.send {
                Send::Bytes(b) => b.clone(),
                other => frame_of(other, &token)
                    .map(|f| f.to_bytes().to_vec())
                    .unwrap_or_default(),
            };
            let slow = matches!(case.send, Send::Slow(..));
            let writer = tokio::spawn(async move {
                for chunk in bytes.chunks(if slow { 1 } else { usize::MAX }) {
                    if wr.write_all(chunk).await.is_err() {
                        return;
                    }
                    if slow {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
                std::future::pending::<()>().await;
            });
            let mut rd =
                tokio_util::codec::FramedRead::new(rd, voi::protocol::FrameCodec::default());
            let deadline = Instant::now() + Duration::from_secs(20);
            let got = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, rd.next()).await {
                    Err(_) => break Outcome::Nothing,
                    Ok(None) | Ok(Some(Err(_))) => break Outcome::Closed,
                    Ok(Some(Ok(_))) => {}
                }
            };
            writer.abort();
            conn = fake.accept().await;
            FakeServer::serve_startup(&mut conn).await;
            got
        } else {
            write_case(conn.get_mut(), &case.send, &token).await;
            let got = outcome(&mut conn, code, 15, answer).await;
            if got == Outcome::Closed {
                conn = fake.accept().await;
                FakeServer::serve_startup(&mut conn).await;
            }
            got
        };
        eprintln!("agent  | {:45} | {got:?}", case.name);
        if !meets(&got, case.expect) {
            failures.push(format!(
                "{}: expected {:?}, got {got:?}",
                case.name, case.expect
            ));
        }
        assert!(
            agent.0.try_wait().expect("wait").is_none(),
            "the agent died on {}",
            case.name
        );
    }
    let _ = &mut agent;
    assert_confined(sandbox.path(), &["data"]);
    let cfg =
        voi::agent::config::AgentConfig::load(&sandbox.path().join("agent.toml")).expect("cfg");
    let journal = voi::agent::platform::RecordingPlatform::read_journal(&cfg.journal_path());
    assert!(journal.is_empty(), "nothing was done: {journal:?}");
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The trust surfaces as a table: manifests an attacker could hand an
/// agent, requests of a terminal no operator accepted, a certificate for
/// another MAC, and operator API bodies. Real servers on loopback (one with
/// `admission = "pending"`, one with mutual TLS), manifests from the real
/// tracker port. Each row names the refusal it must get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_rows_for_the_trust_surfaces() {
    use voi::bt::manifest::LayerManifest;
    init_log();
    let sandbox = tempfile::tempdir().expect("tmp");
    let mut cfg = server_config(&sandbox.path().join("pending"), "127.0.0.1:0");
    cfg.admission = voi::server::admission::AdmissionPolicy::Pending;
    let h = voi::server::Server::start(cfg).await.expect("server");
    let lib = h.server.images.dir().to_path_buf();
    let (a, b) = (format!("voi_0_{U}"), format!("voi_0_{G}"));
    make_base(&lib.join(&a), 1);
    make_base(&lib.join(&b), 1);
    h.server.images.scan().await.expect("scan");
    let mut group = layer_group("trust", G, U, &[0]);
    group.disks[0].operate_id = 1;
    // A second disk whose layer is b, at the version the agent will ask for.
    let mut second = group.disks[0].clone();
    second.uuid = G.into();
    second.operate_id = 2;
    group.disks.push(second);
    h.server.store.put_group(&group).expect("group");
    let manifest_of = |layer: String| {
        let url = format!("http://{}/manifest/{layer}.json", h.server.tracker_addr);
        async move {
            reqwest::get(url)
                .await
                .expect("get")
                .json::<LayerManifest>()
                .await
                .expect("manifest")
        }
    };
    let key =
        voi::bt::manifest::parse_public_key(&h.server.images.manifest_public_key()).expect("key");
    let v1 = manifest_of(a.clone()).await;
    group.disks[0].operate_id = 2;
    h.server.store.put_group(&group).expect("group v2");
    let current = manifest_of(a.clone()).await;
    let other_layer = manifest_of(b.clone()).await;
    let file = lib.join(&a);
    // What the agent does with a manifest before a layer may boot.
    let judge = |m: &LayerManifest, k: &ed25519_dalek::VerifyingKey| -> Result<(), String> {
        m.verify(k)?;
        m.current_for(2)?;
        m.check(&a, &current.info_hash, None, &file, None, None)
    };
    assert_eq!(judge(&current, &key), Ok(()), "the real manifest passes");

    let mut rows: Vec<(&str, String, &str)> = Vec::new();
    let mut flipped = current.clone();
    if let Some(sig) = flipped.signature.as_mut() {
        let c = if sig.starts_with('0') { "1" } else { "0" };
        sig.replace_range(0..1, c);
    }
    rows.push((
        "manifest: bad signature",
        format!("{:?}", judge(&flipped, &key)),
        "does not verify",
    ));
    let unsigned = LayerManifest {
        signature: None,
        ..current.clone()
    };
    rows.push((
        "manifest: unsigned",
        format!("{:?}", judge(&unsigned, &key)),
        "not signed",
    ));
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[3; 32]).verifying_key();
    rows.push((
        "manifest: signed by another server",
        format!("{:?}", judge(&current, &stranger)),
        "does not verify",
    ));
    rows.push((
        "manifest: for another layer",
        format!("{:?}", judge(&other_layer, &key)),
        "does not match",
    ));
    rows.push((
        "manifest: replayed older version",
        format!("{:?}", judge(&v1, &key)),
        "replayed",
    ));

    // A terminal no operator has accepted: it may heartbeat, and asks for
    // nothing else.
    let mut c = RawClient::connect(h.addr).await;
    assert_eq!(c.login(MAC).await.code, 0);
    for (name, code, body) in [
        (
            "pending: asks for its configuration (9005)",
            9005,
            json!({"mac": MAC}),
        ),
        (
            "pending: asks for desktops (9007)",
            9007,
            json!({"mac": MAC, "ip": "127.0.0.1"}),
        ),
        (
            "pending: asks for trackers (9019)",
            9019,
            json!({"mac": MAC}),
        ),
        (
            "pending: asks for a layer (9023)",
            9023,
            json!({"mac": MAC, "desktop_group_uuid": G, "diff_disk_uuid": U, "diff_level": 0, "diff_disk_type": 0}),
        ),
        (
            "pending: asks for a number (9010)",
            9010,
            json!({"mac": MAC}),
        ),
        (
            "pending: pushes its configuration (9006)",
            9006,
            json!({"mac": MAC, "name": "x"}),
        ),
        ("pending: heartbeat (allowed)", 9000, json!({"mac": MAC})),
    ] {
        let code = ServiceCode::from_u32(code).expect("code");
        let (_, env) = c.request(code, &body).await;
        let want = if code == ServiceCode::Heartbeat {
            "code 0"
        } else {
            "code 60001"
        };
        rows.push((name, format!("code {} {}", env.code, env.msg), want));
    }

    // Operator API bodies.
    let http = reqwest::Client::new();
    let api_url = format!("http://{}", h.api_addr);
    let big = vec![b'['; voi::server::api::MAX_BODY + 1];
    // Its own connection: the server answers 413 without reading the body
    // and closes, so a pooled connection must not be reused after it.
    let r = reqwest::Client::new()
        .put(format!("{api_url}/api/v1/desktop_groups"))
        .bearer_auth(&h.server.api_token)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .expect("send");
    rows.push((
        "API: body over the limit",
        format!("HTTP {}", r.status().as_u16()),
        "HTTP 413",
    ));
    let r = http
        .put(format!("{api_url}/api/v1/terminals/{MAC}/admission"))
        .bearer_auth(&h.server.api_token)
        .json(&json!({"admission": "<script>"}))
        .send()
        .await
        .expect("send");
    rows.push((
        "API: admission that is no decision",
        format!("HTTP {}", r.status().as_u16()),
        "HTTP 400",
    ));
    let r = http
        .put(format!("{api_url}/api/v1/terminals/{MAC}/admission"))
        .json(&json!({"admission": "accepted"}))
        .send()
        .await
        .expect("send");
    rows.push((
        "API: decision without the token",
        format!("HTTP {}", r.status().as_u16()),
        "HTTP 401",
    ));

    // Mutual TLS: the CA's certificate for one terminal, used to log in as
    // another.
    let pki = common::pki::make_pki(sandbox.path());
    let mut cfg = server_config(&sandbox.path().join("mtls"), "127.0.0.1:0");
    cfg.tls_cert = Some(pki.cert.clone());
    cfg.tls_key = Some(pki.key.clone());
    cfg.tls_client_ca = Some(pki.ca.clone());
    let m = voi::server::Server::start(cfg).await.expect("mtls server");
    let (cert, key_file) = pki.client(&sandbox.path().join("mtls"), OTHER_MAC, false);
    let connector = voi::tls::Connector::new(
        &voi::tls::AgentTlsConfig {
            enabled: true,
            ca: Some(pki.ca.clone()),
            server_name: Some("voi-server.test".into()),
            cert: Some(cert),
            key: Some(key_file),
            ..Default::default()
        },
        "127.0.0.1",
    )
    .expect("connector");
    let tcp = tokio::net::TcpStream::connect(m.addr).await.expect("tcp");
    let tls = connector.connect(tcp).await.expect("handshake");
    let mut io = tokio_util::codec::Framed::new(tls, voi::protocol::FrameCodec::default());
    let login = Frame::request_json(
        ServiceCode::TerminalLogin,
        1,
        voi::protocol::ClientType::Linux,
        &Bytes::new(),
        &json!({"mac": MAC, "ip": "127.0.0.1"}),
    )
    .expect("frame");
    io.send(login).await.expect("send");
    let answer = tokio::time::timeout(Duration::from_secs(10), io.next())
        .await
        .ok()
        .flatten()
        .and_then(|f| f.ok())
        .and_then(|f| f.json::<Envelope<Value>>().ok())
        .map(|e| format!("code {} {}", e.code, e.msg))
        .unwrap_or_else(|| "no answer".into());
    rows.push(("mTLS: certificate of another MAC", answer, "code 60001"));

    let mut failures = Vec::new();
    for (name, got, want) in &rows {
        eprintln!("trust | {name:45} | {got}");
        if !got.contains(want) {
            failures.push(format!("{name}: wanted {want:?}, got {got}"));
        }
    }
    assert!(rows.len() >= 16, "{} rows", rows.len());
    m.stop().await;
    h.stop().await;
    std::fs::remove_file(sandbox.path().join("ca.pem")).ok();
    for f in ["server.pem", "server.key", "other-ca.pem"] {
        std::fs::remove_file(sandbox.path().join(f)).ok();
    }
    assert_confined(sandbox.path(), &["pending", "mtls"]);
    assert!(failures.is_empty(), "{failures:#?}");
}
