//! The operator API's OpenAPI description against the code that serves it:
//! every route of the router is described, and every answer a real server
//! gives (successes and refusals) validates against the schema the
//! description gives for its status.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;

const G: &str = "3f1c2b9e-5a8d-4e7f-9b6a-1c2d3e4f5a6b";
const U: &str = "7d9e0f1a-2b3c-4d5e-8f6a-7b8c9d0e1f2a";
const MAC: &str = "52:54:00:0A:00:01";
const READ_ONLY: &str = "wall-screen-token-0001";

/// `(METHOD, /path/{param})` of every `.route(..)` in a router's source,
/// following `.merge(super::x::routes())` into `x.rs`.
fn routes_in(file: &Path, out: &mut BTreeSet<(String, String)>) {
    let text = std::fs::read_to_string(file).expect("source");
    // Test modules are not the router.
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut rest = text;
    while let Some(i) = rest.find(".route(") {
        rest = &rest[i + ".route(".len()..];
        // The call's arguments, to its closing parenthesis.
        let mut depth = 1usize;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map(|(i, _)| i)
            .expect("a closed .route(");
        let args = &rest[..end];
        let path = args.split('"').nth(1).expect("a path literal");
        let path: String = path
            .split('/')
            .map(|seg| match seg.strip_prefix(':') {
                Some(p) => format!("{{{p}}}"),
                None => seg.to_string(),
            })
            .collect::<Vec<_>>()
            .join("/");
        let mut methods = 0;
        for m in ["get", "post", "put", "delete", "patch"] {
            for (i, _) in args.match_indices(&format!("{m}(")) {
                let before = args[..i].chars().last();
                if before.is_none_or(|c| !c.is_alphanumeric() && c != '_') {
                    out.insert((m.to_uppercase(), path.clone()));
                    methods += 1;
                }
            }
        }
        assert!(methods > 0, "no method in .route({args})");
    }
    let mut rest = text;
    while let Some(i) = rest.find(".merge(super::") {
        rest = &rest[i + ".merge(super::".len()..];
        let module = rest.split("::").next().expect("module");
        routes_in(&file.with_file_name(format!("{module}.rs")), out);
    }
}

fn described(spec: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, ops) in spec["paths"].as_object().expect("paths") {
        for method in ops.as_object().expect("operations").keys() {
            out.insert((method.to_uppercase(), path.clone()));
        }
    }
    out
}

