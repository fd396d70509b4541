//! What the terminal's screen shows and does, as plain data: the agent's
//! answers in, lines and actions out. No terminal here, so every state and
//! key is a unit test (STATE.md has the pages and their keys).

use serde_json::Value;

use crate::agent::control_socket::ControlRequest;
use crate::agent::local_admin::NetworkRequest;
use crate::disk::LayerName;

/// A key, as the screen understands it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Up,
    Down,
    Enter,
    Esc,
    Tab,
    Backspace,
    Char(char),
    Other,
}

/// What the screen asks the agent for, and why (so the answer finds its
/// place).
#[derive(Debug, Clone, PartialEq)]
pub enum Ask {
    Verify,
    Boot,
    Stop,
    CancelAutoBoot,
    TestServer,
    SetServer,
    SetNetwork,
    Logs,
    ConfirmNumber,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Call(Ask, ControlRequest),
    Quit,
}

/// The settings page's rows.
pub const ROWS: [&str; 12] = [
    "Server address",
    "Server port",
    "Test connection",
    "Apply server",
    "Address by DHCP",
    "IP",
    "Mask",
    "Gateway",
    "DNS 1",
    "DNS 2",
    "Apply network",
    "Show log",
];
const EDITABLE: [usize; 7] = [0, 1, 5, 6, 7, 8, 9];
const DHCP_ROW: usize = 4;

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub values: [String; 12],
    pub dhcp: bool,
    pub focus: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Page {
    Menu,
    Password { input: String, error: String },
    Settings(Box<Settings>),
    Logs,
}

/// The state of one desktop group, in words a teacher reads.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRow {
    pub uuid: String,
    pub name: String,
    pub default: bool,
    pub levels: String,
    pub state: String,
    /// (fraction done, bytes/s) while downloading.
    pub progress: Option<(f64, u64)>,
    pub bootable: bool,
}

pub struct Model {
    pub page: Page,
    pub selected: usize,
    pub status: Option<Value>,
    pub disks: Option<Value>,
    /// The agent cannot be reached over its socket.
    pub agent_error: Option<String>,
    pub logs: Vec<String>,
    pub message: String,
    /// The guest was running at the last look (for "it is off now").
    pub guest_was_on: bool,
    pub countdown_stopped: bool,
    /// The runtime's state at the last look: messages follow its changes.
    pub last_state: String,
}

