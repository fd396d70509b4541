//! What became of each wake: sent (and by which routes), then online after
//! N s when the terminal logs in, or did not come up within the timeout.
//! In memory and bounded: it answers "did the room come up", not history.

use serde::Serialize;
use std::collections::HashMap;
use std::sync::Mutex;

use super::plan::Route;

/// Wakes remembered at most; the oldest is dropped first.
pub const MAX_WAKES: usize = 16_384;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WakeState {
    /// Packets left; waiting for a login.
    Sent,
    /// Logged in after the packets went out.
    Online,
    /// No login within the timeout.
    TimedOut,
    /// No packet could be sent at all.
    Failed,
    /// It was online when asked: nothing sent.
    AlreadyOnline,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WakeResult {
    pub mac: String,
    pub state: WakeState,
    pub sent_ms: u64,
    pub timeout_secs: u64,
    #[schema(value_type = Vec<super::plan::Route>)]
    pub routes: Vec<Route>,
    /// Routes that failed, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub online_after_secs: Option<f64>,
    /// The result in words: "sent (…)", "online after 14 s", "did not come
    /// up within 180 s".
    pub text: String,
}

impl WakeResult {
    pub fn new(mac: &str, state: WakeState, now_ms: u64, timeout_secs: u64) -> Self {
        let mut r = WakeResult {
            mac: mac.into(),
            state,
            sent_ms: now_ms,
            timeout_secs,
            routes: Vec::new(),
            errors: Vec::new(),
            online_after_secs: None,
            text: String::new(),
        };
        r.describe();
        r
    }

    pub fn describe(&mut self) {
        let routes = self
            .routes
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        self.text = match self.state {
            WakeState::Sent => format!("sent ({routes})"),
            WakeState::Online => format!(
                "online after {:.1} s",
                self.online_after_secs.unwrap_or(0.0)
            ),
            WakeState::TimedOut => format!(
                "did not come up within {} s (sent: {routes})",
                self.timeout_secs
            ),
            WakeState::Failed => format!("not sent: {}", self.errors.join("; ")),
            WakeState::AlreadyOnline => "already online: nothing sent".into(),
        };
    }

    pub fn is_final(&self) -> bool {
        !matches!(self.state, WakeState::Sent)
    }

    /// Moves a wake whose time ran out to `TimedOut`.
    fn expire(&mut self, now_ms: u64) {
        if self.state == WakeState::Sent
            && now_ms.saturating_sub(self.sent_ms) > self.timeout_secs.saturating_mul(1000)
        {
            self.state = WakeState::TimedOut;
            self.describe();
        }
    }
}

#[derive(Default)]
pub struct WakeBook {
    wakes: Mutex<HashMap<String, WakeResult>>,
}

impl WakeBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, WakeResult>> {
        self.wakes.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, r: WakeResult) {
        let mut w = self.lock();
        if w.len() >= MAX_WAKES && !w.contains_key(&r.mac) {
            if let Some(oldest) = w.values().min_by_key(|x| x.sent_ms).map(|x| x.mac.clone()) {
                w.remove(&oldest);
            }
        }
        w.insert(r.mac.clone(), r);
    }

    /// A terminal logged in: a wake waiting for it is done.
    /// Routes (and errors) added to a wake still waiting for its terminal
    /// (the follow-up of a relay that did not bring it up).
    pub fn follow_up(&self, mac: &str, routes: Vec<Route>, errors: Vec<String>) {
        let mut w = self.lock();
        if let Some(r) = w.get_mut(mac) {
            if r.state == WakeState::Sent {
                r.routes.extend(routes);
                r.errors.extend(errors);
                r.describe();
            }
        }
    }

    pub fn logged_in(&self, mac: &str, now_ms: u64) {
        let mut w = self.lock();
        if let Some(r) = w.get_mut(mac) {
            r.expire(now_ms);
            if r.state == WakeState::Sent {
                r.state = WakeState::Online;
                r.online_after_secs = Some(now_ms.saturating_sub(r.sent_ms) as f64 / 1000.0);
                r.describe();
                log::info!("wake {mac}: {}", r.text);
            }
        }
    }

    /// The wakes of `macs` (all when empty), newest first.
    pub fn results(&self, macs: &[String], now_ms: u64) -> Vec<WakeResult> {
        let mut w = self.lock();
        let mut out: Vec<WakeResult> = w
            .values_mut()
            .filter(|r| macs.is_empty() || macs.contains(&r.mac))
            .map(|r| {
                r.expire(now_ms);
                r.clone()
            })
            .collect();
        out.sort_by(|a, b| b.sent_ms.cmp(&a.sent_ms).then(a.mac.cmp(&b.mac)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sent_then_online_or_timed_out() {
        let b = WakeBook::default();
        b.record(WakeResult::new("A", WakeState::Sent, 1_000, 60));
        b.record(WakeResult::new("B", WakeState::Sent, 1_000, 10));
        b.logged_in("A", 15_000);
        b.logged_in("C", 15_000);
        let r = b.results(&[], 12_000);
        let a = r.iter().find(|r| r.mac == "A").expect("A");
        assert_eq!(a.state, WakeState::Online);
        assert_eq!(a.text, "online after 14.0 s");
        let bb = r.iter().find(|r| r.mac == "B").expect("B");
        assert_eq!(bb.state, WakeState::TimedOut);
        assert!(
            bb.text.starts_with("did not come up within 10 s"),
            "{}",
            bb.text
        );
        // A login after the timeout does not turn it into a success.
        b.logged_in("B", 20_000);
        assert_eq!(
            b.results(&["B".into()], 20_000)[0].state,
            WakeState::TimedOut
        );
    }

    #[test]
    fn bounded() {
        let b = WakeBook::default();
        for i in 0..(MAX_WAKES + 5) {
            b.record(WakeResult::new(
                &format!("M{i}"),
                WakeState::Sent,
                i as u64,
                10,
            ));
        }
        let all = b.results(&[], 0);
        assert_eq!(all.len(), MAX_WAKES);
        assert!(!all.iter().any(|r| r.mac == "M0"));
    }
}
