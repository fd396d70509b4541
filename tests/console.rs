//! The operator console in a real browser: Debian's chromium, driven over
//! WebDriver (chromedriver), against a real voi-server with two real agents
//! and a hand-written terminal whose reported name and version are
//! HTML/JS injections. The test logs in with the API token, sees the
//! terminals online, renames one through the page (the agent's platform
//! journal must show it), sends a desktop to both and watches both bars
//! reach 100%. It saves the screenshots under docs/ and prints the page
//! weight and how long a 9025 takes to move a bar.
//!
//! Needs chromium and chromium-driver; skips with one line without them.

mod common;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use voi::agent::platform::{JournalEntry, RecordingPlatform};
use voi::protocol::ServiceCode;

const U: &str = "7d1c0a9e-52b4-4b8e-9a57-0c6f3e1d2b44";
const G: &str = "c3b2a190-8d7e-4f6a-b5c4-d3e2f1a0b9c8";
const EVIL_NAME: &str = r#"<img src=x onerror="window.__pwned=1">"#;
const EVIL_VERSION: &str = r#"<script>window.__pwned=2</script>"#;

async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.expect("script")
}

async fn wait_js(c: &Client, what: &str, secs: u64, script: &str) -> Value {
    let start = Instant::now();
    loop {
        let v = js(c, script).await;
        if v.as_bool() == Some(true) || v.as_u64().is_some_and(|n| n > 0) {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(name);
    std::fs::write(&path, png).expect("write screenshot");
}

fn chromedriver(port: u16, log: &Path) -> Proc {
    Proc(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log"))
            .spawn()
            .expect("chromedriver"),
    )
}

async fn browser(driver_port: u16, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1400,900",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let start = Instant::now();
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{driver_port}"))
            .await
        {
            Ok(c) => return c,
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "chromedriver never took a session: {e}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Types the API token into the login form and submits it.
async fn log_in(c: &Client, token: &str) {
    c.find(Locator::Id("token"))
        .await
        .expect("token field")
        .send_keys(token)
        .await
        .expect("type");
    c.find(Locator::Id("login-button"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
}

fn layer() -> String {
    format!("voi_0_{U}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_in_chromium_shows_the_room_renames_and_sends_a_desktop() {
    let test = "the_console_in_chromium_shows_the_room_renames_and_sends_a_desktop";
    if !has(test, &[CHROMIUM, CHROMEDRIVER]) {
        return;
    }
    init_log();
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let lib = h.server.images.dir().to_path_buf();
    make_base(&lib.join(layer()), 48);
    h.server.images.scan().await.expect("scan");

    // Two real agents, online before the desktop group exists, so neither
    // fetches it by itself: the operator sends it from the page.
    let macs = ["AA:00:00:00:0C:01", "AA:00:00:00:0C:02"];
    let mut agents = Vec::new();
    let mut ev = h.server.registry.events.subscribe();
    for (i, mac) in macs.iter().enumerate() {
        let cfg = agent_config(&dir.path().join(format!("a{i}")), h.addr.port(), mac);
        agents.push(start_agent(cfg));
        wait_event(&mut ev, 20, is_heartbeat(mac)).await;
    }
    let mut group = layer_group("classroom", G, U, &[0]);
    group.disks[0].operate_id = 1;
    h.server.store.put_group(&group).expect("group");
    // A terminal reporting markup as its name and version.
    let evil_mac = "AA:00:00:00:0C:66";
    let mut evil = RawClient::connect(h.addr).await;
    assert_eq!(evil.login(evil_mac).await.code, 0);
    let (_, env) = evil
        .request(
            ServiceCode::UpdateConfigInfo,
            &json!({"mac": evil_mac, "name": EVIL_NAME, "ip": "127.0.0.1", "is_dhcp": 1,
                    "platform": "x86", "soft_version": EVIL_VERSION, "conf_version": 0,
                    "terminal_id": -1, "setup_info": {}}),
        )
        .await;
    assert_eq!(env.code, 0, "{env:?}");

    let driver_port = free_port();
    let _driver = chromedriver(driver_port, &dir.path().join("chromedriver.log"));
    let c = browser(driver_port, &dir.path().join("profile")).await;
    let base = format!("http://{}", h.api_addr);
    c.goto(&format!("{base}/")).await.expect("open the console");

    // The token, once.
    log_in(&c, &h.server.api_token).await;
    let online = format!(
        "return {:?}.every(m => document.querySelector(`#terminals tr[data-mac=\"${{m}}\"] .state.online`) !== null)",
        macs
    );
    wait_js(&c, "both agents online on the page", 30, &online).await;

    // The injection is shown as text and runs nothing.
    let evil_row = format!("#terminals tr[data-mac=\"{evil_mac}\"]");
    wait_js(
        &c,
        "the hostile terminal's row",
        20,
        &format!("return document.querySelector('{evil_row}') !== null"),
    )
    .await;
    let shown = js(
        &c,
        &format!("return document.querySelector('{evil_row} td.name').textContent"),
    )
    .await;
    assert_eq!(shown.as_str(), Some(EVIL_NAME));
    let injected = js(
        &c,
        "return [typeof window.__pwned, document.querySelectorAll('#terminals img, #terminals script').length]",
    )
    .await;
    assert_eq!(
        injected,
        json!(["undefined", 0]),
        "nothing from a terminal executes"
    );

    // Rename one terminal through its page.
    c.goto(&format!("{base}/#terminal/{}", macs[0]))
        .await
        .expect("terminal page");
    let name_field = c
        .wait()
        .for_element(Locator::Id("t-name"))
        .await
        .expect("name field");
    name_field.send_keys("room-7").await.expect("type");
    c.find(Locator::Id("t-rename"))
        .await
        .expect("rename")
        .click()
        .await
        .expect("click");
    let journal = agents[0].0.cfg.journal_path();
    let start = Instant::now();
    while !RecordingPlatform::read_journal(&journal).contains(&JournalEntry::SetHostname {
        name: "room-7".into(),
    }) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the agent never renamed itself"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_js(
        &c,
        "the reply on the page",
        10,
        "return document.getElementById('t-result').textContent.includes('update_name → 0')",
    )
    .await;
    wait_js(
        &c,
        "the recent command listed",
        10,
        "return document.querySelectorAll('#t-commands tbody tr').length",
    )
    .await;
    screenshot(&c, "console-terminal.png").await;

    // Send the desktop to both from the room view and watch the bars.
    c.goto(&format!("{base}/#terminals")).await.expect("room");
    for mac in macs {
        let pick = format!("#terminals tr[data-mac=\"{mac}\"] input.pick");
        // The table is redrawn as live events come in (a group change now
        // reaches the agents at once, and they report again): a row found
        // can be replaced before the click lands. Click until it is checked.
        let mut checked = false;
        for _ in 0..20 {
            if let Ok(el) = c.wait().for_element(Locator::Css(&pick)).await {
                let _ = el.click().await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = c
                .execute(
                    &format!(
                        "const e = document.querySelector('{}'); return !!(e && e.checked);",
                        pick.replace('\'', "\\'")
                    ),
                    vec![],
                )
                .await
                .ok()
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            if now {
                checked = true;
                break;
            }
        }
        assert!(checked, "{mac}: its checkbox never stayed checked");
    }
    c.find(Locator::Id("room-send"))
        .await
        .expect("send")
        .click()
        .await
        .expect("click");
    let both_done = format!(
        "return {:?}.every(m => document.querySelector(`#terminals tr[data-mac=\"${{m}}\"] .bar[data-progress=\"100\"]`) !== null)",
        macs
    );
    wait_js(&c, "both progress bars at 100%", 120, &both_done).await;
    wait_js(
        &c,
        "both results listed",
        20,
        "return document.querySelectorAll('#room-results li.ok').length >= 2",
    )
    .await;
    screenshot(&c, "console-terminals.png").await;
    c.goto(&format!("{base}/#images")).await.expect("images");
    wait_js(
        &c,
        "the library's bars",
        20,
        "return document.querySelectorAll('#images .bar').length >= 2",
    )
    .await;
    screenshot(&c, "console-images.png").await;

    // Every agent has the layer, and nothing ran from the hostile terminal.
    for (agent, _) in &agents {
        let copy = agent.cfg.disk_dir().join(layer());
        let start = Instant::now();
        while !copy.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{copy:?} never arrived"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(
        js(&c, "return typeof window.__pwned").await,
        json!("undefined")
    );

    // The figures: from the server taking a 9025 to the bar moving, and
    // the bytes the terminals view costs.
    let updates = js(&c, "return window.__barUpdates").await;
    let mut lags: Vec<i64> = updates
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| Some(u["shown_ms"].as_i64()? - u["at_ms"].as_i64()?))
                .collect()
        })
        .unwrap_or_default();
    lags.sort_unstable();
    assert!(!lags.is_empty(), "no 9025 reached the page");
    let http = reqwest::Client::new();
    let mut weight = 0;
    for path in ["/", "/console.js", "/console.css"] {
        weight += http
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body")
            .len();
    }
    let data = http
        .get(format!("{base}/api/v1/terminals"))
        .bearer_auth(&h.server.api_token)
        .send()
        .await
        .expect("get")
        .bytes()
        .await
        .expect("body")
        .len();
    eprintln!(
        "console: terminals view {weight} bytes of page, script and styles + {data} bytes of data for {} terminals; 9025 to bar: {} updates, median {} ms, max {} ms",
        macs.len() + 1,
        lags.len(),
        lags[lags.len() / 2],
        lags[lags.len() - 1]
    );

    c.close().await.expect("close");
    for (agent, task) in agents {
        agent.shutdown.cancel();
        let _ = task.await;
    }
    h.stop().await;
}

/// What issue "operator truth" asked the console to show, each checked in
/// the page: refused library files with reasons, undeliverable groups, the
/// group editor's restore mode, diff mode and desktop address, failure
/// reasons on bars, group names instead of disk uuids, no ghost rows, MAC
/// conflicts, and forgetting a terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_shows_reasons_conflicts_and_edits_groups_fully() {
    let test = "the_console_shows_reasons_conflicts_and_edits_groups_fully";
    if !has(test, &[CHROMIUM, CHROMEDRIVER]) {
        return;
    }
    const OTHER: &str = "7d1c0a9e-52b4-4b8e-9a57-0c6f3e1d2b45";
    const BAD_G: &str = "c3b2a190-8d7e-4f6a-b5c4-d3e2f1a0b9c9";
    init_log();
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let lib = h.server.images.dir().to_path_buf();
    make_base(&lib.join(layer()), 1);
    let misnamed = format!("voi_1_{OTHER}");
    make_diff(&lib, &misnamed, &layer(), 1, 9);
    h.server.images.scan().await.expect("scan");
    h.server
        .store
        .put_group(&layer_group("classroom", G, U, &[0]))
        .expect("group");
    // Stored behind the API's back (as an older server would have): the
    // console must warn that it cannot be delivered.
    h.server
        .store
        .put_group(&layer_group("broken", BAD_G, OTHER, &[0, 1]))
        .expect("group");

    // A terminal that failed a layer with a reason, holds the classroom
    // group, and once reported a layer nobody has any more.
    let mac = "AA:00:00:00:0D:01";
    let mut t = RawClient::connect(h.addr).await;
    assert_eq!(t.login(mac).await.code, 0);
    let ghost = "voi_0_7d1c0a9e-52b4-4b8e-9a57-0c6f3e1d2bff";
    for name in [layer(), ghost.to_string()] {
        let (_, env) = t
            .request(
                ServiceCode::BtTaskState,
                &json!({"torrent_name": format!("{name}.torrent"), "mac": mac, "progress": 40, "state": "downloading"}),
            )
            .await;
        assert_eq!(env.code, 0, "{env:?}");
    }
    let why = "refused (permanent, not retried for this copy): its backing file is wrong";
    let (_, env) = t
        .request(
            ServiceCode::TaskResult,
            &json!({"mac": mac, "ip": "127.0.0.1", "disk": layer(), "result": 2, "msg": why}),
        )
        .await;
    assert_eq!(env.code, 0, "{env:?}");
    let (_, env) = t
        .request(
            ServiceCode::PutDesktopGroupList,
            &json!({"mac": mac, "sys_disk_uuids": U}),
        )
        .await;
    assert_eq!(env.code, 0, "{env:?}");
    // Two sessions claim one MAC.
    let twin = "AA:00:00:00:0D:02";
    let mut a1 = RawClient::connect(h.addr).await;
    assert_eq!(a1.login(twin).await.code, 0);
    let mut a2 = RawClient::connect(h.addr).await;
    assert_eq!(a2.login(twin).await.code, 0);
    // One that is gone, to be forgotten.
    let gone = "AA:00:00:00:0D:03";
    {
        let mut g = RawClient::connect(h.addr).await;
        assert_eq!(g.login(gone).await.code, 0);
    }
    wait_for("the gone terminal's session to end", 20, || {
        h.server.registry.sender(gone).is_none()
    })
    .await;

    let driver_port = free_port();
    let _driver = chromedriver(driver_port, &dir.path().join("chromedriver.log"));
    let c = browser(driver_port, &dir.path().join("profile")).await;
    let base = format!("http://{}", h.api_addr);
    c.goto(&format!("{base}/")).await.expect("open the console");
    log_in(&c, &h.server.api_token).await;
    let row = format!("#terminals tr[data-mac=\"{mac}\"]");
    wait_js(
        &c,
        "the failed bar with its reason",
        20,
        &format!("const r = document.querySelector('{row} td.transfers'); return !!r && r.textContent.includes('its backing file is wrong')"),
    )
    .await;
    let cells = js(
        &c,
        &format!("const r = document.querySelector('{row}'); return [r.querySelector('td.desktops').textContent, r.querySelector('td.transfers').textContent]"),
    )
    .await;
    assert_eq!(
        cells[0], "classroom",
        "group names, not disk uuids: {cells}"
    );
    assert!(
        !cells[1].as_str().unwrap_or_default().contains(ghost),
        "a ghost row for a layer nobody has: {cells}"
    );
    wait_js(
        &c,
        "the MAC conflict",
        20,
        &format!("const r = document.querySelector('#terminals tr[data-mac=\"{twin}\"] .conflict'); return !!r && r.textContent.includes('127.0.0.1')"),
    )
    .await;

    // The library lists the refused diff with its reason.
    c.goto(&format!("{base}/#images")).await.expect("images");
    wait_js(
        &c,
        "the refused file",
        20,
        &format!("const r = document.querySelector('#refused tr[data-file=\"{misnamed}\"]'); return !!r && r.textContent.includes('parent of another uuid')"),
    )
    .await;

    // Groups: the broken one is marked; the editor sets restore, diff mode
    // and a fixed desktop address.
    c.goto(&format!("{base}/#groups")).await.expect("groups");
    wait_js(
        &c,
        "the undeliverable warning",
        20,
        &format!("const r = document.querySelector('#groups tr[data-group=\"{BAD_G}\"] .undeliverable'); return !!r && r.textContent.includes('{misnamed}')"),
    )
    .await;
    js(
        &c,
        &format!(
            "document.querySelector('#groups tr[data-group=\"{G}\"] button').click();
             document.getElementById('g-restore').checked = true;
             document.getElementById('g-diff-mode').value = '1';
             document.getElementById('g-dhcp').checked = false;
             document.getElementById('g-ip').value = '10.1.2.3';
             document.getElementById('g-mask').value = '255.255.255.0';
             document.getElementById('g-gateway').value = '10.1.2.3';
             document.getElementById('g-dns1').value = '10.1.2.1';
             document.getElementById('g-save').click(); return true"
        ),
    )
    .await;
    wait_js(
        &c,
        "the bad desktop address refused in the page",
        10,
        "return document.getElementById('g-error').textContent.includes('gateway')",
    )
    .await;
    js(
        &c,
        "document.getElementById('g-gateway').value = '10.1.2.254';
         document.getElementById('g-save').click(); return true",
    )
    .await;
    wait_for("the edited group in the store", 20, || {
        h.server.store.groups().ok().is_some_and(|gs| {
            gs.iter().any(|g| {
                g.desktop_group_uuid == G
                    && g.desktop_group_restore == 1
                    && g.diff_mode == 1
                    && g.desktop_is_dhcp == 0
                    && g.desktop_ip == "10.1.2.3"
                    && g.desktop_gateway == "10.1.2.254"
            })
        })
    })
    .await;
    screenshot(&c, "console-groups.png").await;

    // Forget the terminal that is gone; its row goes.
    c.goto(&format!("{base}/#terminal/{gone}"))
        .await
        .expect("terminal page");
    wait_js(
        &c,
        "the terminal page",
        20,
        &format!("return document.getElementById('t-title').textContent.includes('{gone}')"),
    )
    .await;
    js(
        &c,
        "window.confirm = () => true; document.getElementById('t-forget').click(); return true",
    )
    .await;
    wait_for("the record forgotten", 20, || {
        h.server.store.terminal(gone).ok().flatten().is_none()
    })
    .await;
    wait_js(
        &c,
        "the forgotten row gone",
        20,
        &format!("return location.hash.startsWith('#terminals') && document.querySelector('#terminals tr[data-mac=\"{gone}\"]') === null"),
    )
    .await;
    c.close().await.expect("close");
    drop((t, a1, a2));
    h.stop().await;
}

/// Rooms, wake-on-LAN and the class schedule from the page. The terminal is
/// online, so its Wake sends nothing ("already online"): no packet leaves
/// this machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_puts_terminals_in_rooms_wakes_and_edits_the_schedule() {
    let test = "the_console_puts_terminals_in_rooms_wakes_and_edits_the_schedule";
    if !has(test, &[CHROMIUM, CHROMEDRIVER]) {
        return;
    }
    init_log();
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let mac = "AA:00:00:00:0C:31";
    let mut ev = h.server.registry.events.subscribe();
    let _agent = start_agent(agent_config(&dir.path().join("a"), h.addr.port(), mac));
    wait_event(&mut ev, 20, is_heartbeat(mac)).await;

    let driver_port = free_port();
    let _driver = chromedriver(driver_port, &dir.path().join("chromedriver.log"));
    let c = browser(driver_port, &dir.path().join("profile")).await;
    let base = format!("http://{}", h.api_addr);
    c.goto(&format!("{base}/")).await.expect("open the console");
    log_in(&c, &h.server.api_token).await;
    let pick = format!("#terminals tr[data-mac=\"{mac}\"] input.pick");
    wait_js(
        &c,
        "the terminal picked",
        20,
        &format!("const e = document.querySelector('{pick}'); if (e && !e.checked) e.click(); return !!(e && e.checked)"),
    )
    .await;
    js(&c, "document.getElementById('room-name').value = '301'; document.getElementById('room-set').click(); return 1").await;
    wait_js(
        &c,
        "the room shown in its row",
        20,
        &format!("const r = document.querySelector('#terminals tr[data-mac=\"{mac}\"] td.room'); return !!r && r.textContent === '301'"),
    )
    .await;
    assert_eq!(
        h.server.store.terminal(mac).ok().flatten().map(|r| r.room),
        Some("301".to_string())
    );
    wait_js(
        &c,
        "the terminal still picked",
        20,
        &format!("const e = document.querySelector('{pick}'); if (e && !e.checked) e.click(); return !!(e && e.checked)"),
    )
    .await;
    js(&c, "document.getElementById('room-wake').click(); return 1").await;
    wait_js(
        &c,
        "the wake's result",
        20,
        &format!("return [...document.querySelectorAll('#room-results li')].some(l => l.textContent === '{mac}: wake already online: nothing sent')"),
    )
    .await;

    c.goto(&format!("{base}/#schedule"))
        .await
        .expect("schedule page");
    wait_js(
        &c,
        "the server's clock",
        20,
        "return document.getElementById('s-clock').textContent.includes('Server clock')",
    )
    .await;
    let fill = |room: &str, days: &str, at: &str, action: &str| {
        format!(
            "document.getElementById('s-room').value = '{room}'; document.getElementById('s-days').value = '{days}'; document.getElementById('s-at').value = '{at}'; document.getElementById('s-action').value = '{action}'; document.getElementById('s-add').click(); return 1"
        )
    };
    js(&c, &fill("301", "mon,fri", "07:50", "wake")).await;
    wait_js(
        &c,
        "the entry listed",
        20,
        "return [...document.querySelectorAll('#schedule tbody tr')].some(r => r.textContent.includes('07:50') && r.textContent.includes('mon, fri'))",
    )
    .await;
    js(&c, &fill("301", "funday", "17:30", "shutdown")).await;
    wait_js(
        &c,
        "a wrong day refused with its reason",
        20,
        "return document.getElementById('s-error').textContent.includes('funday')",
    )
    .await;
    js(&c, &fill("301", "", "17:30", "shutdown")).await;
    wait_js(
        &c,
        "two entries",
        20,
        "return document.querySelectorAll('#schedule tbody tr').length === 2",
    )
    .await;
    let stored = h.server.store.schedule().expect("schedule");
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(stored[1].days, Vec::<String>::new(), "every day");
    screenshot(&c, "console-schedule.png").await;
    js(
        &c,
        "document.querySelector('#schedule tbody tr button').click(); return 1",
    )
    .await;
    wait_js(
        &c,
        "one entry left",
        20,
        "return document.querySelectorAll('#schedule tbody tr').length === 1",
    )
    .await;
    assert_eq!(h.server.store.schedule().expect("schedule").len(), 1);

    // Agent packages and who runs what, on the library page.
    let env = common::api(&h)
        .put_bytes(
            "/api/v1/upgrades/x86/0.9.0?raw=true",
            b"#!/bin/sh\n".to_vec(),
        )
        .await
        .expect("publish");
    assert_eq!(env.code, 0, "{env:?}");
    c.goto(&format!("{base}/#images"))
        .await
        .expect("library page");
    wait_js(
        &c,
        "the package and the version listed",
        20,
        "return [...document.querySelectorAll('#packages tbody tr')].some(r => r.textContent.includes('0.9.0')) && document.querySelectorAll('#agent-versions tbody tr').length > 0",
    )
    .await;

    // What was done from the page is in the audit trail, with the terminal.
    c.goto(&format!("{base}/#audit")).await.expect("audit page");
    wait_js(
        &c,
        "the room change in the audit trail",
        20,
        &format!("return [...document.querySelectorAll('#audit tbody tr')].some(r => r.textContent.includes('PUT /api/v1/terminals/{mac}/room') && r.textContent.includes('{mac}'))"),
    )
    .await;
    let trail = h.server.store.audit(100).expect("audit");
    assert!(
        trail.iter().any(|a| a.action == "POST /api/v1/wake"
            && a.terminals == vec![mac.to_string()]
            && a.status == 200),
        "{trail:?}"
    );
    assert!(
        trail.iter().any(|a| a.action == "PUT /api/v1/schedule"
            && a.status == 400
            && a.result.contains("funday")),
        "{trail:?}"
    );
    c.close().await.expect("close");
    h.stop().await;
}

/// Issue 37.8: the group form's OS type (and the disk bus it implies), the
/// disk size from the image's virtual size, a save with no change that
/// moves no version, the schedule's warning time, and the schedule's
/// history by terminal name; and the room's desktop column from the
/// terminal's own state report.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_sets_os_size_and_warning_and_names_the_schedules_history() {
    let test = "the_console_sets_os_size_and_warning_and_names_the_schedules_history";
    if !has(test, &[CHROMIUM, CHROMEDRIVER]) {
        return;
    }
    use voi::server::wake::ManualClock;
    init_log();
    let at = |s: &str| chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").expect("time");
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = server_config(&dir.path().join("s"), "127.0.0.1:0");
    cfg.wake.schedule_tick_ms = 100;
    let clock = std::sync::Arc::new(ManualClock::new(at("2026-11-30 07:49:00")));
    let h = voi::server::Server::start_with_clock(cfg, clock.clone())
        .await
        .expect("server");
    // A 64 MiB disk whose file is a few hundred KiB.
    let lib = h.server.images.dir().to_path_buf();
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(lib.join(layer()))
        .arg("64M"));
    h.server.scan_library().await.expect("scan");
    let mac = "AA:00:00:00:0C:41";
    let mut ev = h.server.registry.events.subscribe();
    let (agent, agent_task) = start_agent(agent_config(&dir.path().join("a"), h.addr.port(), mac));
    wait_event(&mut ev, 20, is_heartbeat(mac)).await;
    h.server
        .store
        .update_terminal(mac, |r| {
            r.config.name = "PC-07".into();
            r.room = "301".into();
        })
        .expect("name");

    let driver_port = free_port();
    let _driver = chromedriver(driver_port, &dir.path().join("chromedriver.log"));
    let c = browser(driver_port, &dir.path().join("profile")).await;
    let base = format!("http://{}", h.api_addr);
    c.goto(&format!("{base}/")).await.expect("open the console");
    log_in(&c, &h.server.api_token).await;
    // The terminal's own report: its desktop is off, and said so.
    wait_js(
        &c,
        "the terminal listed",
        20,
        &format!("return !!document.querySelector('#terminals tr[data-mac=\"{mac}\"]')"),
    )
    .await;
    let row = js(
        &c,
        &format!("return document.querySelector('#terminals tr[data-mac=\"{mac}\"]').textContent"),
    )
    .await;
    assert!(!row.to_string().contains("running"), "{row}");

    // A new group: Linux, so virtio; the size is the image's, not its file's.
    c.goto(&format!("{base}/#groups"))
        .await
        .expect("groups page");
    wait_js(
        &c,
        "the library's layer to pick",
        20,
        &format!(
            "return !!document.querySelector('.g-layer[value=\"{}\"]')",
            layer()
        ),
    )
    .await;
    js(
        &c,
        &format!(
            "document.getElementById('g-name').value = 'Linux lab'; document.getElementById('g-uuid').value = '{G}'; \
             document.getElementById('g-os').value = '0'; \
             document.querySelector('.g-layer[value=\"{}\"]').click(); document.getElementById('g-save').click(); return 1",
            layer()
        ),
    )
    .await;
    wait_for("the group stored", 20, || {
        h.server
            .store
            .groups()
            .is_ok_and(|g| g.iter().any(|g| g.desktop_group_uuid == G))
    })
    .await;
    let stored = || {
        h.server
            .store
            .groups()
            .expect("groups")
            .into_iter()
            .find(|g| g.desktop_group_uuid == G)
            .expect("stored")
    };
    let g = stored();
    assert_eq!(g.os_sys_type, 0, "the OS picked in the form");
    assert_eq!(
        g.disks[0].real_size.0,
        (64 << 20) / 512,
        "the virtual size, in sectors"
    );
    assert_eq!(g.disks[0].operate_id, 0);
    // Edited and saved with no change: no version moves.
    wait_js(
        &c,
        "the group listed",
        20,
        "return [...document.querySelectorAll('#groups tbody tr')].some(r => r.textContent.includes('Linux lab'))",
    )
    .await;
    js(
        &c,
        "[...document.querySelectorAll('#groups tbody tr')].find(r => r.textContent.includes('Linux lab')).querySelector('button').click(); return 1",
    )
    .await;
    wait_js(
        &c,
        "the form filled",
        20,
        "return document.getElementById('g-name').value === 'Linux lab' && document.getElementById('g-os').value === '0'",
    )
    .await;
    let saves = h
        .server
        .store
        .audit(100)
        .expect("audit")
        .iter()
        .filter(|a| a.action == "PUT /api/v1/desktop_groups")
        .count();
    js(&c, "document.getElementById('g-save').click(); return 1").await;
    wait_for("the second save", 20, || {
        h.server.store.audit(100).is_ok_and(|a| {
            a.iter()
                .filter(|a| a.action == "PUT /api/v1/desktop_groups" && a.status == 200)
                .count()
                > saves
        })
    })
    .await;
    assert_eq!(
        stored().disks[0].operate_id,
        0,
        "a save with no change moved the version"
    );
    assert_eq!(stored().os_sys_type, 0);

    // The schedule: a warning time, and a history that names terminals.
    c.goto(&format!("{base}/#schedule"))
        .await
        .expect("schedule page");
    wait_js(
        &c,
        "the server's clock",
        20,
        "return document.getElementById('s-clock').textContent.includes('Server clock')",
    )
    .await;
    for (what, when, warn) in [("shutdown", "17:30", "90"), ("wake", "07:50", "")] {
        js(
            &c,
            &format!(
                "document.getElementById('s-room').value = '301'; document.getElementById('s-at').value = '{when}'; \
                 document.getElementById('s-action').value = '{what}'; document.getElementById('s-warn').value = '{warn}'; \
                 document.getElementById('s-add').click(); return 1"
            ),
        )
        .await;
        wait_js(
            &c,
            "the entry listed",
            20,
            &format!("return [...document.querySelectorAll('#schedule tbody tr')].some(r => r.textContent.includes('{when}'))"),
        )
        .await;
    }
    let entries = h.server.store.schedule().expect("schedule");
    let shutdown = entries.iter().find(|e| e.at == "17:30").expect("shutdown");
    assert_eq!(shutdown.warn_secs, 90, "{entries:?}");
    clock.set(at("2026-11-30 07:50:02"));
    wait_for("the 07:50 run", 10, || {
        h.server
            .schedule_runs
            .runs()
            .iter()
            .any(|r| r.what == "wake")
    })
    .await;
    c.goto(&format!("{base}/#terminals"))
        .await
        .expect("terminals");
    c.goto(&format!("{base}/#schedule"))
        .await
        .expect("schedule page");
    wait_js(
        &c,
        "the run named by terminal",
        20,
        &format!("return [...document.querySelectorAll('#s-runs li')].some(l => l.textContent.includes('PC-07 ({mac})'))"),
    )
    .await;

    // The agent goes away: the row never says its desktop runs.
    agent.shutdown.cancel();
    let _ = agent_task.await;
    c.goto(&format!("{base}/#terminals"))
        .await
        .expect("terminals");
    wait_js(
        &c,
        "the terminal offline",
        20,
        &format!("const r = document.querySelector('#terminals tr[data-mac=\"{mac}\"]'); return !!r && !r.textContent.includes('running')"),
    )
    .await;
    c.close().await.expect("close");
    h.stop().await;
}
