//! BitTorrent pieces that do not need a session: creating .torrent files.
pub mod bencode;
pub mod torrent;
