//! A whole packet: header fields that matter, token and payload.
//!
//! On the wire: `[24-byte header][supplementary][token][payload]`. We skip a
//! received supplementary and never send one (notes §1.3).

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use super::codes::ServiceCode;
use super::header::{
    ClientType, DataType, Direction, Header, HEADER_LEN, VERSION_CHIEF, VERSION_SUB,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub service_code: u32,
    pub sequence_code: u32,
    pub data_type: u8,
    pub client_type: u8,
    pub req_or_res: u8,
    pub token: Bytes,
    pub payload: Bytes,
}

impl Frame {
    pub fn request_json<T: Serialize>(
        code: ServiceCode,
        sequence_code: u32,
        client_type: ClientType,
        token: &Bytes,
        body: &T,
    ) -> Result<Frame, serde_json::Error> {
        Ok(Frame {
            service_code: code as u32,
            sequence_code,
            data_type: DataType::Json as u8,
            client_type: client_type as u8,
            req_or_res: Direction::Request as u8,
            token: token.clone(),
            payload: Bytes::from(serde_json::to_vec(body)?),
        })
    }

    /// A response to `req`: same service and sequence code, `req_or_res = 2`.
    pub fn response_json<T: Serialize>(
        req: &Frame,
        client_type: ClientType,
        token: &Bytes,
        body: &T,
    ) -> Result<Frame, serde_json::Error> {
        Ok(Frame {
            service_code: req.service_code,
            sequence_code: req.sequence_code,
            data_type: DataType::Json as u8,
            client_type: client_type as u8,
            req_or_res: Direction::Response as u8,
            token: token.clone(),
            payload: Bytes::from(serde_json::to_vec(body)?),
        })
    }

    pub fn service(&self) -> Option<ServiceCode> {
        ServiceCode::from_u32(self.service_code)
    }

    pub fn is_response(&self) -> bool {
        self.req_or_res == Direction::Response as u8
    }

    pub fn header(&self) -> Header {
        Header {
            version_chief: VERSION_CHIEF,
            version_sub: VERSION_SUB,
            service_code: self.service_code,
            sequence_code: self.sequence_code,
            data_size: self.payload.len() as u32,
            data_type: self.data_type,
            encoding: 0,
            client_type: self.client_type,
            req_or_res: self.req_or_res,
            token_length: self.token.len() as u16,
            supplementary: 0,
        }
    }

    /// Serialises the frame. Callers must keep token ≤ u16::MAX and payload
    /// ≤ u32::MAX; `FrameCodec::encode` enforces its own smaller limit.
    pub fn write_to(&self, out: &mut BytesMut) {
        out.reserve(HEADER_LEN + self.token.len() + self.payload.len());
        self.header().write(out);
        out.put_slice(&self.token);
        out.put_slice(&self.payload);
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.write_to(&mut b);
        b.freeze()
    }

    /// The payload as JSON text. The original server strips `\n` and `\t`
    /// before parsing; serde_json tolerates both as whitespace already.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.payload)
    }

    pub fn token_str(&self) -> &str {
        std::str::from_utf8(&self.token).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_heartbeat_bytes() {
        let token = Bytes::from_static(b"0123456789abcdef0123456789abcdef");
        let f = Frame::request_json(
            ServiceCode::Heartbeat,
            7,
            ClientType::Linux,
            &token,
            &serde_json::json!({"mac": "AA:BB:CC:DD:EE:FF"}),
        )
        .expect("json");
        let bytes = f.to_bytes();
        let payload = br#"{"mac":"AA:BB:CC:DD:EE:FF"}"#;
        let mut expected = vec![
            0x01, 0x00, 0x00, 0x00, // version 1.0
            0x28, 0x23, 0x00, 0x00, // 9000
            0x07, 0x00, 0x00, 0x00, // sequence 7
        ];
        expected.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        expected.extend_from_slice(&[0x01, 0x00, 0x02, 0x01]);
        expected.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]); // token 32, supplementary 0
        expected.extend_from_slice(&token);
        expected.extend_from_slice(payload);
        assert_eq!(bytes.to_vec(), expected);
    }
}
