//! tokio codec for `Frame`, with a hard size limit.
//!
//! Any header we cannot trust is a fatal `FrameError`: the connection is then
//! closed by its owner. We never skip bytes to "resync" as the original
//! terminal did (notes §1.6), because a skipped length field makes every
//! following header garbage.

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::frame::Frame;
use super::header::{Header, HEADER_LEN, VERSION_CHIEF};

/// The original terminal refuses bodies over 1 MiB; the 1015 torrent packet is
/// the largest thing either side sends, and big torrents (30 GB image at 4 MiB
/// pieces) stay well below 4 MiB.
pub const DEFAULT_MAX_BODY: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("bad header: version_chief {0}, expected 1")]
    BadVersion(u16),
    #[error("bad header: req_or_res {0}, expected 1 or 2")]
    BadDirection(u8),
    #[error("bad header: data_type {0}, expected 0..=2")]
    BadDataType(u8),
    #[error("frame body of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: u64, limit: usize },
    #[error("connection closed in the middle of a frame ({0} bytes buffered)")]
    Truncated(usize),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_body: usize,
    /// Header of the frame whose body we are waiting for.
    pending: Option<Header>,
}

impl FrameCodec {
    pub fn new(max_body: usize) -> Self {
        FrameCodec {
            max_body,
            pending: None,
        }
    }

    /// Changes the largest body accepted from the next frame on.
    pub fn set_max_body(&mut self, max_body: usize) {
        self.max_body = max_body;
    }

    pub fn validate(&self, h: &Header) -> Result<(), FrameError> {
        if h.version_chief != VERSION_CHIEF {
            return Err(FrameError::BadVersion(h.version_chief));
        }
        if h.req_or_res != 1 && h.req_or_res != 2 {
            return Err(FrameError::BadDirection(h.req_or_res));
        }
        if h.data_type > 2 {
            return Err(FrameError::BadDataType(h.data_type));
        }
        // `encoding` is not checked: the vendor's server and test terminal
        // send 1 on plain JSON and the vendor ignores the field (notes §11).
        if h.body_len() > self.max_body as u64 {
            return Err(FrameError::TooLarge {
                size: h.body_len(),
                limit: self.max_body,
            });
        }
        Ok(())
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BODY)
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let header = match self.pending {
            Some(h) => h,
            None => {
                if src.len() < HEADER_LEN {
                    return Ok(None);
                }
                let Some(h) = Header::parse(&src[..HEADER_LEN]) else {
                    return Ok(None);
                };
                self.validate(&h)?;
                src.advance(HEADER_LEN);
                self.pending = Some(h);
                h
            }
        };
        // Bounded by validate(): fits in usize.
        let body_len = header.body_len() as usize;
        if src.len() < body_len {
            src.reserve(body_len - src.len());
            return Ok(None);
        }
        self.pending = None;
        src.advance(usize::from(header.supplementary));
        let token = src.split_to(usize::from(header.token_length)).freeze();
        let payload = src.split_to(header.data_size as usize).freeze();
        Ok(Some(Frame {
            service_code: header.service_code,
            sequence_code: header.sequence_code,
            data_type: header.data_type,
            client_type: header.client_type,
            req_or_res: header.req_or_res,
            token,
            payload,
        }))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() && self.pending.is_none() => Ok(None),
            None => Err(FrameError::Truncated(buf.len())),
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        let size = (frame.token.len() + frame.payload.len()) as u64;
        if size > self.max_body as u64 || frame.token.len() > usize::from(u16::MAX) {
            return Err(FrameError::TooLarge {
                size,
                limit: self.max_body,
            });
        }
        frame.write_to(dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codes::ServiceCode;
    use crate::protocol::header::ClientType;
    use bytes::{BufMut, Bytes};

    fn sample() -> Frame {
        Frame::request_json(
            ServiceCode::TerminalLogin,
            3,
            ClientType::Linux,
            &Bytes::new(),
            &serde_json::json!({"mac":"AA:BB:CC:DD:EE:FF","ip":"10.0.0.2"}),
        )
        .expect("json")
    }

    #[test]
    fn round_trip_byte_by_byte() {
        let f = sample();
        let bytes = f.to_bytes();
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        let mut out = None;
        for (i, b) in bytes.iter().enumerate() {
            buf.put_u8(*b);
            let got = codec.decode(&mut buf).expect("valid");
            if i + 1 < bytes.len() {
                assert!(got.is_none(), "frame completed early at byte {i}");
            } else {
                out = got;
            }
        }
        assert_eq!(out, Some(f));
    }

    /// The vendor D test terminal's login: the header `encoding` is 1 on a
    /// plain JSON body (bytes as in the v2.28 transcript, offset 17 set).
    #[test]
    fn encoding_one_on_plain_json_is_read_like_zero() {
        let mut hdr: Vec<u8> = [
            0x01, 0x00, 0x00, 0x00, 0x29, 0x23, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x33, 0x00,
            0x00, 0x00, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x00, 0x00,
        ]
        .to_vec();
        hdr[17] = 1;
        let body = b"{\n\t\"mac\":\t\"52:54:00:C0:FF:EE\",\n\t\"ip\":\t\"127.0.0.1\"\n}";
        assert_eq!(body.len(), 0x33);
        let mut buf = BytesMut::from(&hdr[..]);
        buf.extend_from_slice(body);
        let f = FrameCodec::default()
            .decode(&mut buf)
            .expect("encoding 1 accepted")
            .expect("whole frame");
        assert_eq!(f.service(), Some(ServiceCode::TerminalLogin));
        assert_eq!(&f.payload[..], &body[..]);
    }

    #[test]
    fn two_frames_back_to_back() {
        let f = sample();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&f.to_bytes());
        buf.extend_from_slice(&f.to_bytes());
        let mut codec = FrameCodec::default();
        assert_eq!(codec.decode(&mut buf).expect("ok"), Some(f.clone()));
        assert_eq!(codec.decode(&mut buf).expect("ok"), Some(f));
        assert!(buf.is_empty());
    }

    #[test]
    fn supplementary_is_skipped() {
        let f = sample();
        let mut h = f.header();
        h.supplementary = 5;
        let mut buf = BytesMut::new();
        h.write(&mut buf);
        buf.extend_from_slice(b"XXXXX");
        buf.extend_from_slice(&f.payload);
        let got = FrameCodec::default().decode(&mut buf).expect("ok");
        assert_eq!(got.map(|g| g.payload), Some(f.payload));
    }

    #[test]
    fn oversize_is_refused_before_buffering() {
        let mut h = sample().header();
        h.data_size = u32::MAX;
        let mut buf = BytesMut::new();
        h.write(&mut buf);
        let err = FrameCodec::new(1024)
            .decode(&mut buf)
            .expect_err("too large");
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn garbage_header_is_an_error() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]);
        assert!(FrameCodec::default().decode(&mut buf).is_err());
    }

    #[test]
    fn eof_inside_frame_is_truncated() {
        let bytes = sample().to_bytes();
        let mut buf = BytesMut::from(&bytes[..30]);
        let mut codec = FrameCodec::default();
        assert!(codec.decode(&mut buf).expect("partial").is_none());
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(FrameError::Truncated(_))
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let n = rng.usize(0..200);
            let mut buf: BytesMut = (0..n).map(|_| rng.u8(..)).collect::<Vec<_>>()[..].into();
            let mut codec = FrameCodec::new(4096);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }
    }
}
