#![no_main]
//! A .torrent file as the agent receives it in 1015 or fetches it by URL:
//! bencode, then our checks (single file, safe name, size, piece count).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = voi::bt::meta::TorrentMeta::parse(data);
});
