//! A class schedule: per room (a group of terminals), on days of the week,
//! "wake at 07:50" or "shut down at 17:30 unless downloading". Times are
//! the server's local wall clock.
//!
//! `due` is pure: given the entries and a window of wall-clock time, it
//! names what falls inside. The runner (`super::run_schedule`) calls it
//! with (last tick, now], starting from the moment the server started, so
//! whatever fell while the server was down is never replayed; a window
//! longer than `MAX_WINDOW` (a suspended host, a clock stepped forward) is
//! skipped for the same reason.

use chrono::{Datelike, Duration, NaiveDateTime, NaiveTime, Weekday};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Mutex;

/// At most this many entries (each is one line of a timetable).
pub const MAX_ENTRIES: usize = 256;
/// A tick window longer than this is a jump, not a tick: nothing in it
/// fires.
pub const MAX_WINDOW: Duration = Duration::minutes(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = ScheduleAction)]
pub enum Action {
    Wake,
    Shutdown,
}

/// When a scheduled shutdown leaves a terminal on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = ScheduleUnless)]
pub enum Unless {
    /// It is still fetching a layer (an image for tomorrow's class).
    Downloading,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"room": "101", "days": ["mon", "tue", "wed", "thu", "fri"], "at": "07:50", "action": "wake"}))]
pub struct ScheduleEntry {
    /// Given by the server when empty.
    #[serde(default)]
    pub id: String,
    /// The room: terminals whose `room` is this.
    pub room: String,
    /// "mon" … "sun"; empty is every day.
    #[serde(default)]
    pub days: Vec<String>,
    /// "HH:MM", local time.
    pub at: String,
    pub action: Action,
    #[serde(default)]
    pub unless: Vec<Unless>,
    /// For a shutdown: terminals of ours are told this long before (1901).
    #[serde(default = "default_warn")]
    pub warn_secs: u32,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn default_warn() -> u32 {
    300
}
fn yes() -> bool {
    true
}

pub fn parse_day(d: &str) -> Option<Weekday> {
    Some(match d.trim().to_ascii_lowercase().get(..3)? {
        "mon" => Weekday::Mon,
        "tue" => Weekday::Tue,
        "wed" => Weekday::Wed,
        "thu" => Weekday::Thu,
        "fri" => Weekday::Fri,
        "sat" => Weekday::Sat,
        "sun" => Weekday::Sun,
        _ => return None,
    })
}

impl ScheduleEntry {
    pub fn time(&self) -> Option<NaiveTime> {
        NaiveTime::parse_from_str(self.at.trim(), "%H:%M").ok()
    }

    fn on(&self, day: Weekday) -> bool {
        self.days.is_empty() || self.days.iter().any(|d| parse_day(d) == Some(day))
    }

    /// Everything wrong with it, in words, or nothing.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let room = self.room.trim();
        if room.is_empty() || room.len() > 64 || room.chars().any(|c| c.is_control()) {
            p.push("room must be 1 to 64 printable characters".into());
        }
        if self.time().is_none() {
            p.push(format!("at {:?} is not HH:MM (24-hour)", self.at));
        }
        for d in &self.days {
            if parse_day(d).is_none() {
                p.push(format!(
                    "day {d:?} is not mon, tue, wed, thu, fri, sat or sun"
                ));
            }
        }
        if self.warn_secs > 3600 {
            p.push(format!("warn_secs {} is more than an hour", self.warn_secs));
        }
        if self.action == Action::Wake && !self.unless.is_empty() {
            p.push("unless applies to shutdowns only".into());
        }
        p
    }
}

/// What a due entry asks for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Tell the room a shutdown comes in `in_secs`.
    Warn {
        in_secs: u32,
    },
    Act,
}

