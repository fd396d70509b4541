//! The terminal's own screen in a real terminal: `voi-agent screen` runs in
//! tmux against a real agent and two real servers. The test types with
//! `send-keys` and reads with `capture-pane`: the countdown and a key that
//! stops it, a download's bar moving, a wrong administrator password
//! refused and the right one accepted, the server moved to the second
//! server (the agent logs in there), and the offline state once that one
//! is gone. The captures go to `docs/terminal-screen*.txt`.
//!
//! Needs tmux; skips with one line without it.

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

use voi::server::Server;

const U: &str = "5c0a5b1e-1d7e-4c36-9c43-3f0c7b7b0c24";
const G: &str = "0c4a5e2b-7f4e-4d8e-8f53-4a5bb0e0c024";
const TMUX: Need = Need::Program("tmux", "tmux");

struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(cmd: &str) -> Tmux {
        // One tmux server per screen: the tests of this file run at once.
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let t = Tmux {
            socket: format!("voi-screen-{}-{n}", std::process::id()),
        };
        let ok = Command::new("tmux")
            .args([
                "-L",
                &t.socket,
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-s",
                "s",
                "-x",
                "110",
                "-y",
                "30",
                cmd,
            ])
            .status()
            .expect("tmux");
        assert!(ok.success(), "tmux new-session");
        t
    }

    fn keys(&self, keys: &[&str]) {
        let ok = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "s"])
            .args(keys)
            .status()
            .expect("send-keys");
        assert!(ok.success());
    }

    fn text(&self, text: &str) {
        let ok = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "s", "-l", text])
            .status()
            .expect("send-keys");
        assert!(ok.success());
    }

    fn title(&self) -> String {
        let out = Command::new("tmux")
            .args([
                "-L",
                &self.socket,
                "display-message",
                "-p",
                "-t",
                "s",
                "#{pane_title}",
            ])
            .output()
            .expect("display-message");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn capture(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-t", "s"])
            .output()
            .expect("capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    async fn wait(&self, what: &str, secs: u64, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.capture();
            if pred(&screen) {
                return screen;
            }
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "timed out after {secs} s waiting for {what}; the screen:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
}

impl Tmux {
    /// The screen process's resident memory (KiB) and CPU ticks so far.
    fn usage(&self) -> Option<(u64, u64)> {
        let out = Command::new("tmux")
            .args([
                "-L",
                &self.socket,
                "list-panes",
                "-t",
                "s",
                "-F",
                "#{pane_pid}",
            ])
            .output()
            .ok()?;
        let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let after = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        Some((rss, ticks))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

/// The first "downloading N%" on the screen.
fn percent(screen: &str) -> Option<u64> {
    let i = screen.find("downloading ")?;
    screen[i + 12..].split('%').next()?.trim().parse().ok()
}

/// The countdown's seconds.
fn countdown(screen: &str) -> Option<u64> {
    let i = screen.find(" in ")?;
    let rest = &screen[i + 4..];
    rest.split(" s.").next()?.trim().parse().ok()
}

fn save(name: &str, screen: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(name);
    let trimmed: Vec<&str> = screen.lines().map(str::trim_end).collect();
    std::fs::write(&path, trimmed.join("\n").trim_end().to_string() + "\n").expect("save capture");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_screen_in_tmux_counts_down_downloads_asks_the_password_moves_server_and_goes_offline()
{
    let test =
        "the_screen_in_tmux_counts_down_downloads_asks_the_password_moves_server_and_goes_offline";
    if !has(test, &[TMUX]) {
        return;
    }
    init_log();
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = server_config(&dir.path().join("a"), "127.0.0.1:0");
    // Slow, so the bar is seen moving.
    cfg.bt_upload_limit = 256 << 10;
    let a = Server::start(cfg).await.expect("server A");
    let lib = a.server.images.dir().to_path_buf();
    make_base(&lib.join(format!("voi_0_{U}")), 16);
    a.server.images.scan().await.expect("scan");
    a.server
        .store
        .put_group(&layer_group("Math lab", G, U, &[0]))
        .expect("group");
    // The second server knows the same group (a school's second server):
    // the terminal keeps its desktop when it moves.
    let b = start_server(&dir.path().join("b")).await;
    b.server
        .store
        .put_group(&layer_group("Math lab", G, U, &[0]))
        .expect("group on B");

    let mac = "AA:00:00:00:24:01";
    let mut acfg = agent_config(&dir.path().join("agent"), a.addr.port(), mac);
    acfg.desktop.auto_boot = true;
    acfg.desktop.countdown_secs = 300;
    let socket = acfg.control_socket_path();
    let mut ev = a.server.registry.events.subscribe();
    let (agent, task) = start_agent(acfg);
    wait_event(&mut ev, 20, is_login(mac)).await;

    let screen = Tmux::start(&format!(
        "{} screen --socket {}",
        env!("CARGO_BIN_EXE_voi-agent"),
        socket.display()
    ));
    // Who and where, and the countdown counting.
    let first = screen
        .wait("the countdown", 20, |s| {
            countdown(s).is_some() && s.contains(mac) && s.contains(": connected")
        })
        .await;
    let n1 = countdown(&first).expect("seconds");
    let later = screen
        .wait("the countdown to move", 10, |s| {
            countdown(s).is_some_and(|n| n < n1)
        })
        .await;
    assert!(later.contains("Starting Math lab in"), "{later}");
    // The download, its bar moving.
    let d1 = screen
        .wait("the download", 30, |s| percent(s).is_some_and(|p| p < 90))
        .await;
    let p1 = percent(&d1).expect("percent");
    let d2 = screen
        .wait("the bar to move", 30, |s| {
            percent(s).is_some_and(|p| p > p1)
        })
        .await;
    assert!(d2.contains("█"), "a gauge is drawn: {d2}");
    assert!(d2.contains("KiB/s") || d2.contains("MiB/s"), "{d2}");
    save("terminal-screen.txt", &d2);
    // What the screen costs the terminal while it shows a download.
    if let Some((_, t0)) = screen.usage() {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if let Some((rss, t1)) = screen.usage() {
            println!(
                "voi-agent screen: {rss} KiB resident, {:.1} % of one core over 5 s",
                (t1 - t0) as f64 / 5.0
            );
        }
    }
    // Any key stops the countdown.
    screen.keys(&["Space"]);
    screen
        .wait("the countdown stopped", 10, |s| {
            s.contains("Automatic start stopped") && countdown(s).is_none()
        })
        .await;
    assert!(
        agent
            .auto_boot_deadline_ms
            .lock()
            .map(|d| d.is_none())
            .unwrap_or(false),
        "the agent's countdown ended too"
    );

    // Settings: a wrong password, then the right one (9008 at server A).
    screen.keys(&["s"]);
    screen
        .wait("the password page", 10, |s| {
            s.contains("Administrator password")
        })
        .await;
    screen.text("wrong");
    screen.keys(&["Enter"]);
    screen
        .wait("the refusal", 10, |s| {
            s.contains("Refused: wrong user or password")
        })
        .await;
    screen.text("admin");
    screen.keys(&["Enter"]);
    screen
        .wait("the settings", 10, |s| {
            s.contains("Server address") && s.contains("Apply network")
        })
        .await;

    // Point it at server B: address, port, test, apply.
    screen.keys(&["BSpace"; 20]);
    screen.text("127.0.0.1");
    screen.keys(&["Down"]);
    screen.keys(&["BSpace"; 8]);
    screen.text(&b.addr.port().to_string());
    screen.keys(&["Down", "Enter"]);
    screen
        .wait("the port test", 10, |s| {
            s.contains(&format!("127.0.0.1:{} answers", b.addr.port()))
        })
        .await;
    let mut evb = b.server.registry.events.subscribe();
    screen.keys(&["Down", "Enter"]);
    wait_event(&mut evb, 30, is_login(mac)).await;
    screen
        .wait("the new server shown", 10, |s| {
            s.contains("Now connecting to 127.0.0.1")
        })
        .await;
    screen.keys(&["Escape"]);
    screen
        .wait("the menu on server B", 15, |s| {
            s.contains(&format!("Server 127.0.0.1:{}: connected", b.addr.port()))
        })
        .await;
    assert_eq!(agent.server_addr(), format!("127.0.0.1:{}", b.addr.port()));

    // Server B goes away: the screen says so, and since when.
    b.stop().await;
    let offline = screen
        .wait("the offline state", 30, |s| {
            s.contains("cannot be reached since")
        })
        .await;
    assert!(
        offline.contains("Math lab"),
        "the local desktops are still listed: {offline}"
    );
    save("terminal-screen-offline.txt", &offline);
    println!("{offline}");

    drop(screen);
    agent.shutdown.cancel();
    let _ = task.await;
    a.stop().await;
}

/// Issue 37.7: what the screen tells the person at the terminal. A coming
/// shutdown (1901) at the top with a live countdown; while the room is
/// numbered (1011), the proposed number, which Enter takes (9009); and a
/// group's levels listed once, however many entries the group has.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_screen_warns_of_a_shutdown_numbers_the_terminal_and_lists_levels_once() {
    let test = "the_screen_warns_of_a_shutdown_numbers_the_terminal_and_lists_levels_once";
    if !has(test, &[TMUX]) {
        return;
    }
    init_log();
    let dir = tempfile::tempdir().expect("tmp");
    let h = start_server(&dir.path().join("s")).await;
    let lib = h.server.images.dir().to_path_buf();
    make_base(&lib.join(format!("voi_0_{U}")), 2);
    make_diff(&lib, &format!("voi_1_{U}"), &format!("voi_0_{U}"), 1, 5);
    h.server.scan_library().await.expect("scan");
    let env = api(&h)
        .put(
            "/api/v1/desktop_groups",
            // With what a rogue server would add (issue 38.12): a title,
            // a clear and a jump to row 5. The screen draws it as text.
            &layer_group(
                "Math lab\u{1b}]0;PWNED\u{7}\u{1b}[2J\u{1b}[5;1HFAKE",
                G,
                U,
                &[0, 1],
            ),
        )
        .await
        .expect("group");
    assert_eq!(env.code, 0, "{env:?}");
    let mac = "AA:00:00:00:24:02";
    let acfg = agent_config(&dir.path().join("agent"), h.addr.port(), mac);
    let socket = acfg.control_socket_path();
    let (agent, task) = start_agent(acfg);
    for l in 0..2 {
        wait_for("both levels", 60, || {
            seeding(&agent, &format!("voi_{l}_{U}"))
        })
        .await;
    }
    let screen = Tmux::start(&format!(
        "{} screen --socket {}",
        env!("CARGO_BIN_EXE_voi-agent"),
        socket.display()
    ));
    let s = screen
        .wait("the group ready", 20, |s| {
            s.contains("Math lab") && s.contains("ready")
        })
        .await;
    let row = s
        .lines()
        .find(|l| l.contains("Math lab"))
        .unwrap_or_default();
    assert!(
        row.contains("0,1") && !row.contains("0,1,0"),
        "levels once: {row}"
    );
    assert!(
        !s.lines().any(|l| l.starts_with("FAKE")),
        "an escape sequence moved the cursor:\n{s}"
    );
    assert_ne!(screen.title(), "PWNED", "an escape sequence set the title");

    // 1901, 90 s ahead: at the top, counting down.
    let env = api(&h)
        .push(
            mac,
            "voi_power_notice",
            serde_json::json!({"action": "shutdown", "in_secs": 90, "reason": "class schedule (301 17:30)"}),
            10,
        )
        .await
        .expect("1901");
    assert!(env.is_ok(), "{env:?}");
    let left = |s: &str| -> Option<u64> {
        let rest = s.split("will shut down in ").nth(1)?;
        let (m, rest) = rest.split_once(':')?;
        Some(m.trim().parse::<u64>().ok()? * 60 + rest.get(..2)?.parse::<u64>().ok()?)
    };
    let first = screen
        .wait("the shutdown warning", 10, |s| left(s).is_some())
        .await;
    assert!(first.contains("class schedule (301 17:30)"), "{first}");
    assert!(
        first
            .lines()
            .take(3)
            .any(|l| l.contains("will shut down in")),
        "the warning is at the top:\n{first}"
    );
    let n1 = left(&first).expect("seconds");
    assert!((80..=90).contains(&n1), "{first}");
    screen
        .wait("the warning to count down", 10, |s| {
            left(s).is_some_and(|n| n < n1)
        })
        .await;

    // Numbering: the proposed number is shown, and Enter takes it.
    let env = api(&h)
        .post(
            "/api/v1/order",
            &serde_json::json!({"start_id": 12, "macs": [mac]}),
        )
        .await
        .expect("order");
    assert_eq!(env.code, 0, "{env:?}");
    screen
        .wait("the proposed number", 20, |s| {
            s.contains("press Enter to make this terminal number 12")
        })
        .await;
    screen.keys(&["Enter"]);
    let s = screen
        .wait("the number taken", 20, |s| s.contains("No. 12"))
        .await;
    assert!(
        !s.contains("press Enter to make this terminal number"),
        "{s}"
    );
    assert_eq!(agent.state.read(|st| st.terminal.terminal_id), 12);
    let record = h.server.store.terminal(mac).ok().flatten().expect("record");
    assert_eq!(
        record.config.terminal_id, 12,
        "the server has the confirmation"
    );
    agent.shutdown.cancel();
    let _ = task.await;
    h.stop().await;
}
