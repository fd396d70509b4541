//! The two terminal generations the vendor shipped, told apart by what a
//! terminal reports (9004 `soft_version`), and what follows from that:
//!
//! * dianshang-era terminals and R ≤ 2.24 (and our own agent, which reports
//!   its crate version): a desktop is 1008 then one binary 1015 per layer;
//! * R ≥ 2.25 (v2.28 sends `soft_version: "2.28"`): a desktop is 1017
//!   `send_desktop` with a `download_url` per disk; it never answers 1005,
//!   1006, 1008, 1009, 1011, 1015 or 1022, and carries out 1030 without a
//!   reply (notes §11).
//!
//! An operator may pin a terminal's delivery style (`delivery` on its
//! record) when the version says nothing useful.

use serde::{Deserialize, Serialize};

use crate::protocol::ServiceCode;

/// How a desktop reaches a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Delivery {
    /// 1008 download_desktop, then a binary 1015 per layer.
    #[serde(rename = "1015")]
    TorrentPush,
    /// 1017 send_desktop with a download URL per disk.
    #[serde(rename = "1017")]
    SendDesktop,
}

impl Delivery {
    pub fn parse(text: &str) -> Option<Delivery> {
        match text {
            "1015" | "torrent_push" | "send_torrent" => Some(Delivery::TorrentPush),
            "1017" | "send_desktop" => Some(Delivery::SendDesktop),
            _ => None,
        }
    }
}

/// `"2.28"` → (2, 28); anything else is no version.
fn major_minor(v: &str) -> Option<(u32, u32)> {
    let mut it = v.trim().split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next().unwrap_or("0").parse().ok()?;
    Some((major, minor))
}

/// What the server knows of a terminal's software.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub soft_version: String,
    /// R ≥ 2.25: the HTTP/download_url generation.
    pub url_generation: bool,
    pub delivery: Delivery,
}

impl Generation {
    /// From the version a terminal reported and the operator's pin, if any.
    pub fn new(soft_version: &str, pinned: Option<Delivery>) -> Generation {
        let url_generation = major_minor(soft_version).is_some_and(|v| v >= (2, 25) && v.0 == 2);
        let auto = if url_generation {
            Delivery::SendDesktop
        } else {
            Delivery::TorrentPush
        };
        Generation {
            soft_version: soft_version.to_string(),
            url_generation,
            delivery: pinned.unwrap_or(auto),
        }
    }

    /// A terminal's free space in the protocol's GB (2^30 bytes): v2.28
    /// reports `disk_residue` in 512-byte sectors (536870912 for 256 GB),
    /// the others in GB already.
    pub fn disk_residue_gb(&self, reported: f64) -> f64 {
        if self.url_generation {
            // Finite whatever was sent: the record must stay readable.
            (reported * 512.0 / f64::from(1u32 << 30)).min(f64::MAX)
        } else {
            reported
        }
    }

    /// Whether a command gets a reply from this terminal's software.
    pub fn answers(&self, code: ServiceCode) -> bool {
        use ServiceCode as S;
        // v2.28 (protocol notes §11): no handler for 1005, 1006, 1009,
        // 1011, 1022; 1008 ignored; 1030 carried out without a reply; and,
        // by its dispatch, nothing for 1010, 1014, 1018, 1019, 1020, 1021,
        // 1023. It does answer 1015 (then ignores it).
        !(self.url_generation
            && matches!(
                code,
                S::UpdateConfig
                    | S::EnterMaintenanceMode
                    | S::DownloadDesktop
                    | S::CancelDownloadDesktop
                    | S::AddDataDisk
                    | S::Order
                    | S::PxeStart
                    | S::PushTaskResult
                    | S::EnterMaintain
                    | S::UploadDisk
                    | S::BtTaskComplete
                    | S::WatermarkSwitch
                    | S::SshUploadDesktop
                    | S::TerminalUpgrade
            ))
    }

    /// Why a command gets no reply, for the operator.
    pub fn no_reply(&self, code: ServiceCode) -> String {
        format!(
            "no reply: this terminal's software ({}) does not answer {}",
            if self.soft_version.is_empty() {
                "unknown version"
            } else {
                &self.soft_version
            },
            code.name()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_28_is_the_url_generation_and_skips_what_it_never_answers() {
        let g = Generation::new("2.28", None);
        assert_eq!(g.delivery, Delivery::SendDesktop);
        for c in [
            1005, 1006, 1008, 1009, 1010, 1011, 1014, 1018, 1019, 1020, 1021, 1022, 1023, 1030,
        ] {
            let code = ServiceCode::from_u32(c).expect("code");
            assert!(!g.answers(code), "{c}");
        }
        for c in [1001, 1002, 1004, 1012, 1015, 1017, 1024, 1031, 1032] {
            let code = ServiceCode::from_u32(c).expect("code");
            assert!(g.answers(code), "{c}");
        }
        assert_eq!(
            g.no_reply(ServiceCode::Order),
            "no reply: this terminal's software (2.28) does not answer order"
        );
    }

    #[test]
    fn free_space_is_in_one_unit_for_both_generations() {
        assert_eq!(
            Generation::new("2.28", None).disk_residue_gb(536870912.0),
            256.0
        );
        assert_eq!(Generation::new("0.1", None).disk_residue_gb(256.0), 256.0);
    }

    #[test]
    fn older_and_unknown_versions_get_torrent_pushes_unless_pinned() {
        for v in ["2.24", "2.3", "0.1", "", "x"] {
            let g = Generation::new(v, None);
            assert_eq!(g.delivery, Delivery::TorrentPush, "{v}");
            assert!(g.answers(ServiceCode::DownloadDesktop), "{v}");
        }
        assert_eq!(
            Generation::new("0.1", Some(Delivery::SendDesktop)).delivery,
            Delivery::SendDesktop
        );
    }
}
