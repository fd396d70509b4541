//! 1012 update_ip: static address, mask, gateway and DNS.
//!
//! Every field is validated before anything changes. The reply goes out on
//! the old address first (the original changed the address and then
//! replied, so its reply was often lost); then the agent applies and
//! persists the new network, and logs in again from it. If no login succeeds
//! within `change_confirm_secs`, the previous network is restored (see
//! `Agent::watch_pending_change`).

use std::net::Ipv4Addr;

use super::context::{parse_json, After, Applied, CmdResult, CommandError, Ctx};
use crate::agent::platform::NetworkConfig;
use crate::ipv4::validate_static;
use crate::protocol::messages::UpdateIpCmd;
use crate::protocol::{ErrorCode, Frame};

pub struct UpdateIp {
    cmd: UpdateIpCmd,
    address: Ipv4Addr,
    prefix_len: u8,
    gateway: Ipv4Addr,
    dns: Vec<Ipv4Addr>,
}

impl UpdateIp {
    pub fn parse(frame: &Frame) -> Result<Self, CommandError> {
        let cmd: UpdateIpCmd = parse_json(frame)?;
        let checked = validate_static(&cmd.ip, &cmd.mask, &cmd.gateway, &cmd.dns1, &cmd.dns2)
            .map_err(|(code, msg)| CommandError::new(code, msg))?;
        if cmd.conf_version < -1 {
            return Err(CommandError::new(
                ErrorCode::TerminalConfVersionError,
                "conf_version below -1",
            ));
        }
        Ok(UpdateIp {
            cmd,
            address: checked.address,
            prefix_len: checked.prefix_len,
            gateway: checked.gateway,
            dns: checked.dns,
        })
    }

    pub async fn apply(self, ctx: &Ctx<'_>) -> CmdResult {
        let interface = ctx
            .agent
            .interface_name()
            .map_err(|e| CommandError::system(format!("no interface to configure: {e}")))?;
        let net = NetworkConfig {
            interface,
            address: self.address,
            prefix_len: self.prefix_len,
            gateway: Some(self.gateway),
            dns: self.dns,
        };
        Ok(Applied::then(After::ChangeNetwork {
            net,
            conf_version: self.cmd.conf_version,
            mask: self.cmd.mask,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ClientType, ServiceCode};

    fn frame(body: serde_json::Value) -> Frame {
        Frame::request_json(
            ServiceCode::UpdateIp,
            1,
            ClientType::Server,
            &bytes::Bytes::new(),
            &body,
        )
        .expect("frame")
    }

    fn code_of(body: serde_json::Value) -> Option<ErrorCode> {
        UpdateIp::parse(&frame(body)).err().map(|e| e.code)
    }

    #[test]
    fn validation_table() {
        let base = serde_json::json!({"batch_no": 1, "ip": "172.16.1.20", "mask": "255.255.255.0",
            "gateway": "172.16.1.254", "dns1": "8.8.8.8", "dns2": "114.114.114.114", "conf_version": 16});
        assert_eq!(code_of(base.clone()), None);
        let with = |k: &str, v: &str| {
            let mut b = base.clone();
            b[k] = serde_json::json!(v);
            code_of(b)
        };
        assert_eq!(
            with("mask", "255.0.255.0"),
            Some(ErrorCode::TerminalMaskError)
        );
        assert_eq!(
            with("mask", "255.255.255.255"),
            Some(ErrorCode::TerminalMaskError)
        );
        assert_eq!(with("mask", "x"), Some(ErrorCode::TerminalMaskError));
        assert_eq!(with("ip", "172.16.1.255"), Some(ErrorCode::MessageError));
        assert_eq!(with("ip", "172.16.1"), Some(ErrorCode::MessageError));
        assert_eq!(with("ip", "../../etc"), Some(ErrorCode::MessageError));
        assert_eq!(
            with("gateway", "172.16.2.1"),
            Some(ErrorCode::TerminalGatewayError)
        );
        assert_eq!(
            with("gateway", "172.16.1.20"),
            Some(ErrorCode::TerminalGatewayError)
        );
        assert_eq!(
            with("gateway", "172.16.1.0"),
            Some(ErrorCode::TerminalGatewayError)
        );
        // An empty dns1 is taken, as the vendor's server takes it (issue
        // 39.10); a bad one is not.
        assert_eq!(with("dns1", ""), None);
        assert_eq!(with("dns1", "0.0.0.0"), Some(ErrorCode::TerminalDns1Error));
        assert_eq!(with("dns2", "bad"), Some(ErrorCode::TerminalDns1Error));
        assert_eq!(with("dns2", ""), None);
        let mut b = base.clone();
        b["conf_version"] = serde_json::json!(-5);
        assert_eq!(code_of(b), Some(ErrorCode::TerminalConfVersionError));
        let mut b = base;
        b.as_object_mut().expect("object").remove("gateway");
        assert_eq!(code_of(b), Some(ErrorCode::MessageError));
    }
}