#[test]
fn every_route_of_the_router_is_described() {
    let spec = serde_json::to_value(voi::server::api::openapi()).expect("json");
    assert_eq!(spec["openapi"], "3.1.0");
    let mut routes = BTreeSet::new();
    routes_in(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/server/api.rs"),
        &mut routes,
    );
    assert!(
        routes.len() > 25,
        "the router's routes were not read: {routes:?}"
    );
    let described = described(&spec);
    let missing: Vec<_> = routes.difference(&described).collect();
    assert!(
        missing.is_empty(),
        "routes without a description: {missing:?}"
    );
    let ghosts: Vec<_> = described.difference(&routes).collect();
    assert!(ghosts.is_empty(), "described but not routed: {ghosts:?}");
    // Each operation says what it answers, and the guarded ones say so.
    for (method, path) in &described {
        let op = &spec["paths"][path][method.to_lowercase()];
        assert!(
            op["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{method} {path}: no responses"
        );
        // A rescan and an upload's verdict are the actions without a body.
        let bodiless = path == "/api/v1/images" || path.starts_with("/api/v1/uploads/");
        if matches!(method.as_str(), "PUT" | "POST") && !bodiless {
            assert!(
                op["requestBody"].is_object(),
                "{method} {path}: no request body"
            );
        }
    }
}

/// Calls a real server and checks each answer against the description.
struct Checker {
    spec: Value,
    http: reqwest::Client,
    base: String,
    token: String,
    /// Operations answered with a success at least once.
    succeeded: BTreeSet<(String, String)>,
    answers: usize,
}

impl Checker {
    /// `template` is the described path; `path` the one called.
    async fn call(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        body: Option<Value>,
        with_token: bool,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(m, format!("{}{path}", self.base));
        if with_token {
            req = req.bearer_auth(&self.token);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("the server answers");
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let op = &self.spec["paths"][template][method.to_lowercase()];
        assert!(op.is_object(), "{method} {template} is not described");
        let described = &op["responses"][status.to_string()];
        assert!(
            described.is_object(),
            "{method} {path} answered {status}, which its description does not list"
        );
        let content = described["content"].as_object().expect("content");
        let (media, schema) = content.iter().next().expect("a media type");
        let essence = |t: &str| t.split(';').next().unwrap_or("").trim().to_string();
        assert_eq!(
            essence(&content_type),
            essence(media),
            "{method} {path}: content type"
        );
        if status < 300 {
            self.succeeded
                .insert((method.to_string(), template.to_string()));
        }
        self.answers += 1;
        if essence(media) != "application/json" {
            // Streams are not read to their end.
            return (status, Value::Null);
        }
        let text = resp.text().await.expect("body");
        let value: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"));
        let mut root = schema["schema"].clone();
        root["components"] = self.spec["components"].clone();
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&root)
            .unwrap_or_else(|e| panic!("{method} {template}: schema does not compile: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {path} {status} does not validate against its schema:\n{}\n{value:#}",
            errors.join("\n")
        );
        (status, value)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_answers_validate_against_their_schemas() {
    let dir = tempfile::tempdir().expect("tmp");
    init_log();
    let mut cfg = server_config(&dir.path().join("s"), "127.0.0.1:0");
    cfg.api_tokens = vec![voi::server::tokens::NamedToken {
        name: "wall-screen".into(),
        token: Some(READ_ONLY.into()),
        token_sha256: None,
        read_only: true,
    }];
    let h = voi::server::Server::start(cfg).await.expect("server");
    let lib = h.server.images.dir().to_path_buf();
    make_base(&lib.join(format!("voi_0_{U}")), 1);
    h.server.images.scan().await.expect("scan");
    let mut events = h.server.registry.events.subscribe();
    let (agent, task) = start_agent(agent_config(&dir.path().join("a"), h.addr.port(), MAC));
    wait_event(&mut events, 20, is_login(MAC)).await;

    let base = format!("http://{}", h.api_addr);
    let spec: Value = reqwest::get(format!("{base}/api/v1/openapi.json"))
        .await
        .expect("openapi.json")
        .json()
        .await
        .expect("json");
    assert_eq!(
        spec,
        serde_json::to_value(voi::server::api::openapi()).expect("json"),
        "the served description is the generated one"
    );
    let mut c = Checker {
        spec,
        http: reqwest::Client::new(),
        base,
        token: h.server.api_token.clone(),
        succeeded: BTreeSet::new(),
        answers: 0,
    };
    let t = "/api/v1/terminals/{mac}";
    let group = serde_json::to_value(layer_group("Room 101", G, U, &[0])).expect("group");

    // Reads, and the refusals a reader meets.
    for p in [
        "/api/v1/terminals",
        "/api/v1/images",
        "/api/v1/desktop_groups",
        "/api/v1/order",
        "/api/v1/wake",
        "/api/v1/schedule",
        "/api/v1/audit",
        "/api/v1/upgrades",
        "/api/v1/version",
        "/api/v1/openapi.json",
        "/healthz",
        "/readyz",
        "/metrics",
        "/",
        "/console.js",
        "/console.css",
    ] {
        let (status, _) = c.call("GET", p, p, None, true).await;
        assert_eq!(status, 200, "GET {p}");
    }
    c.call(
        "GET",
        "/api/v1/wake",
        "/api/v1/wake?macs=52-54-00-0a-00-01",
        None,
        true,
    )
    .await;
    c.call("GET", "/api/v1/audit", "/api/v1/audit?limit=3", None, true)
        .await;
    let (s, _) = c
        .call("GET", t, &format!("/api/v1/terminals/{MAC}"), None, true)
        .await;
    assert_eq!(s, 200);
    let (s, _) = c
        .call("GET", t, "/api/v1/terminals/nonsense", None, true)
        .await;
    assert_eq!(s, 400);
    let (s, _) = c
        .call("GET", t, "/api/v1/terminals/52:54:00:0A:00:99", None, true)
        .await;
    assert_eq!(s, 404);

    // Actions, each with a refusal too.
    let cmd = format!("/api/v1/terminals/{MAC}/commands");
    let (s, v) = c
        .call(
            "POST",
            "/api/v1/terminals/{mac}/commands",
            &cmd,
            Some(json!({"command": "update_name", "params": {"name": "PC-7"}})),
            true,
        )
        .await;
    assert_eq!((s, v["code"].as_i64()), (200, Some(0)), "{v}");
    let (s, _) = c
        .call(
            "POST",
            "/api/v1/terminals/{mac}/commands",
            &cmd,
            Some(json!({"command": "fly"})),
            true,
        )
        .await;
    assert_eq!(s, 400);
    for (tail, good, bad) in [
        (
            "admission",
            json!({"admission": "accepted"}),
            json!({"admission": "maybe"}),
        ),
        (
            "delivery",
            json!({"delivery": "auto"}),
            json!({"delivery": "pigeon"}),
        ),
        (
            "room",
            json!({"room": "101"}),
            json!({"room": "x".repeat(65)}),
        ),
        (
            "may_upload",
            json!({"may_upload": false}),
            json!({"may_upload": "yes"}),
        ),
    ] {
        let tmpl = format!("/api/v1/terminals/{{mac}}/{tail}");
        let path = format!("/api/v1/terminals/{MAC}/{tail}");
        let (s, _) = c.call("PUT", &tmpl, &path, Some(good), true).await;
        assert_eq!(s, 200, "{tail}");
        let (s, _) = c.call("PUT", &tmpl, &path, Some(bad), true).await;
        assert_eq!(s, 400, "{tail}");
    }
    let (s, _) = c
        .call(
            "PUT",
            "/api/v1/desktop_groups",
            "/api/v1/desktop_groups",
            Some(group.clone()),
            true,
        )
        .await;
    assert_eq!(s, 200);
    // Uploads awaiting review: the operator asks the agent for its own
    // diff (1016 upload_disk) twice, rejects the first and accepts the
    // second.
    wait_for("the base on the agent", 60, || {
        seeding(&agent, &format!("voi_0_{U}"))
    })
    .await;
    make_diff(
        &agent.cfg.disk_dir(),
        &format!("voi_1_{U}"),
        &format!("voi_0_{U}"),
        1,
        0x5c,
    );
    for accept in [false, true] {
        let cmd = "/api/v1/terminals/{mac}/commands";
        let (s, v) = c
            .call(
                "POST",
                cmd,
                &format!("/api/v1/terminals/{MAC}/commands"),
                Some(json!({"command": "upload_disk", "params": {"desktop": {"uuid": G, "disks": [{"uuid": U, "type": 0, "dif_level": 1, "prefix": "voi"}]}}})),
                true,
            )
            .await;
        assert_eq!((s, v["code"].as_i64()), (200, Some(0)), "{v}");
        let review = || {
            h.server
                .images
                .uploads_list()
                .into_iter()
                .find(|u| u.state == "review")
                .map(|u| u.torrent_id)
        };
        wait_for("an upload awaiting review", 60, || review().is_some()).await;
        let id = review().expect("review");
        let verdict = if accept { "accept" } else { "reject" };
        let tmpl = format!("/api/v1/uploads/{{torrent_id}}/{verdict}");
        let path = format!("/api/v1/uploads/{id}/{verdict}");
        let (s, v) = c.call("POST", &tmpl, &path, None, true).await;
        assert_eq!((s, v["code"].as_i64()), (200, Some(0)), "{v}");
        let (s, _) = c.call("POST", &tmpl, &path, None, true).await;
        assert_eq!(s, 409, "a verdict is given once");
    }
    assert!(
        lib.join(format!("voi_1_{U}")).exists(),
        "the accepted upload is in the library"
    );
    let mut undeliverable = group.clone();
    undeliverable["disks"][0]["dif_level"] = json!(2);
    let (s, _) = c
        .call(
            "PUT",
            "/api/v1/desktop_groups",
            "/api/v1/desktop_groups",
            Some(undeliverable),
            true,
        )
        .await;
    assert_eq!(s, 422);
    let (s, v) = c
        .call(
            "PUT",
            "/api/v1/desktop_groups",
            "/api/v1/desktop_groups",
            Some(json!({"disks": 3})),
            true,
        )
        .await;
    assert_eq!(s, 400);
    // A guessed body is told what to fix and where the shape is.
    let msg = v["msg"].as_str().unwrap_or("");
    assert!(
        msg.contains("disks") && msg.contains("openapi.json"),
        "{msg}"
    );
    // A change of admission starts the terminal's session again.
    wait_for("the terminal back online", 20, || {
        h.server.registry.sender(MAC).is_some()
    })
    .await;
    let dd = format!("/api/v1/terminals/{MAC}/download_desktop");
    let (s, _) = c
        .call(
            "POST",
            "/api/v1/terminals/{mac}/download_desktop",
            &dd,
            Some(json!({"group_uuid": G})),
            true,
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = c
        .call(
            "GET",
            "/api/v1/desktop_groups",
            "/api/v1/desktop_groups",
            None,
            true,
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = c
        .call("POST", "/api/v1/images", "/api/v1/images", None, true)
        .await;
    assert_eq!(s, 200);
    let (s, _) = c
        .call(
            "POST",
            "/api/v1/order",
            "/api/v1/order",
            Some(json!({"start_id": 1, "macs": [MAC]})),
            true,
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = c
        .call("GET", "/api/v1/order", "/api/v1/order", None, true)
        .await;
    assert_eq!(s, 200);
    let (s, _) = c
        .call("DELETE", "/api/v1/order", "/api/v1/order", None, true)
        .await;
    assert_eq!(s, 200);
    // The terminal is online, so waking it sends nothing anywhere.
    let (s, v) = c
        .call(
            "POST",
            "/api/v1/wake",
            "/api/v1/wake",
            Some(json!({"macs": [MAC]})),
            true,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["data"]["results"][0]["state"], "already_online", "{v}");
    let (s, _) = c
        .call(
            "POST",
            "/api/v1/wake",
            "/api/v1/wake",
            Some(json!({"macs": [MAC], "all": true})),
            true,
        )
        .await;
    assert_eq!(s, 400);
    let entry = json!([{"room": "101", "days": ["mon"], "at": "07:50", "action": "wake"}]);
    let (s, _) = c
        .call(
            "PUT",
            "/api/v1/schedule",
            "/api/v1/schedule",
            Some(entry),
            true,
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = c
        .call("GET", "/api/v1/schedule", "/api/v1/schedule", None, true)
        .await;
    assert_eq!(s, 200);
    let (s, _) = c
        .call(
            "PUT",
            "/api/v1/schedule",
            "/api/v1/schedule",
            Some(json!([{"room": "1", "at": "25:00", "action": "wake"}])),
            true,
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = c
        .call(
            "POST",
            "/api/v1/upgrades/push",
            "/api/v1/upgrades/push",
            Some(json!({"macs": [MAC], "version": "9.9.9"})),
            true,
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = c
        .call(
            "POST",
            "/api/v1/upgrades/push",
            "/api/v1/upgrades/push",
            Some(json!({"version": "9.9.9"})),
            true,
        )
        .await;
    assert_eq!(s, 400);
    // An agent package that is not an agent binary.
    let resp = c
        .http
        .put(format!("{}/api/v1/upgrades/x86/0.9.0", c.base))
        .bearer_auth(&c.token)
        .body(vec![0u8; 1024])
        .send()
        .await
        .expect("publish");
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["code"].as_i64().map(|c| c != 0), Some(true));
    // Publishing a real binary, the agent itself.
    let binary = std::fs::read(env!("CARGO_BIN_EXE_voi-agent")).expect("agent binary");
    let resp = c
        .http
        .put(format!("{}/api/v1/upgrades/x86/0.9.0", c.base))
        .bearer_auth(&c.token)
        .body(binary)
        .send()
        .await
        .expect("publish");
    assert_eq!(resp.status(), 200);
    c.succeeded
        .insert(("PUT".into(), "/api/v1/upgrades/{platform}/{version}".into()));
    let (s, _) = c
        .call("GET", "/api/v1/upgrades", "/api/v1/upgrades", None, true)
        .await;
    assert_eq!(s, 200);
    let (s, _) = c
        .call("GET", "/api/v1/events", "/api/v1/events", None, true)
        .await;
    assert_eq!(s, 200);
    let (s, _) = c
        .call("DELETE", t, &format!("/api/v1/terminals/{MAC}"), None, true)
        .await;
    assert_eq!(s, 409, "a connected terminal is not forgotten");
    let (s, _) = c
        .call(
            "DELETE",
            "/api/v1/desktop_groups/{uuid}",
            &format!("/api/v1/desktop_groups/{U}"),
            None,
            true,
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = c
        .call(
            "DELETE",
            "/api/v1/desktop_groups/{uuid}",
            &format!("/api/v1/desktop_groups/{G}"),
            None,
            true,
        )
        .await;
    assert_eq!(s, 200);

    // Without the token, every guarded operation is refused with the
    // envelope its description gives.
    let guarded: Vec<(String, String)> = described(&c.spec)
        .into_iter()
        .filter(|(m, p)| c.spec["paths"][p][m.to_lowercase()]["security"].is_array())
        .collect();
    let operator = c.token.clone();
    for (m, p) in &guarded {
        let concrete = p
            .replace("{mac}", MAC)
            .replace("{uuid}", G)
            .replace("{platform}", "x86")
            .replace("{version}", "1.0.0");
        let body = matches!(m.as_str(), "PUT" | "POST").then(|| json!({}));
        let (s, _) = c.call(m, p, &concrete, body.clone(), false).await;
        assert_eq!(s, 401, "{m} {p} without the token");
        // A read-only token reads, and is refused anything else.
        c.token = READ_ONLY.into();
        if m != "GET" {
            let (s, _) = c.call(m, p, &concrete, body, true).await;
            assert_eq!(s, 403, "{m} {p} with a read-only token");
        } else if p != "/api/v1/events" {
            let (s, _) = c.call(m, p, &concrete, None, true).await;
            assert!(s < 500, "{m} {p} with a read-only token: {s}");
        }
        c.token = operator.clone();
    }

    // The agent goes; then it can be forgotten.
    agent.shutdown.cancel();
    let _ = task.await;
    wait_for("the session to close", 20, || {
        h.server.registry.sender(MAC).is_none()
    })
    .await;
    let (s, _) = c
        .call("DELETE", t, &format!("/api/v1/terminals/{MAC}"), None, true)
        .await;
    assert_eq!(s, 200);

    let missed: Vec<_> = described(&c.spec)
        .difference(&c.succeeded)
        .cloned()
        .collect();
    assert!(
        missed.is_empty(),
        "operations never seen succeeding: {missed:?}"
    );
    eprintln!(
        "{} answers validated against {} described operations",
        c.answers,
        described(&c.spec).len()
    );
    h.stop().await;
}
