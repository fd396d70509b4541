//! Which terminals may join. The protocol authenticates no one (the token
//! is md5 of "ip:port"), so without a policy any device on the LAN can log
//! in as any MAC and be handed desktops. The operator picks a policy in
//! `server.toml`; each terminal's standing is kept on its record, so a
//! decision survives a restart.
//!
//! * `open` (default, as the vendor's server): everyone is accepted.
//! * `pending`: a MAC never seen before may log in and heartbeat and is
//!   listed as pending; it is told nothing (no configuration, desktops,
//!   torrents or numbering) until an operator accepts it.
//! * `allow-list`: only MACs an operator accepted beforehand log in.
//!
//! A rejected terminal is refused at login under every policy.

use serde::{Deserialize, Serialize};

use crate::protocol::ServiceCode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdmissionPolicy {
    #[default]
    Open,
    Pending,
    AllowList,
}

/// A terminal's standing, kept on its record. Records from before
/// admission existed read as accepted: they were let in under `open`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Admission {
    #[default]
    Accepted,
    Pending,
    Rejected,
}

impl Admission {
    pub fn parse(text: &str) -> Option<Admission> {
        match text.trim().to_ascii_lowercase().as_str() {
            "accepted" | "accept" | "allow" => Some(Admission::Accepted),
            "pending" => Some(Admission::Pending),
            "rejected" | "reject" | "deny" => Some(Admission::Rejected),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Admission::Accepted => "accepted",
            Admission::Pending => "pending",
            Admission::Rejected => "rejected",
        }
    }
}

/// What a login gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtLogin {
    /// Log in, with this standing (a new record is created with it).
    Admit(Admission),
    /// Refuse the login (60001) for this reason; nothing is stored.
    Refuse(String),
}

/// The decision for a login by a terminal whose record holds `known` (None:
/// never seen).
pub fn at_login(policy: AdmissionPolicy, known: Option<Admission>) -> AtLogin {
    match (policy, known) {
        (_, Some(Admission::Rejected)) => {
            AtLogin::Refuse("rejected by the operator: this terminal may not join".into())
        }
        (_, Some(Admission::Accepted)) | (AdmissionPolicy::Open, _) => {
            AtLogin::Admit(Admission::Accepted)
        }
        (AdmissionPolicy::Pending, _) => AtLogin::Admit(Admission::Pending),
        (AdmissionPolicy::AllowList, _) => {
            AtLogin::Refuse("not on the allow-list: an operator must accept this MAC first".into())
        }
    }
}

/// Whether a terminal with this standing may make this request. A pending
/// terminal keeps its session alive and says what it is (9004 reports its
/// platform and version, which the operator sees before deciding); it asks
/// for nothing.
pub fn may_request(standing: Admission, code: ServiceCode) -> bool {
    use ServiceCode as S;
    standing == Admission::Accepted
        || matches!(
            code,
            S::Heartbeat | S::GetDateTime | S::TerminalLogout | S::GetConfigVersionId
        )
}

/// The refusal text of a request a pending terminal may not make.
pub const PENDING: &str = "pending: an operator has not accepted this terminal yet";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_policy_at_first_sight_and_after_a_decision() {
        use AdmissionPolicy as P;
        assert_eq!(at_login(P::Open, None), AtLogin::Admit(Admission::Accepted));
        assert_eq!(
            at_login(P::Pending, None),
            AtLogin::Admit(Admission::Pending)
        );
        assert!(matches!(at_login(P::AllowList, None), AtLogin::Refuse(_)));
        for p in [P::Open, P::Pending, P::AllowList] {
            assert!(matches!(
                at_login(p, Some(Admission::Rejected)),
                AtLogin::Refuse(_)
            ));
            assert_eq!(
                at_login(p, Some(Admission::Accepted)),
                AtLogin::Admit(Admission::Accepted)
            );
        }
        // Back to open, a terminal left pending is let in; under the
        // allow-list it is not on the list.
        assert_eq!(
            at_login(P::Open, Some(Admission::Pending)),
            AtLogin::Admit(Admission::Accepted)
        );
        assert!(matches!(
            at_login(P::AllowList, Some(Admission::Pending)),
            AtLogin::Refuse(_)
        ));
    }

    #[test]
    fn a_pending_terminal_asks_for_nothing() {
        use ServiceCode as S;
        for c in [S::Heartbeat, S::GetConfigVersionId, S::TerminalLogout] {
            assert!(may_request(Admission::Pending, c));
        }
        for c in [
            S::GetConfigInfo,
            S::GetDesktopGroupList,
            S::BtTracker,
            S::OrderQuery,
            S::UpdateConfigInfo,
        ] {
            assert!(!may_request(Admission::Pending, c), "{c:?}");
            assert!(may_request(Admission::Accepted, c));
        }
    }

    #[test]
    fn names_round_trip_and_old_records_read_as_accepted() {
        for a in [Admission::Accepted, Admission::Pending, Admission::Rejected] {
            assert_eq!(Admission::parse(a.name()), Some(a));
        }
        assert_eq!(Admission::parse("maybe"), None);
        let p: AdmissionPolicy = serde_json::from_str("\"allow-list\"").expect("kebab");
        assert_eq!(p, AdmissionPolicy::AllowList);
    }
}
