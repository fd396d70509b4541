//! Who is calling the operator API. Besides the server's own token (named
//! "operator", kept in `<data_dir>/api-token`), the config can name more:
//! one per person or integration, so the audit trail says who did what,
//! and a read-only one for a dashboard or a wall screen.
//!
//! Only a token's sha256 is kept in memory after start, and a presented
//! token is compared against every entry in constant time.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `[[api_tokens]]` in the server's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedToken {
    /// Shown in the audit trail: "teacher-101", "grafana".
    pub name: String,
    /// The token itself…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// …or its sha256 in hex, so the config does not hold the secret
    /// (`printf %s TOKEN | sha256sum`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
    /// Reads only: any other method is refused with 403.
    #[serde(default)]
    pub read_only: bool,
}

/// The name the server's own token goes by.
pub const OPERATOR: &str = "operator";

/// Shortest token accepted in the config: a guessable one is no secret.
pub const MIN_TOKEN_LEN: usize = 16;

/// Who a valid token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub read_only: bool,
}

struct Entry {
    sha256: [u8; 32],
    caller: Caller,
}

pub struct Tokens {
    entries: Vec<Entry>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

impl Tokens {
    /// The server's own token and the configured ones; a wrong entry is
    /// refused with the reason, so a typo cannot lock anyone out silently.
    pub fn new(operator_token: &str, named: &[NamedToken]) -> Result<Tokens, String> {
        let mut entries = vec![Entry {
            sha256: digest(operator_token),
            caller: Caller {
                name: OPERATOR.into(),
                read_only: false,
            },
        }];
        for t in named {
            let name = t.name.trim();
            if name.is_empty()
                || name.len() > 64
                || name.chars().any(|c| c.is_control() || c.is_whitespace())
            {
                return Err(format!(
                    "api_tokens: name {:?} must be 1 to 64 characters without spaces",
                    t.name
                ));
            }
            if entries.iter().any(|e| e.caller.name == name) {
                return Err(format!("api_tokens: the name {name:?} is used twice"));
            }
            let sha256 = match (&t.token, &t.token_sha256) {
                (Some(tok), None) if tok.trim().len() >= MIN_TOKEN_LEN => digest(tok),
                (Some(_), None) => {
                    return Err(format!(
                        "api_tokens: {name}'s token is shorter than {MIN_TOKEN_LEN} characters"
                    ))
                }
                (None, Some(hex)) => crate::bt::manifest::from_hex(hex.trim())
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| {
                        format!("api_tokens: {name}'s token_sha256 is not 64 hex digits")
                    })?,
                _ => {
                    return Err(format!(
                        "api_tokens: {name} needs exactly one of token and token_sha256"
                    ))
                }
            };
            if entries.iter().any(|e| e.sha256 == sha256) {
                return Err(format!(
                    "api_tokens: {name}'s token is the same as another's"
                ));
            }
            entries.push(Entry {
                sha256,
                caller: Caller {
                    name: name.to_string(),
                    read_only: t.read_only,
                },
            });
        }
        Ok(Tokens { entries })
    }

    /// The caller a presented token belongs to, if any. Every entry is
    /// compared, whole, whatever matched before.
    pub fn identify(&self, presented: &str) -> Option<&Caller> {
        let d = digest(presented);
        let mut found = None;
        for e in &self.entries {
            let diff = e
                .sha256
                .iter()
                .zip(&d)
                .fold(0u8, |acc, (x, y)| acc | (x ^ y));
            if diff == 0 {
                found = Some(&e.caller);
            }
        }
        found
    }

    /// The caller of a request, from its `Authorization: Bearer …`.
    pub fn caller(&self, headers: &axum::http::HeaderMap) -> Option<&Caller> {
        let v = headers.get("authorization")?.to_str().ok()?;
        self.identify(v.strip_prefix("Bearer ")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str, token: Option<&str>, sha: Option<&str>, ro: bool) -> NamedToken {
        NamedToken {
            name: name.into(),
            token: token.map(String::from),
            token_sha256: sha.map(String::from),
            read_only: ro,
        }
    }

    #[test]
    fn each_token_names_its_holder() {
        let hash = crate::bt::manifest::to_hex(&digest("grafana-scrapes-only-0001"));
        let t = Tokens::new(
            "operator-secret",
            &[
                named("teacher-101", Some("teacher-101-token-xyz"), None, false),
                named("grafana", None, Some(&hash), true),
            ],
        )
        .expect("valid");
        assert_eq!(
            t.identify("operator-secret").map(|c| c.name.as_str()),
            Some("operator")
        );
        let teacher = t.identify("teacher-101-token-xyz").expect("teacher");
        assert_eq!(
            (teacher.name.as_str(), teacher.read_only),
            ("teacher-101", false)
        );
        let g = t.identify("grafana-scrapes-only-0001").expect("grafana");
        assert!(g.read_only);
        assert_eq!(t.identify("teacher-101-token-xy"), None);
        assert_eq!(t.identify(""), None);
    }

    #[test]
    fn a_wrong_entry_is_refused_with_its_reason() {
        for (entries, want) in [
            (vec![named("a", Some("short"), None, false)], "shorter"),
            (vec![named("a", None, Some("abc"), false)], "64 hex"),
            (vec![named("a", None, None, false)], "exactly one"),
            (
                vec![named("a b", Some("0123456789abcdef"), None, false)],
                "without spaces",
            ),
            (
                vec![named("operator", Some("0123456789abcdef"), None, false)],
                "twice",
            ),
            (
                vec![named("x", Some("operator-secret-1"), None, false)],
                "same as another",
            ),
        ] {
            let err = Tokens::new("operator-secret-1", &entries)
                .err()
                .unwrap_or_default();
            assert!(err.contains(want), "{entries:?}: {err}");
        }
    }
}
