//! Draws the model with ratatui: a header with who and where this terminal
//! is, the server line, then the page.

use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Gauge, Paragraph, Row, Table, Wrap};
use ratatui::Frame;

use super::model::{Model, Page, ROWS};

fn field(m: &Model, key: &str) -> String {
    m.status
        .as_ref()
        .map(|v| match &v[key] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        })
        .unwrap_or_default()
}

pub fn draw(f: &mut Frame, m: &Model) {
    // What the person at the terminal must see first: a coming shutdown
    // with its countdown, and a number to take while the room is numbered.
    let mut banner: Vec<Line> = Vec::new();
    if let Some(notice) = m.power_notice_line() {
        banner.push(Line::from(Span::styled(
            notice,
            Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED),
        )));
    }
    if let Some(n) = m.proposed_number() {
        banner.push(Line::from(Span::styled(
            format!("Numbering the room: press Enter to make this terminal number {n}."),
            Style::default().add_modifier(Modifier::BOLD),
        )));
    }
    let area = f.area();
    let [top, head, server, body, foot] = Layout::vertical([
        Constraint::Length(u16::try_from(banner.len()).unwrap_or(0)),
        Constraint::Length(3),
        Constraint::Length(4),
        Constraint::Min(6),
        Constraint::Length(2),
    ])
    .areas(area);
    if !banner.is_empty() {
        f.render_widget(Paragraph::new(banner), top);
    }
    let number = match field(m, "terminal_id").as_str() {
        "" | "-1" => "no number".to_string(),
        n => format!("No. {n}"),
    };
    let title = if m.maintenance() {
        " voi-agent: maintenance mode "
    } else {
        " voi-agent "
    };
    let who = format!(
        "{}  {}  MAC {}  IP {}  version {}",
        match field(m, "name").as_str() {
            "" => "(no name)".to_string(),
            n => n.to_string(),
        },
        number,
        field(m, "mac"),
        field(m, "ip"),
        field(m, "version"),
    );
    f.render_widget(
        Paragraph::new(who).block(Block::default().borders(Borders::ALL).title(title)),
        head,
    );
    let server_text = match &m.agent_error {
        Some(e) => {
            format!("The agent is not answering ({e}). It restarts by itself; wait a moment.")
        }
        None => m.server_line(),
    };
    f.render_widget(
        Paragraph::new(server_text)
            .wrap(Wrap { trim: true })
            .block(Block::default().borders(Borders::ALL).title(" Server ")),
        server,
    );
    match &m.page {
        Page::Menu => menu(f, m, body),
        Page::Password { input, error } => {
            let text = vec![
                Line::from("Settings are for the administrator."),
                Line::from(format!("Password: {}", "*".repeat(input.chars().count()))),
                Line::from(error.clone()),
            ];
            f.render_widget(
                Paragraph::new(text).block(
                    Block::default()
                        .borders(Borders::ALL)
                        .title(" Administrator password (Enter: check, Esc: back) "),
                ),
                body,
            );
        }
        Page::Settings(st) => {
            let rows = ROWS.iter().enumerate().map(|(i, label)| {
                let value = match i {
                    2 | 3 | 10 | 11 => "[ press Enter ]".to_string(),
                    4 => if st.dhcp {
                        "yes (Space to change)"
                    } else {
                        "no: static (Space to change)"
                    }
                    .to_string(),
                    _ => st.values[i].clone(),
                };
                let style = if i == st.focus {
                    Style::default().add_modifier(Modifier::REVERSED)
                } else {
                    Style::default()
                };
                Row::new(vec![Cell::from(*label), Cell::from(value)]).style(style)
            });
            let [table, msg] =
                Layout::vertical([Constraint::Min(4), Constraint::Length(2)]).areas(body);
            f.render_widget(
                Table::new(rows, [Constraint::Length(18), Constraint::Min(20)]).block(
                    Block::default()
                        .borders(Borders::ALL)
                        .title(" Settings (Esc: back) "),
                ),
                table,
            );
            f.render_widget(
                Paragraph::new(st.message.clone()).wrap(Wrap { trim: true }),
                msg,
            );
        }
        Page::Logs => {
            let lines: Vec<Line> = m.logs.iter().map(|l| Line::from(l.as_str())).collect();
            let height = body.height.saturating_sub(2) as usize;
            let skip = lines.len().saturating_sub(height);
            f.render_widget(
                Paragraph::new(lines.into_iter().skip(skip).collect::<Vec<_>>()).block(
                    Block::default()
                        .borders(Borders::ALL)
                        .title(" Last 50 log lines (Esc: back) "),
                ),
                body,
            );
        }
    }
    let keys = match &m.page {
        Page::Menu if m.guest_on() => "x: stop the desktop   s: settings",
        Page::Menu => "Up/Down: pick   Enter: start   s: settings",
        _ => "",
    };
    f.render_widget(
        Paragraph::new(vec![Line::from(m.message.clone()), Line::from(keys)]),
        foot,
    );
}

