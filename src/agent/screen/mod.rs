//! `voi-agent screen`: the terminal's own full-screen menu, on its console.
//! It is a separate process that only talks to the running agent over the
//! control socket, so it can never block or take down the agent; a crash
//! of the screen leaves the agent running (systemd starts the screen again,
//! `systemd/voi-screen.service`).
//!
//! * `model`: what is shown and what a key does (pure, unit-tested);
//! * `view`: drawing with ratatui;
//! * this file: the terminal, the keys, and the calls to the agent.

pub mod model;
mod view;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};

use crate::agent::control_socket::{self, ControlRequest};
use model::{Action, Key, Model};

/// How long one call to the agent may take before the screen says it is
/// not answering.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

fn key_of(code: KeyCode) -> Key {
    match code {
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Tab => Key::Tab,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Char(c) => Key::Char(c),
        _ => Key::Other,
    }
}

/// Everything the screen draws comes through here, and leaves without
/// control characters: a group name, a reason or a message from a (rogue)
/// server could otherwise set the window title, clear the screen or draw
/// anywhere (issue 38.12).
async fn call(socket: &Path, req: &ControlRequest) -> Result<serde_json::Value, String> {
    let r = match tokio::time::timeout(CALL_TIMEOUT, control_socket::call(socket, req)).await {
        Ok(Ok(resp)) if resp.ok => Ok(resp.data.unwrap_or(serde_json::Value::Null)),
        Ok(Ok(resp)) => Err(resp.error.unwrap_or_else(|| "refused".into())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 2 s".into()),
    };
    match r {
        Ok(mut v) => {
            model::printable_json(&mut v);
            Ok(v)
        }
        Err(e) => Err(model::printable(&e)),
    }
}

pub fn run(socket: PathBuf) -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("voi-agent screen: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // ratatui::init restores the terminal on a panic too.
    let mut terminal = ratatui::init();
    let mut m = Model::new();
    let mut last_status = Instant::now() - Duration::from_secs(10);
    let mut last_disks = Instant::now() - Duration::from_secs(10);
    let result = loop {
        if last_status.elapsed() >= Duration::from_millis(500) {
            last_status = Instant::now();
            m.on_status(rt.block_on(call(&socket, &ControlRequest::Screen)));
        }
        if last_disks.elapsed() >= Duration::from_secs(3) {
            last_disks = Instant::now();
            if let Ok(d) = rt.block_on(call(&socket, &ControlRequest::Disks)) {
                m.disks = Some(d);
            }
        }
        if let Err(e) = terminal.draw(|f| view::draw(f, &m)) {
            break Err(e);
        }
        match event::poll(Duration::from_millis(200)) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => break Err(e),
        }
        let ev = match event::read() {
            Ok(ev) => ev,
            Err(e) => break Err(e),
        };
        let Event::Key(k) = ev else { continue };
        if k.kind != KeyEventKind::Press {
            continue;
        }
        let mut quit = false;
        for action in m.on_key(key_of(k.code)) {
            match action {
                Action::Quit => quit = true,
                Action::Call(ask, req) => {
                    let r = rt.block_on(call(&socket, &req));
                    m.on_answer(&ask, r);
                    // Show the change at once.
                    last_status = Instant::now() - Duration::from_secs(1);
                }
            }
        }
        if quit {
            break Ok(());
        }
    };
    ratatui::restore();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("voi-agent screen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
