#![no_main]
//! The binary structs of 1015 (send_torrent, 150-byte header + torrent) and
//! 9014 (torrent upload, 66-byte header + torrent). Parsing arbitrary bytes
//! must never panic, and whatever parses must encode back to bytes that
//! parse to the same value.

use libfuzzer_sys::fuzz_target;
use voi::protocol::torrent_struct::{SendTorrent, UploadTorrent};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = SendTorrent::parse(data) {
        let again = SendTorrent::parse(&s.encode());
        assert_eq!(again.as_ref(), Ok(&s));
    }
    if let Ok(u) = UploadTorrent::parse(data) {
        let again = UploadTorrent::parse(&u.encode());
        assert_eq!(again.as_ref(), Ok(&u));
    }
});