fn menu(f: &mut Frame, m: &Model, body: ratatui::layout::Rect) {
    let groups = if m.maintenance() {
        m.maintenance_rows()
    } else {
        m.groups()
    };
    let mut lines: Vec<Line> = Vec::new();
    if let Some(secs) = m.countdown().filter(|_| !m.countdown_stopped) {
        let name = groups
            .iter()
            .find(|g| g.default)
            .or(groups.first())
            .map(|g| g.name.clone())
            .unwrap_or_default();
        lines.push(Line::from(Span::styled(
            format!("Starting {name} in {secs} s. Press any key to choose yourself."),
            Style::default().add_modifier(Modifier::BOLD),
        )));
    }
    if m.maintenance() {
        lines.push(Line::from(
            "Maintenance mode: this terminal is being prepared. It restarts into its desktops when done.",
        ));
    }
    // KVM failed here: the desktop runs on TCG (slower), and says why.
    if let Some(note) = m.accel_note() {
        lines.push(Line::from(note));
    }
    let [top, rest] =
        Layout::vertical([Constraint::Length(lines.len() as u16), Constraint::Min(3)]).areas(body);
    f.render_widget(Paragraph::new(lines), top);
    if groups.is_empty() {
        f.render_widget(
            Paragraph::new(
                "No desktop on this terminal yet. The server sends them; they appear here.",
            )
            .block(Block::default().borders(Borders::ALL).title(" Desktops ")),
            rest,
        );
        return;
    }
    let block = Block::default()
        .borders(Borders::ALL)
        .title(if m.maintenance() {
            " Layers being prepared "
        } else {
            " Desktops "
        });
    let inner = block.inner(rest);
    f.render_widget(block, rest);
    let mut y = inner.y;
    for (i, g) in groups.iter().enumerate() {
        if y >= inner.y + inner.height {
            break;
        }
        let marker = if i == m.selected { "> " } else { "  " };
        let text = if m.maintenance() {
            format!("{marker}{}  {}", g.name, g.state)
        } else {
            format!(
                "{marker}{}{}  levels {}  {}",
                g.name,
                if g.default { " (default)" } else { "" },
                g.levels,
                g.state
            )
        };
        let style = if i == m.selected {
            Style::default().add_modifier(Modifier::REVERSED)
        } else {
            Style::default()
        };
        f.render_widget(
            Paragraph::new(text).style(style),
            ratatui::layout::Rect::new(inner.x, y, inner.width, 1),
        );
        y += 1;
        if let Some((ratio, _)) = g.progress {
            if y < inner.y + inner.height {
                f.render_widget(
                    Gauge::default()
                        .ratio(ratio.clamp(0.0, 1.0))
                        .use_unicode(true)
                        .label(format!("{:.0}%", ratio * 100.0)),
                    ratatui::layout::Rect::new(inner.x + 4, y, inner.width.saturating_sub(6), 1),
                );
                y += 1;
            }
        }
    }
}
