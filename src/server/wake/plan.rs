//! Which way a magic packet can reach a terminal (pure, so every case is a
//! unit test):
//!
//! * the broadcast of every subnet the server has an interface on;
//! * a terminal on a subnet the server is not on: an online agent of ours
//!   on that subnet relays it (1900), because routers drop directed
//!   broadcasts; with none, the directed broadcast all the same, for the
//!   routers that are set to forward it.

use serde::Serialize;
use std::net::Ipv4Addr;

use crate::wake_on_lan::{broadcast_of, LocalSubnet};

/// A terminal's last known subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub ip: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        crate::ipv4::same_subnet(self.ip, ip, self.prefix)
    }
}

/// An online agent of ours that can relay, with the subnet it reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    pub mac: String,
    pub subnet: Subnet,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(tag = "via", rename_all = "snake_case")]
#[schema(as = WakeRoute)]
pub enum Route {
    /// The broadcast of a subnet the server is on, sent from its address.
    Local {
        interface: String,
        #[schema(value_type = String)]
        source: Ipv4Addr,
        #[schema(value_type = String)]
        broadcast: Ipv4Addr,
    },
    /// The directed broadcast of a subnet the server is not on.
    Directed {
        #[schema(value_type = String)]
        broadcast: Ipv4Addr,
    },
    /// An online terminal on the target's subnet sends it there.
    Relay {
        mac: String,
        #[schema(value_type = String)]
        broadcast: Ipv4Addr,
    },
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::Local {
                interface,
                broadcast,
                ..
            } => write!(f, "broadcast {broadcast} on {interface}"),
            Route::Directed { broadcast } => write!(f, "directed broadcast {broadcast}"),
            Route::Relay { mac, broadcast } => write!(f, "relayed by {mac} on {broadcast}"),
        }
    }
}

/// The routes for one terminal. `relays` come best first (the freshest
/// heartbeat); the target itself is never its own relay.
pub fn routes(
    target_mac: &str,
    target: Option<Subnet>,
    locals: &[LocalSubnet],
    relays: &[Relay],
) -> Vec<Route> {
    let mut out: Vec<Route> = locals
        .iter()
        .map(|l| Route::Local {
            interface: l.interface.clone(),
            source: l.address,
            broadcast: l.broadcast,
        })
        .collect();
    let Some(t) = target else {
        return out;
    };
    if locals.iter().any(|l| l.contains(t.ip)) {
        return out;
    }
    let Some(broadcast) = broadcast_of(t.ip, t.prefix) else {
        return out;
    };
    let relay = relays
        .iter()
        .find(|r| r.mac != target_mac && r.subnet.prefix == t.prefix && t.contains(r.subnet.ip));
    out.push(match relay {
        Some(r) => Route::Relay {
            mac: r.mac.clone(),
            broadcast,
        },
        None => Route::Directed { broadcast },
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    fn local(a: &str) -> LocalSubnet {
        LocalSubnet {
            interface: "eth0".into(),
            address: ip(a),
            prefix: 24,
            broadcast: broadcast_of(ip(a), 24).expect("bcast"),
        }
    }

    fn sub(a: &str) -> Option<Subnet> {
        Some(Subnet {
            ip: ip(a),
            prefix: 24,
        })
    }

    #[test]
    fn a_terminal_on_our_subnet_gets_our_broadcasts_only() {
        let r = routes("T", sub("10.1.0.9"), &[local("10.1.0.1")], &[]);
        assert_eq!(
            r,
            vec![Route::Local {
                interface: "eth0".into(),
                source: ip("10.1.0.1"),
                broadcast: ip("10.1.0.255")
            }]
        );
    }

    #[test]
    fn another_subnet_goes_by_a_relay_there_else_directed() {
        let locals = [local("10.1.0.1")];
        let relays = vec![
            Relay {
                mac: "ELSEWHERE".into(),
                subnet: sub("10.3.0.5").expect("s"),
            },
            Relay {
                mac: "NEIGHBOUR".into(),
                subnet: sub("10.2.0.7").expect("s"),
            },
        ];
        let r = routes("T", sub("10.2.0.9"), &locals, &relays);
        assert_eq!(
            r.last(),
            Some(&Route::Relay {
                mac: "NEIGHBOUR".into(),
                broadcast: ip("10.2.0.255")
            })
        );
        let none = routes("T", sub("10.2.0.9"), &locals, &relays[..1]);
        assert_eq!(
            none.last(),
            Some(&Route::Directed {
                broadcast: ip("10.2.0.255")
            })
        );
        // Itself is no relay, nor one on a wider prefix.
        let me = [Relay {
            mac: "T".into(),
            subnet: sub("10.2.0.9").expect("s"),
        }];
        assert!(matches!(
            routes("T", sub("10.2.0.9"), &locals, &me).last(),
            Some(Route::Directed { .. })
        ));
    }

    #[test]
    fn an_unknown_subnet_gets_our_broadcasts() {
        assert_eq!(routes("T", None, &[local("10.1.0.1")], &[]).len(), 1);
        assert!(routes("T", None, &[], &[]).is_empty());
    }
}