/// `text` without control characters (escape sequences lose their ESC
/// and show as plain text; a newline becomes a space).
pub fn printable(text: &str) -> String {
    text.chars()
        .filter_map(|c| match c {
            '\n' | '\r' | '\t' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

/// Every string in `v`, keys included, made `printable`.
pub fn printable_json(v: &mut Value) {
    match v {
        Value::String(s) if s.chars().any(char::is_control) => *s = printable(s),
        Value::Array(a) => a.iter_mut().for_each(printable_json),
        Value::Object(o) => {
            if o.keys().any(|k| k.chars().any(char::is_control)) {
                let old = std::mem::take(o);
                for (k, mut x) in old {
                    printable_json(&mut x);
                    o.insert(printable(&k), x);
                }
            } else {
                o.values_mut().for_each(printable_json);
            }
        }
        _ => {}
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(x) => x.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub fn human_rate(bps: u64) -> String {
    if bps >= 1 << 20 {
        format!("{:.1} MiB/s", bps as f64 / f64::from(1 << 20))
    } else {
        format!("{} KiB/s", bps >> 10)
    }
}

impl Default for Model {
    fn default() -> Self {
        Self::new()
    }
}

impl Model {
    pub fn new() -> Self {
        Model {
            page: Page::Menu,
            selected: 0,
            status: None,
            disks: None,
            agent_error: None,
            logs: Vec::new(),
            message: String::new(),
            guest_was_on: false,
            countdown_stopped: false,
            last_state: String::new(),
        }
    }

    /// The warning of a coming shutdown or restart (1901), with a live
    /// countdown, for the top of every page.
    pub fn power_notice_line(&self) -> Option<String> {
        let n = &self.st("live")["power_notice"];
        let at = n["at_ms"].as_u64()?;
        let now = self.st("now_ms").as_u64().unwrap_or(0);
        let what = if s(&n["action"]) == "restart" {
            "restart"
        } else {
            "shut down"
        };
        let reason = s(&n["reason"]);
        let why = if reason.is_empty() {
            String::new()
        } else {
            format!(" ({reason})")
        };
        if at > now {
            let left = (at - now).div_ceil(1000);
            Some(format!(
                "This terminal will {what} in {}:{:02}{why}. Save your work.",
                left / 60,
                left % 60
            ))
        } else if now - at < 120_000 {
            Some(format!("This terminal will {what} now{why}."))
        } else {
            None
        }
    }

    /// Why the desktop runs on TCG though KVM was asked for, while it runs.
    pub fn accel_note(&self) -> Option<String> {
        let note = s(&self.st("desktop")["accel_note"]);
        (!note.is_empty() && self.guest_on()).then_some(note)
    }

    /// The number 1011 proposed for this terminal, until it is confirmed.
    pub fn proposed_number(&self) -> Option<i64> {
        self.st("pending_order")["terminal_id"].as_i64()
    }

    fn st(&self, key: &str) -> Value {
        self.status
            .as_ref()
            .map(|v| v[key].clone())
            .unwrap_or(Value::Null)
    }

    pub fn maintenance(&self) -> bool {
        self.st("client_type").as_u64() == Some(5)
    }

    pub fn countdown(&self) -> Option<u64> {
        self.st("countdown_secs").as_u64()
    }

    pub fn desktop_state(&self) -> String {
        s(&self.st("desktop")["state"])
    }

    pub fn guest_on(&self) -> bool {
        matches!(
            self.desktop_state().as_str(),
            "preparing" | "starting" | "running" | "stopping"
        )
    }

    /// The server line: connected, waiting for an operator, or not
    /// reachable since when.
    pub fn server_line(&self) -> String {
        let live = self.st("live");
        let server = s(&self.st("server"));
        let tls = if self.st("tls") == true { ", TLS" } else { "" };
        let session = s(&live["session"]);
        if session.starts_with("logged_in") {
            if live["pending_admission"] == true {
                format!("Server {server}{tls}: connected, waiting for an operator to accept this terminal")
            } else {
                format!("Server {server}{tls}: connected")
            }
        } else if let Some(since) = live["unreachable_since"].as_str() {
            let at = since.get(11..19).unwrap_or(since);
            let why = s(&live["last_error"]);
            format!(
                "Server {server}: cannot be reached since {at}.\nDesktops on this terminal still start. Check the cable, or the server address in Settings (s). ({why})"
            )
        } else {
            format!("Server {server}: {session}")
        }
    }

    /// Every desktop group with its state.
    pub fn groups(&self) -> Vec<GroupRow> {
        let groups = self.st("groups");
        let empty = Vec::new();
        let chains = self
            .disks
            .as_ref()
            .and_then(|d| d["chains"].as_array())
            .unwrap_or(&empty);
        let transfers = self.st("transfers");
        let transfers = transfers.as_array().unwrap_or(&empty);
        let refused = self.st("refused");
        let refused = refused.as_array().unwrap_or(&empty);
        let desktop = self.st("desktop");
        let mut out = Vec::new();
        for g in groups.as_array().unwrap_or(&empty) {
            let uuid = s(&g["uuid"]);
            // A group lists one entry per level of a disk: each chain once.
            let mut seen_chains = std::collections::BTreeSet::new();
            let mut levels: Vec<i64> = Vec::new();
            let mut complete = true;
            let mut wanted_top = true;
            let mut uuids = Vec::new();
            let mut has_system = false;
            for d in g["disks"].as_array().unwrap_or(&empty) {
                let disk = s(&d["uuid"]);
                uuids.push(disk.clone());
                if d["type"].as_i64() != Some(0) {
                    continue;
                }
                has_system = true;
                let want = d["level"].as_i64().unwrap_or(0);
                match chains.iter().find(|c| s(&c["uuid"]) == disk) {
                    Some(c) if !seen_chains.insert(disk.clone()) => {
                        wanted_top &= c["layers"]
                            .as_array()
                            .unwrap_or(&empty)
                            .iter()
                            .filter_map(|l| LayerName::parse(&s(l)).ok())
                            .map(|n| i64::from(n.level))
                            .any(|l| l >= want);
                    }
                    Some(c) => {
                        let have: Vec<i64> = c["layers"]
                            .as_array()
                            .unwrap_or(&empty)
                            .iter()
                            .filter_map(|l| LayerName::parse(&s(l)).ok())
                            .map(|n| i64::from(n.level))
                            .collect();
                        complete &= c["complete"] == true;
                        wanted_top &= have.iter().max().copied().unwrap_or(-1) >= want;
                        levels.extend(have.iter().copied());
                    }
                    None => complete = false,
                }
            }
            levels.sort_unstable();
            levels.dedup();
            let mine = |layer: &str| uuids.iter().any(|u| layer.ends_with(u.as_str()));
            let failed = refused
                .iter()
                .find(|r| mine(&s(&r["layer"])))
                .map(|r| s(&r["reason"]))
                .or_else(|| {
                    transfers
                        .iter()
                        .find(|t| mine(&s(&t["layer"])) && t["phase"] == "error")
                        .map(|t| s(&t["error"]))
                });
            let moving = transfers.iter().find(|t| {
                mine(&s(&t["layer"])) && t["kind"] == "download" && t["stage"] == "downloading"
            });
            let running = s(&desktop["group_uuid"]) == uuid && self.guest_on();
            let mut progress = None;
            let state = if running {
                self.desktop_state()
            } else if let Some(why) = failed {
                format!("failed: {why}")
            } else if let Some(t) = moving {
                let have = t["have_bytes"].as_u64().unwrap_or(0);
                let len = t["length"].as_u64().unwrap_or(0).max(1);
                let bps = t["down_bps"].as_u64().unwrap_or(0);
                progress = Some((have as f64 / len as f64, bps));
                if t["phase"] == "checking" {
                    "verifying".to_string()
                } else {
                    format!(
                        "downloading {}% at {}",
                        (have * 100 / len).min(100),
                        human_rate(bps)
                    )
                }
            } else if complete && has_system && wanted_top {
                "ready".to_string()
            } else if complete && has_system {
                "ready (an update is on its way)".to_string()
            } else {
                "not on this terminal yet".to_string()
            };
            // A newer layer arrived while this desktop runs: it is used at
            // the next boot.
            let state = if running {
                // The server's levels only: the guest's own user layer
                // (4, 5) is above any of them.
                let server_level = |l: &i64| *l <= 2;
                let in_use = desktop["in_use"].as_array().cloned().unwrap_or_default();
                let newest_in_use = in_use
                    .iter()
                    .filter_map(|l| LayerName::parse(&s(l)).ok())
                    .map(|n| i64::from(n.level))
                    .filter(server_level)
                    .max();
                let newest_here = levels.iter().copied().filter(server_level).max();
                if newest_here > newest_in_use && newest_in_use.is_some() {
                    "running; update ready at next boot".to_string()
                } else {
                    state
                }
            } else {
                state
            };
            out.push(GroupRow {
                uuid,
                name: s(&g["name"]),
                default: g["default"] == true,
                levels: if levels.is_empty() {
                    "-".into()
                } else {
                    levels
                        .iter()
                        .map(|l| l.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                },
                bootable: complete && has_system,
                state,
                progress,
            });
        }
        out
    }

    /// In maintenance mode (client_type 5) the screen shows what is being
    /// prepared: each transfer with its progress.
    pub fn maintenance_rows(&self) -> Vec<GroupRow> {
        let transfers = self.st("transfers");
        let empty = Vec::new();
        transfers
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|t| {
                let have = t["have_bytes"].as_u64().unwrap_or(0);
                let len = t["length"].as_u64().unwrap_or(0).max(1);
                let bps = t["down_bps"].as_u64().unwrap_or(0);
                let (state, progress) = match (s(&t["stage"]).as_str(), s(&t["phase"]).as_str()) {
                    (_, "error") => (format!("failed: {}", s(&t["error"])), None),
                    ("seeding", _) => ("done".to_string(), None),
                    (_, "checking") => (
                        "verifying".to_string(),
                        Some((have as f64 / len as f64, bps)),
                    ),
                    _ => (
                        format!(
                            "{} {}% at {}",
                            s(&t["kind"]),
                            (have * 100 / len).min(100),
                            human_rate(bps)
                        ),
                        Some((have as f64 / len as f64, bps)),
                    ),
                };
                GroupRow {
                    uuid: String::new(),
                    name: s(&t["layer"]),
                    default: false,
                    levels: "-".into(),
                    state,
                    progress,
                    bootable: false,
                }
            })
            .collect()
    }

    fn settings_from_status(&self) -> Settings {
        let server = s(&self.st("server"));
        let (host, port) = match server.rsplit_once(':') {
            Some((h, p)) => (h.trim_matches(['[', ']']).to_string(), p.to_string()),
            None => (server, "50007".into()),
        };
        let net = self.st("network");
        let mut values: [String; 12] = Default::default();
        values[0] = host;
        values[1] = port;
        values[5] = s(&net["address"]);
        values[6] = net["prefix_len"]
            .as_u64()
            .map(|p| std::net::Ipv4Addr::from(crate::ipv4::mask_of(p as u8)).to_string())
            .unwrap_or_else(|| "255.255.255.0".into());
        values[7] = s(&net["gateway"]);
        let dns = net["dns"].as_array().cloned().unwrap_or_default();
        values[8] = dns.first().map(s).unwrap_or_default();
        values[9] = dns.get(1).map(s).unwrap_or_default();
        Settings {
            values,
            dhcp: self.st("is_dhcp") != false,
            focus: 0,
            message: "Up/Down: move, type to edit, Enter: do, Esc: back".into(),
        }
    }

    /// A key; what the agent must be asked, if anything.
    pub fn on_key(&mut self, key: Key) -> Vec<Action> {
        let mut out = Vec::new();
        if self.countdown().is_some() && !self.countdown_stopped {
            // Any key stops the countdown, and does nothing else.
            self.countdown_stopped = true;
            self.message = "Automatic start stopped. Pick a desktop.".into();
            out.push(Action::Call(
                Ask::CancelAutoBoot,
                ControlRequest::CancelAutoBoot,
            ));
            return out;
        }
        match &mut self.page {
            Page::Menu => {
                if self.guest_was_on && !self.guest_on() {
                    // The guest is off: a key brings the menu back.
                    self.guest_was_on = false;
                    self.message.clear();
                    return out;
                }
                let n = self.groups().len();
                if let (Key::Enter, Some(number)) = (&key, self.proposed_number()) {
                    // Numbering the room (1011): Enter takes the number
                    // shown, as the vendor's terminal does (9009).
                    self.message = format!("Taking number {number}…");
                    out.push(Action::Call(
                        Ask::ConfirmNumber,
                        ControlRequest::OrderConfirm {
                            terminal_id: number,
                        },
                    ));
                    return out;
                }
                match key {
                    Key::Up => self.selected = self.selected.saturating_sub(1),
                    Key::Down if n > 0 => self.selected = (self.selected + 1).min(n - 1),
                    Key::Enter if self.maintenance() => {
                        self.message =
                            "Maintenance mode: desktops start once the terminal is back in normal mode."
                                .into()
                    }
                    Key::Enter if self.guest_on() => {
                        self.message = "A desktop is running; press x to stop it.".into()
                    }
                    Key::Enter => match self.groups().get(self.selected) {
                        Some(g) if g.bootable => {
                            self.message = format!("Starting {}…", g.name);
                            out.push(Action::Call(
                                Ask::Boot,
                                ControlRequest::DesktopBoot {
                                    group_uuid: g.uuid.clone(),
                                },
                            ));
                        }
                        Some(g) => self.message = format!("{} cannot start: {}", g.name, g.state),
                        None => self.message = "No desktop on this terminal yet.".into(),
                    },
                    Key::Char('x') if self.guest_on() => {
                        self.message = "Stopping the desktop…".into();
                        out.push(Action::Call(Ask::Stop, ControlRequest::DesktopStop));
                    }
                    Key::Char('s') => {
                        self.page = Page::Password {
                            input: String::new(),
                            error: String::new(),
                        }
                    }
                    Key::Char('q') => out.push(Action::Quit),
                    _ => {}
                }
            }
            Page::Password { input, error } => match key {
                Key::Esc => self.page = Page::Menu,
                Key::Backspace => {
                    input.pop();
                }
                Key::Char(c) if !c.is_control() && input.len() < 64 => input.push(c),
                Key::Enter => {
                    *error = "Checking…".into();
                    out.push(Action::Call(
                        Ask::Verify,
                        ControlRequest::VerifyAdmin {
                            user: "admin".into(),
                            password: input.clone(),
                        },
                    ));
                }
                _ => {}
            },
            Page::Settings(st) => match key {
                Key::Esc => self.page = Page::Menu,
                Key::Up => st.focus = st.focus.saturating_sub(1),
                Key::Down | Key::Tab => st.focus = (st.focus + 1).min(ROWS.len() - 1),
                Key::Backspace if EDITABLE.contains(&st.focus) => {
                    st.values[st.focus].pop();
                }
                Key::Char(' ') if st.focus == DHCP_ROW => st.dhcp = !st.dhcp,
                Key::Char(c)
                    if EDITABLE.contains(&st.focus)
                        && (c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
                        && st.values[st.focus].len() < 64 =>
                {
                    st.values[st.focus].push(c)
                }
                Key::Enter => {
                    let port = st.values[1].trim().parse::<u16>();
                    match (st.focus, port) {
                        (2 | 3, Err(_)) => {
                            st.message = "The port must be a number, 1 to 65535.".into()
                        }
                        (2, Ok(port)) => {
                            st.message = "Testing…".into();
                            out.push(Action::Call(
                                Ask::TestServer,
                                ControlRequest::TestServer {
                                    ip: st.values[0].trim().to_string(),
                                    port,
                                },
                            ));
                        }
                        (3, Ok(port)) => {
                            st.message = "Moving to the new server…".into();
                            out.push(Action::Call(
                                Ask::SetServer,
                                ControlRequest::SetServer {
                                    ip: st.values[0].trim().to_string(),
                                    port,
                                },
                            ));
                        }
                        (DHCP_ROW, _) => st.dhcp = !st.dhcp,
                        (10, _) => {
                            st.message = "Applying the network…".into();
                            out.push(Action::Call(
                                Ask::SetNetwork,
                                ControlRequest::SetNetwork(NetworkRequest {
                                    dhcp: st.dhcp,
                                    ip: st.values[5].trim().to_string(),
                                    mask: st.values[6].trim().to_string(),
                                    gateway: st.values[7].trim().to_string(),
                                    dns1: st.values[8].trim().to_string(),
                                    dns2: st.values[9].trim().to_string(),
                                }),
                            ));
                        }
                        (11, _) => {
                            self.page = Page::Logs;
                            out.push(Action::Call(Ask::Logs, ControlRequest::Logs { lines: 50 }));
                        }
                        _ => {}
                    }
                }
                _ => {}
            },
            Page::Logs => {
                if matches!(key, Key::Esc | Key::Enter | Key::Char('q')) {
                    let st = self.settings_from_status();
                    self.page = Page::Settings(Box::new(st));
                }
            }
        }
        out
    }

    /// The agent's answer to what was asked.
    pub fn on_answer(&mut self, ask: &Ask, result: Result<Value, String>) {
        match (ask, result) {
            (Ask::Verify, Ok(v)) => {
                let mut st = self.settings_from_status();
                if v["by"] == "local" {
                    st.message = "Checked locally: the server cannot be reached.".into();
                }
                self.page = Page::Settings(Box::new(st));
            }
            (Ask::Verify, Err(e)) => {
                if let Page::Password { input, error } = &mut self.page {
                    input.clear();
                    *error = format!("Refused: {e}");
                }
            }
            (Ask::Logs, Ok(v)) => {
                self.logs = v["lines"]
                    .as_array()
                    .map(|l| l.iter().map(s).collect())
                    .unwrap_or_default()
            }
            (Ask::TestServer, Ok(v)) => self.settings_message(s(&v["text"])),
            (Ask::SetServer, Ok(v)) => self.settings_message(format!(
                "Now connecting to {}. If no login succeeds there, the old server comes back.",
                s(&v["server"])
            )),
            (Ask::SetNetwork, Ok(_)) => self.settings_message(
                "Network applied. If the server cannot be reached from it, the old one comes back."
                    .into(),
            ),
            (Ask::Boot | Ask::Stop | Ask::CancelAutoBoot, Ok(_)) => {}
            (Ask::ConfirmNumber, Ok(v)) => {
                self.message = format!("This terminal is number {}.", s(&v["terminal_id"]))
            }
            (Ask::Boot, Err(e)) => self.message = format!("The desktop did not start: {e}"),
            (_, Err(e)) => {
                self.settings_message(format!("Not done: {e}"));
                if matches!(self.page, Page::Menu) {
                    self.message = format!("Not done: {e}");
                }
            }
        }
    }

    fn settings_message(&mut self, text: String) {
        if let Page::Settings(st) = &mut self.page {
            st.message = text;
        }
    }

    /// A fresh status from the agent.
    pub fn on_status(&mut self, status: Result<Value, String>) {
        match status {
            Ok(v) => {
                self.status = Some(v);
                self.agent_error = None;
                // What the screen says of the desktop follows the runtime:
                // a message about an earlier state never outlives it.
                let state = self.desktop_state();
                if state != self.last_state {
                    let about_desktop = self.message.starts_with("Starting")
                        || self.message.starts_with("Stopping")
                        || self.message.starts_with("The desktop")
                        || self.message.starts_with("A desktop is running");
                    match state.as_str() {
                        "off" if self.guest_was_on => {
                            self.message = "The desktop is off. Press any key for the menu.".into()
                        }
                        "failed" => {
                            self.message = format!(
                                "The desktop did not start: {}",
                                s(&self.st("desktop")["reason"])
                            )
                        }
                        _ if about_desktop => self.message.clear(),
                        _ => {}
                    }
                    self.last_state = state;
                }
                if self.guest_on() {
                    self.guest_was_on = true;
                }
                let n = self.groups().len();
                if n > 0 && self.selected >= n {
                    self.selected = n - 1;
                }
            }
            Err(e) => self.agent_error = Some(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_strings_lose_their_control_characters() {
        let mut v = serde_json::json!({
            "groups": [{"name": "Math\u{1b}]0;PWNED\u{7}\u{1b}[2J\u{1b}[5;1HFAKE\nline"}],
            "bad\u{1b}key": 1
        });
        printable_json(&mut v);
        assert_eq!(v["groups"][0]["name"], "Math]0;PWNED[2J[5;1HFAKE line");
        assert_eq!(v["badkey"], 1);
        assert_eq!(printable("ok\u{9b}31m"), "ok31m", "C1 controls too");
    }

    use super::*;
    use serde_json::json;

    const U: &str = "5c0a5b1e-1d7e-4c36-9c43-3f0c7b7b0c01";

    fn model() -> Model {
        let mut m = Model::new();
        m.on_status(Ok(json!({
            "server": "10.0.0.1:50007", "tls": false, "client_type": 2,
            "live": {"session": "logged_in"},
            "groups": [{"uuid": "g1", "name": "Math", "default": true,
                        "disks": [{"uuid": U, "type": 0, "level": 1}]}],
            "transfers": [{"layer": format!("voi_1_{U}"), "kind": "download", "stage": "downloading",
                           "phase": "downloading", "have_bytes": 512, "length": 1024, "down_bps": 2048}],
            "refused": [], "desktop": {"state": "off"}, "is_dhcp": true,
        })));
        m.disks = Some(
            json!({"chains": [{"uuid": U, "layers": [format!("voi_0_{U}")], "complete": true}]}),
        );
        m
    }

    /// A group of levels 0 and 1 (two entries of one disk), both here,
    /// the desktop in `state` with `in_use` open.
    fn running(state: &str, in_use: &[&str]) -> Model {
        let mut m = Model::new();
        let status = |state: &str| {
            json!({
                "server": "10.0.0.1:50007", "live": {"session": "logged_in"},
                "groups": [{"uuid": "g1", "name": "Math", "default": true,
                            "disks": [{"uuid": U, "type": 0, "level": 0}, {"uuid": U, "type": 0, "level": 1}]}],
                "transfers": [], "refused": [],
                "desktop": {"state": state, "group_uuid": "g1", "reason": "QEMU exited with 1",
                            "in_use": in_use.iter().map(|l| format!("voi_{l}_{U}")).collect::<Vec<_>>()},
            })
        };
        m.disks = Some(json!({"chains": [{"uuid": U, "complete": true,
            "layers": [format!("voi_0_{U}"), format!("voi_1_{U}"), format!("voi_4_{U}")]}]}));
        m.on_status(Ok(status("off")));
        m.on_status(Ok(status(state)));
        m
    }

    #[test]
    fn levels_are_listed_once_and_an_update_shows_while_the_old_chain_runs() {
        let m = running("running", &["0", "4"]);
        let g = &m.groups()[0];
        assert_eq!(g.levels, "0,1,4");
        assert_eq!(g.state, "running; update ready at next boot");
        let m = running("running", &["0", "1", "4"]);
        assert_eq!(m.groups()[0].state, "running");
    }

    #[test]
    fn what_the_screen_says_of_the_desktop_follows_the_runtime() {
        let mut m = running("off", &[]);
        m.selected = 0;
        let a = m.on_key(Key::Enter);
        assert!(matches!(a.as_slice(), [Action::Call(Ask::Boot, _)]));
        assert!(m.message.starts_with("Starting"));
        // It runs: "Starting …" goes.
        let mut st = m.status.clone().expect("status");
        st["desktop"]["state"] = json!("running");
        m.on_status(Ok(st.clone()));
        assert_eq!(m.message, "");
        // It went off: said so, and only then.
        st["desktop"]["state"] = json!("off");
        m.on_status(Ok(st.clone()));
        assert!(m.message.starts_with("The desktop is off"));
        // Booted again from elsewhere (auto-boot, ctl): "off" goes.
        st["desktop"]["state"] = json!("running");
        m.on_status(Ok(st.clone()));
        assert_eq!(m.message, "");
        st["desktop"]["state"] = json!("failed");
        m.on_status(Ok(st));
        assert_eq!(m.message, "The desktop did not start: QEMU exited with 1");
    }

    #[test]
    fn a_coming_shutdown_counts_down_and_a_proposed_number_takes_enter() {
        let mut m = model();
        if let Some(st) = m.status.as_mut() {
            st["now_ms"] = json!(1_000_000);
            st["live"]["power_notice"] = json!({"action": "shutdown", "reason": "class schedule (301 17:30)", "at_ms": 1_090_000});
        }
        assert_eq!(
            m.power_notice_line().as_deref(),
            Some("This terminal will shut down in 1:30 (class schedule (301 17:30)). Save your work.")
        );
        if let Some(st) = m.status.as_mut() {
            st["now_ms"] = json!(1_061_500);
        }
        assert!(m.power_notice_line().is_some_and(|l| l.contains("in 0:29")));
        assert_eq!(m.proposed_number(), None);
        if let Some(st) = m.status.as_mut() {
            st["pending_order"] = json!({"batch_no": 7, "terminal_id": 12});
        }
        let a = m.on_key(Key::Enter);
        assert!(
            matches!(
                a.as_slice(),
                [Action::Call(
                    Ask::ConfirmNumber,
                    ControlRequest::OrderConfirm { terminal_id: 12 }
                )]
            ),
            "{a:?}"
        );
    }

    #[test]
    fn a_download_shows_its_share_and_rate() {
        let g = &model().groups()[0];
        assert_eq!(g.state, "downloading 50% at 2 KiB/s");
        assert_eq!(g.progress, Some((0.5, 2048)));
        assert_eq!(g.levels, "0");
    }

    #[test]
    fn a_refused_layer_says_why() {
        let mut m = model();
        if let Some(st) = m.status.as_mut() {
            st["refused"] =
                json!([{"layer": format!("voi_1_{U}"), "reason": "manifest signature"}]);
        }
        assert_eq!(m.groups()[0].state, "failed: manifest signature");
    }

    #[test]
    fn any_key_stops_the_countdown_first() {
        let mut m = model();
        if let Some(st) = m.status.as_mut() {
            st["countdown_secs"] = json!(9);
        }
        let a = m.on_key(Key::Enter);
        assert_eq!(
            a,
            vec![Action::Call(
                Ask::CancelAutoBoot,
                ControlRequest::CancelAutoBoot
            )]
        );
        // The next Enter boots (the chain is complete but short of level 1:
        // not bootable? It is: level 0 is a complete chain).
        let a = m.on_key(Key::Enter);
        assert!(
            matches!(a.as_slice(), [Action::Call(Ask::Boot, _)]),
            "{a:?}"
        );
    }

    #[test]
    fn settings_need_the_password_and_edit_only_safe_characters() {
        let mut m = model();
        m.on_key(Key::Char('s'));
        for c in "bad".chars() {
            m.on_key(Key::Char(c));
        }
        let a = m.on_key(Key::Enter);
        assert!(
            matches!(a.as_slice(), [Action::Call(Ask::Verify, ControlRequest::VerifyAdmin { password, .. })] if password == "bad")
        );
        m.on_answer(&Ask::Verify, Err("wrong".into()));
        assert!(
            matches!(&m.page, Page::Password { error, input } if error.contains("Refused") && input.is_empty())
        );
        m.on_answer(&Ask::Verify, Ok(json!({"verified": true, "by": "server"})));
        let Page::Settings(st) = &m.page else {
            panic!("settings open")
        };
        assert_eq!(st.values[0], "10.0.0.1");
        assert_eq!(st.values[1], "50007");
        for _ in 0..20 {
            m.on_key(Key::Backspace);
        }
        for c in "10.0.0.9; rm -rf /".chars() {
            m.on_key(Key::Char(c));
        }
        let Page::Settings(st) = &m.page else {
            panic!("settings")
        };
        assert_eq!(st.values[0], "10.0.0.9rm-rf", "no ';', ' ' or '/'");
    }

    #[test]
    fn maintenance_mode_lists_transfers_not_desktops() {
        let mut m = model();
        if let Some(st) = m.status.as_mut() {
            st["client_type"] = json!(5);
        }
        assert!(m.maintenance());
        let rows = m.maintenance_rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].name, format!("voi_1_{U}"));
        assert_eq!(rows[0].state, "download 50% at 2 KiB/s");
    }

    #[test]
    fn offline_says_since_when_and_what_to_do() {
        let mut m = model();
        if let Some(st) = m.status.as_mut() {
            st["live"] = json!({"session": "waiting 300 ms to reconnect",
                "unreachable_since": "2026-12-02T18:40:12+00:00", "last_error": "Connection refused"});
        }
        let line = m.server_line();
        assert!(line.contains("cannot be reached since 18:40:12"), "{line}");
        assert!(line.contains("still start"), "{line}");
    }
}
