//! The 24-byte little-endian packet header (protocol notes §1.2).

use bytes::{Buf, BufMut};

pub const HEADER_LEN: usize = 24;
pub const VERSION_CHIEF: u16 = 1;
pub const VERSION_SUB: u16 = 0;

/// `data_type` byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DataType {
    Binary = 0,
    Json = 1,
    Protobuf = 2,
}

impl DataType {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Binary),
            1 => Some(Self::Json),
            2 => Some(Self::Protobuf),
            _ => None,
        }
    }
}

/// `client_type` byte: who sent the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientType {
    Uefi = 1,
    Linux = 2,
    Windows = 3,
    Server = 4,
    ULinux = 5,
}

impl ClientType {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Uefi),
            2 => Some(Self::Linux),
            3 => Some(Self::Windows),
            4 => Some(Self::Server),
            5 => Some(Self::ULinux),
            _ => None,
        }
    }
}

/// `req_or_res` byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Direction {
    Request = 1,
    Response = 2,
}

impl Direction {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Request),
            2 => Some(Self::Response),
            _ => None,
        }
    }
}

/// The header exactly as it sits on the wire. Fields keep their raw widths so
/// that decode followed by encode is byte-identical.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version_chief: u16,
    pub version_sub: u16,
    pub service_code: u32,
    pub sequence_code: u32,
    pub data_size: u32,
    pub data_type: u8,
    pub encoding: u8,
    pub client_type: u8,
    pub req_or_res: u8,
    pub token_length: u16,
    pub supplementary: u16,
}

impl Header {
    /// Reads a header from exactly `HEADER_LEN` bytes. Never fails on content;
    /// validation is `FrameCodec`'s job so the reason can be reported.
    pub fn parse(mut b: &[u8]) -> Option<Header> {
        if b.len() < HEADER_LEN {
            return None;
        }
        Some(Header {
            version_chief: b.get_u16_le(),
            version_sub: b.get_u16_le(),
            service_code: b.get_u32_le(),
            sequence_code: b.get_u32_le(),
            data_size: b.get_u32_le(),
            data_type: b.get_u8(),
            encoding: b.get_u8(),
            client_type: b.get_u8(),
            req_or_res: b.get_u8(),
            token_length: b.get_u16_le(),
            supplementary: b.get_u16_le(),
        })
    }

    pub fn write(&self, out: &mut impl BufMut) {
        out.put_u16_le(self.version_chief);
        out.put_u16_le(self.version_sub);
        out.put_u32_le(self.service_code);
        out.put_u32_le(self.sequence_code);
        out.put_u32_le(self.data_size);
        out.put_u8(self.data_type);
        out.put_u8(self.encoding);
        out.put_u8(self.client_type);
        out.put_u8(self.req_or_res);
        out.put_u16_le(self.token_length);
        out.put_u16_le(self.supplementary);
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let mut w = &mut out[..];
        self.write(&mut w);
        out
    }

    /// Bytes that follow the header: supplementary + token + payload.
    pub fn body_len(&self) -> u64 {
        u64::from(self.supplementary) + u64::from(self.token_length) + u64::from(self.data_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Login header from the original server's test client (notes §1.2).
    const LOGIN_VECTOR: [u8; 24] = [
        0x01, 0x00, 0x01, 0x00, 0x29, 0x23, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x2b, 0x00, 0x00,
        0x00, 0x01, 0x00, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00,
    ];

    #[test]
    fn decodes_login_vector_from_notes() {
        let h = Header::parse(&LOGIN_VECTOR).expect("24 bytes");
        assert_eq!(h.version_chief, 1);
        assert_eq!(h.version_sub, 1);
        assert_eq!(h.service_code, 9001);
        assert_eq!(h.sequence_code, 1);
        assert_eq!(h.data_size, 0x2b);
        assert_eq!(h.data_type, DataType::Json as u8);
        assert_eq!(h.encoding, 0);
        assert_eq!(h.client_type, ClientType::Uefi as u8);
        assert_eq!(h.req_or_res, Direction::Request as u8);
        assert_eq!(h.token_length, 0);
        assert_eq!(h.supplementary, 0);
        assert_eq!(h.to_bytes(), LOGIN_VECTOR);
    }

    #[test]
    fn worked_example_header_layout() {
        // Notes §1.10: uninstalled terminal login.
        let payload = br#"{"mac":"AA:BB:CC:DD:EE:FF","ip":"192.168.1.20"}"#;
        let h = Header {
            version_chief: 1,
            version_sub: 0,
            service_code: 9001,
            sequence_code: 0,
            data_size: payload.len() as u32,
            data_type: 1,
            encoding: 0,
            client_type: 5,
            req_or_res: 1,
            token_length: 0,
            supplementary: 0,
        };
        let mut expected = vec![0x01, 0x00, 0x00, 0x00, 0x29, 0x23, 0x00, 0x00, 0, 0, 0, 0];
        expected.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        expected.extend_from_slice(&[0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x00, 0x00]);
        assert_eq!(h.to_bytes().to_vec(), expected);
    }

    #[test]
    fn short_input_is_none() {
        assert!(Header::parse(&LOGIN_VECTOR[..23]).is_none());
    }
}
