//! The agent's layer transfers.
//!
//! * `tasks`: every BitTorrent transfer on the engine, its record on disk and
//!   its stages (see `STATE.md`);
//! * `server_link`: the agent's side towards the server: it starts the
//!   engine, asks for wanted layers (9023), fetches torrents, reports
//!   progress and results (9025, 9015) and uploads layers (9018, 9014).
pub mod server_link;
pub mod tasks;

pub use server_link::{fetch_torrent, UrlDownload};
pub use tasks::{Kind, Stage, TaskRecord, Transfers};