/// The entries (by index) that fall in (from, to], with what each asks.
/// Empty when the window is empty, backwards or longer than `MAX_WINDOW`.
pub fn due(entries: &[ScheduleEntry], from: NaiveDateTime, to: NaiveDateTime) -> Vec<(usize, Due)> {
    let mut out = Vec::new();
    if to <= from || to - from > MAX_WINDOW {
        return out;
    }
    // The window spans at most two calendar days.
    let mut days = vec![from.date()];
    if to.date() != from.date() {
        days.push(to.date());
    }
    for (i, e) in entries.iter().enumerate() {
        let Some(t) = e.time().filter(|_| e.enabled) else {
            continue;
        };
        for day in &days {
            let at = day.and_time(t);
            if e.on(day.weekday()) && from < at && at <= to {
                out.push((i, Due::Act));
            }
            if e.action == Action::Shutdown && e.warn_secs > 0 {
                let warn_at = at - Duration::seconds(i64::from(e.warn_secs));
                if e.on(day.weekday()) && from < warn_at && warn_at <= to {
                    out.push((
                        i,
                        Due::Warn {
                            in_secs: e.warn_secs,
                        },
                    ));
                }
            }
        }
    }
    out
}

/// What one schedule entry did when it fell due, per terminal.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ScheduleRun {
    pub entry_id: String,
    pub room: String,
    /// "wake", "shutdown" or "warn".
    pub what: String,
    /// The schedule's clock when it fired.
    pub at: String,
    /// MAC → what happened to it.
    #[schema(value_type = Vec<Vec<String>>)]
    pub terminals: Vec<(String, String)>,
}

/// Runs kept for the API, newest last.
pub const MAX_RUNS: usize = 100;

#[derive(Default)]
pub struct ScheduleLog(Mutex<VecDeque<ScheduleRun>>);

impl ScheduleLog {
    pub fn push(&self, run: ScheduleRun) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= MAX_RUNS {
            q.pop_front();
        }
        q.push_back(run);
    }
    pub fn runs(&self) -> Vec<ScheduleRun> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> NaiveDateTime {
        // 2026-11-30 is a Monday.
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").expect("time")
    }

    fn entry(at: &str, action: Action, days: &[&str]) -> ScheduleEntry {
        ScheduleEntry {
            id: "e".into(),
            room: "301".into(),
            days: days.iter().map(|d| d.to_string()).collect(),
            at: at.into(),
            action,
            unless: vec![],
            warn_secs: 300,
            enabled: true,
        }
    }

    #[test]
    fn fires_once_in_its_window_on_its_days() {
        let e = [entry("07:50", Action::Wake, &["mon", "tue"])];
        assert_eq!(
            due(&e, t("2026-11-30 07:49:50"), t("2026-11-30 07:50:00")),
            vec![(0, Due::Act)]
        );
        // The next window starts where this one ended: not again.
        assert!(due(&e, t("2026-11-30 07:50:00"), t("2026-11-30 07:50:10")).is_empty());
        // Wednesday is not a day of it.
        assert!(due(&e, t("2026-12-02 07:49:50"), t("2026-12-02 07:50:00")).is_empty());
    }

    #[test]
    fn a_shutdown_warns_first() {
        let e = [entry("17:30", Action::Shutdown, &[])];
        assert_eq!(
            due(&e, t("2026-11-30 17:24:55"), t("2026-11-30 17:25:05")),
            vec![(0, Due::Warn { in_secs: 300 })]
        );
        assert_eq!(
            due(&e, t("2026-11-30 17:29:55"), t("2026-11-30 17:30:05")),
            vec![(0, Due::Act)]
        );
    }

    #[test]
    fn a_jump_or_a_late_start_replays_nothing() {
        let e = [entry("17:30", Action::Shutdown, &[])];
        // The server was down from 17:00 to 18:00: one 60-minute window.
        assert!(due(&e, t("2026-11-30 17:00:00"), t("2026-11-30 18:00:00")).is_empty());
        assert!(due(&e, t("2026-11-30 18:00:00"), t("2026-11-30 17:00:00")).is_empty());
    }

    #[test]
    fn across_midnight() {
        let e = [entry("00:00", Action::Wake, &["tue"])];
        assert_eq!(
            due(&e, t("2026-11-30 23:59:58"), t("2026-12-01 00:00:01")),
            vec![(0, Due::Act)]
        );
    }

    #[test]
    fn problems_are_named() {
        let mut e = entry("25:00", Action::Wake, &["funday"]);
        e.unless = vec![Unless::Downloading];
        e.room = String::new();
        let p = e.problems().join("\n");
        for want in ["room", "HH:MM", "funday", "shutdowns only"] {
            assert!(p.contains(want), "{p}");
        }
        assert!(entry("07:50", Action::Wake, &["Mon"]).problems().is_empty());
    }
}
