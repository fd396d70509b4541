#![no_main]
//! Feeds arbitrary bytes to the frame decoder in arbitrary chunk sizes. It
//! must never panic, and every frame it yields must re-encode to bytes that
//! decode to the same frame.

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;
use voi::protocol::FrameCodec;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let chunk = usize::from(data[0] % 31) + 1;
    let mut codec = FrameCodec::new(64 * 1024);
    let mut buf = BytesMut::new();
    for piece in data[1..].chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let bytes = frame.to_bytes();
                    let mut again = BytesMut::from(&bytes[..]);
                    let decoded = FrameCodec::new(64 * 1024).decode(&mut again);
                    assert_eq!(decoded.ok().flatten().as_ref(), Some(&frame));
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
