//! The server's embedded store (redb): terminals, desktop groups, the
//! numbering session and counters. redb is pure Rust (no C toolchain for
//! cross builds), ACID with fsync on commit, and needs no schema migration
//! for the JSON records we keep.

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

use crate::protocol::messages::{DesktopGroup, TerminalConfig};
use crate::protocol::BatchNo;

const TERMINALS: TableDefinition<&str, &[u8]> = TableDefinition::new("terminals");
const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("desktop_groups");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Each library layer's version (`layer_versions.rs`), by layer name.
const LAYER_VERSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("layer_versions");
/// Operator actions, by sequence number (`AuditEntry`).
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

/// One operator action: who, what, on which terminals, how it ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    #[serde(default)]
    pub seq: u64,
    /// ms since the epoch.
    pub at_ms: u64,
    pub at: String,
    /// The token's holder ("operator": there is one token), and from where.
    pub who: String,
    pub from: String,
    /// "PUT /api/v1/desktop_groups".
    pub action: String,
    #[serde(default)]
    pub terminals: Vec<String>,
    /// HTTP status, and the envelope's code and message when there is one.
    pub status: u16,
    #[serde(default)]
    pub result: String,
}

#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(String);

fn e<E: std::fmt::Display>(err: E) -> StoreError {
    StoreError(err.to_string())
}

/// Everything the server keeps about one terminal: its configuration as
/// 9005 serves it (stored flat, so the record reads like that body), and
/// what the server learned on its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TerminalRecord {
    #[serde(flatten)]
    pub config: TerminalConfig,
    #[serde(default)]
    pub client_type: u8,
    #[serde(default)]
    pub first_seen: String,
    #[serde(default)]
    pub last_login: String,
    /// The latest report of each kind the terminal sent (performance,
    /// desktop info, BT progress per torrent, ...).
    #[serde(default)]
    pub reports: BTreeMap<String, serde_json::Value>,
    /// An operator's choice of desktop delivery for this terminal; `None`
    /// follows its software version (see `generation.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<super::generation::Delivery>,
    /// Whether it may join (`admission.rs`).
    #[serde(default)]
    pub admission: super::admission::Admission,
    /// Our agent's report on waking it (9004 `wake`); none from the
    /// vendor's terminals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake: Option<crate::protocol::messages::WakeInfo>,
    /// The room (group of terminals) an operator put it in: what a class
    /// schedule and `ctl wake --room` select.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub room: String,
    /// An operator marked it as a terminal that may upload on its own (a
    /// teacher's machine): its 9018 is answered yes without a 1016/1020.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub may_upload: bool,
    /// Our agent's last upgrade outcome (9004 `upgrade`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<crate::protocol::messages::UpgradeReport>,
}

impl TerminalRecord {
    /// Which generation of terminal software this is (`generation.rs`).
    pub fn generation(&self) -> super::generation::Generation {
        super::generation::Generation::new(&self.config.soft_version, self.delivery)
    }

    pub fn new(mac: &str) -> Self {
        TerminalRecord {
            config: TerminalConfig {
                mac: mac.into(),
                terminal_id: -1,
                // Never configured: 9004 answers -1, as the vendor server
                // does; the first 9006 or operator change makes it 0.
                conf_version: -1,
                is_dhcp: 1,
                ..Default::default()
            },
            client_type: 0,
            first_seen: chrono::Local::now().to_rfc3339(),
            last_login: String::new(),
            reports: BTreeMap::new(),
            delivery: None,
            admission: Default::default(),
            wake: None,
            room: String::new(),
            may_upload: false,
            upgrade: None,
        }
    }
}

/// What `Store::sync_layer_versions` changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LayerSync {
    pub bumped: Vec<super::layer_versions::Bumped>,
    pub groups_changed: Vec<String>,
    pub overridden: Vec<super::layer_versions::Overridden>,
}

/// A running numbering session (1011 / 9009 / 9010).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderSession {
    pub batch_no: BatchNo,
    pub start_id: i64,
    pub current_id: i64,
    pub macs: Vec<String>,
    /// mac → confirmed number
    pub confirmed: BTreeMap<String, i64>,
}

impl OrderSession {
    /// The smallest number ≥ start not yet taken.
    pub fn next_free(&self) -> i64 {
        let taken: std::collections::BTreeSet<i64> = self.confirmed.values().copied().collect();
        (self.start_id..)
            .find(|n| !taken.contains(n))
            .unwrap_or(self.start_id)
    }

    pub fn unconfirmed(&self) -> Vec<String> {
        self.macs
            .iter()
            .filter(|m| !self.confirmed.contains_key(*m))
            .cloned()
            .collect()
    }
}

pub struct Store {
    db: Database,
    /// Write transactions, commit included (for `/metrics`).
    pub commit_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Commits made without fsync since the last durable one (`flush`).
    unflushed: std::sync::atomic::AtomicBool,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path).map_err(e)?;
        let tx = db.begin_write().map_err(e)?;
        tx.open_table(TERMINALS).map_err(e)?;
        tx.open_table(GROUPS).map_err(e)?;
        tx.open_table(META).map_err(e)?;
        tx.open_table(AUDIT).map_err(e)?;
        tx.open_table(LAYER_VERSIONS).map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(Store {
            db,
            commit_seconds: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 16),
            ),
            unflushed: Default::default(),
        })
    }

    /// Makes every earlier commit durable (one fsync for all of them).
    pub fn flush(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        if self.unflushed.swap(false, Ordering::AcqRel) {
            let tx = self.db.begin_write().map_err(e)?;
            tx.commit().map_err(e)?;
        }
        Ok(())
    }

    fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let tx = self.db.begin_read().map_err(e)?;
        let t = tx.open_table(table).map_err(e)?;
        match t.get(key).map_err(e)? {
            Some(v) => serde_json::from_slice(v.value()).map(Some).map_err(e),
            None => Ok(None),
        }
    }

    fn all<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        let tx = self.db.begin_read().map_err(e)?;
        let t = tx.open_table(table).map_err(e)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(e)? {
            let (_, v) = item.map_err(e)?;
            match serde_json::from_slice(v.value()) {
                Ok(x) => out.push(x),
                Err(err) => log::error!("skipping unreadable record in {}: {err}", table.name()),
            }
        }
        Ok(out)
    }

    /// Read-modify-write of one record in a single transaction.
    fn modify<T: DeserializeOwned + Serialize, R>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        f: impl FnOnce(&mut Option<T>) -> R,
    ) -> Result<R, StoreError> {
        self.modify_with(table, key, false, f)
    }

    /// As `modify`; with `eventual_if_present`, a change to a record that
    /// already exists commits without fsync (durable at the next `flush`),
    /// while a new record is committed durably at once.
    fn modify_with<T: DeserializeOwned + Serialize, R>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        eventual_if_present: bool,
        f: impl FnOnce(&mut Option<T>) -> R,
    ) -> Result<R, StoreError> {
        let started = std::time::Instant::now();
        let mut tx = self.db.begin_write().map_err(e)?;
        let (r, existed) = {
            let mut t = tx.open_table(table).map_err(e)?;
            let mut cur: Option<T> = match t.get(key).map_err(e)? {
                Some(v) => serde_json::from_slice(v.value()).ok(),
                None => None,
            };
            let existed = cur.is_some();
            let r = f(&mut cur);
            match cur {
                Some(v) => {
                    let bytes = serde_json::to_vec(&v).map_err(e)?;
                    t.insert(key, bytes.as_slice()).map_err(e)?;
                }
                None => {
                    t.remove(key).map_err(e)?;
                }
            }
            (r, existed)
        };
        if eventual_if_present && existed {
            tx.set_durability(redb::Durability::Eventual);
            self.unflushed
                .store(true, std::sync::atomic::Ordering::Release);
        }
        tx.commit().map_err(e)?;
        self.commit_seconds.observe(started.elapsed().as_secs_f64());
        Ok(r)
    }

    pub fn terminal(&self, mac: &str) -> Result<Option<TerminalRecord>, StoreError> {
        self.get(TERMINALS, mac)
    }

    pub fn terminals(&self) -> Result<Vec<TerminalRecord>, StoreError> {
        self.all(TERMINALS)
    }

    /// How many terminal records there are (redb keeps the count).
    pub fn terminal_count(&self) -> Result<u64, StoreError> {
        use redb::ReadableTableMetadata;
        let tx = self.db.begin_read().map_err(e)?;
        let t = tx.open_table(TERMINALS).map_err(e)?;
        t.len().map_err(e)
    }

    /// Updates (creating if needed) a terminal record and returns it.
    pub fn update_terminal(
        &self,
        mac: &str,
        f: impl FnOnce(&mut TerminalRecord),
    ) -> Result<TerminalRecord, StoreError> {
        self.update_terminal_as(mac, false, f)
    }

    /// As `update_terminal`, for what a terminal reports again at every
    /// login (its address, type, version, free space): the commit skips its
    /// fsync and becomes durable at the next `flush` (the server flushes
    /// every second), so a storm of logins is not a storm of fsyncs. A
    /// crash loses at most that second of re-reported facts; a terminal
    /// seen for the first time is committed durably at once.
    pub fn update_terminal_reported(
        &self,
        mac: &str,
        f: impl FnOnce(&mut TerminalRecord),
    ) -> Result<TerminalRecord, StoreError> {
        self.update_terminal_as(mac, true, f)
    }

    fn update_terminal_as(
        &self,
        mac: &str,
        reported: bool,
        f: impl FnOnce(&mut TerminalRecord),
    ) -> Result<TerminalRecord, StoreError> {
        self.modify_with(
            TERMINALS,
            mac,
            reported,
            |cur: &mut Option<TerminalRecord>| {
                let rec = cur.get_or_insert_with(|| TerminalRecord::new(mac));
                f(rec);
                rec.clone()
            },
        )
    }

    pub fn delete_terminal(&self, mac: &str) -> Result<bool, StoreError> {
        self.modify(TERMINALS, mac, |cur: &mut Option<TerminalRecord>| {
            cur.take().is_some()
        })
    }

    pub fn groups(&self) -> Result<Vec<DesktopGroup>, StoreError> {
        self.all(GROUPS)
    }

    pub fn put_group(&self, g: &DesktopGroup) -> Result<(), StoreError> {
        let g = g.clone();
        self.modify(
            GROUPS,
            &g.desktop_group_uuid.clone(),
            |cur: &mut Option<DesktopGroup>| *cur = Some(g),
        )
    }

    /// Brings the layer versions in line with the library (layer → info
    /// hash), gives every stored group its layers' versions, and, when
    /// `put` is given, stores that group with the versions too: all in one
    /// transaction. Returns the layers whose version moved, the uuids of
    /// stored groups whose numbers changed, and the entries of `put` whose
    /// numbers the library overrode.
    pub fn sync_layer_versions(
        &self,
        library: &BTreeMap<String, String>,
        put: Option<&mut DesktopGroup>,
    ) -> Result<LayerSync, StoreError> {
        use super::layer_versions::{apply, reconcile, LayerVersion};
        let tx = self.db.begin_write().map_err(e)?;
        let mut out = LayerSync::default();
        {
            let mut vt = tx.open_table(LAYER_VERSIONS).map_err(e)?;
            let mut gt = tx.open_table(GROUPS).map_err(e)?;
            let mut versions: BTreeMap<String, LayerVersion> = BTreeMap::new();
            for item in vt.iter().map_err(e)? {
                let (k, v) = item.map_err(e)?;
                if let Ok(v) = serde_json::from_slice(v.value()) {
                    versions.insert(k.value().to_string(), v);
                }
            }
            let mut groups: Vec<DesktopGroup> = Vec::new();
            for item in gt.iter().map_err(e)? {
                let (_, v) = item.map_err(e)?;
                if let Ok(g) = serde_json::from_slice(v.value()) {
                    groups.push(g);
                }
            }
            let before = versions.clone();
            let mut with_put = groups.clone();
            if let Some(g) = put.as_deref() {
                with_put.push(g.clone());
            }
            out.bumped = reconcile(&mut versions, library, &with_put);
            if versions != before {
                let keys: Vec<String> = before.keys().cloned().collect();
                for k in keys.iter().filter(|k| !versions.contains_key(*k)) {
                    vt.remove(k.as_str()).map_err(e)?;
                }
                for (k, v) in &versions {
                    if before.get(k) != Some(v) {
                        let bytes = serde_json::to_vec(v).map_err(e)?;
                        vt.insert(k.as_str(), bytes.as_slice()).map_err(e)?;
                    }
                }
            }
            for mut g in groups {
                if !apply(&mut g, &versions).is_empty() {
                    let bytes = serde_json::to_vec(&g).map_err(e)?;
                    gt.insert(g.desktop_group_uuid.as_str(), bytes.as_slice())
                        .map_err(e)?;
                    out.groups_changed.push(g.desktop_group_uuid.clone());
                }
            }
            if let Some(g) = put {
                out.overridden = apply(g, &versions);
                let bytes = serde_json::to_vec(&*g).map_err(e)?;
                gt.insert(g.desktop_group_uuid.as_str(), bytes.as_slice())
                    .map_err(e)?;
            }
        }
        tx.commit().map_err(e)?;
        Ok(out)
    }

    /// A layer's version, when the library has had it.
    pub fn layer_version(&self, layer: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .get::<super::layer_versions::LayerVersion>(LAYER_VERSIONS, layer)?
            .map(|v| v.operate_id))
    }

    pub fn delete_group(&self, uuid: &str) -> Result<bool, StoreError> {
        self.modify(GROUPS, uuid, |cur: &mut Option<DesktopGroup>| {
            cur.take().is_some()
        })
    }

    /// A fresh batch number, never reused across restarts.
    pub fn next_batch_no(&self) -> Result<i64, StoreError> {
        self.modify(META, "batch_no", |cur: &mut Option<i64>| {
            let n = cur.unwrap_or(0) + 1;
            *cur = Some(n);
            n
        })
    }

    /// Appends an operator action, then drops the oldest beyond `max`
    /// entries or older than `max_age_ms`.
    pub fn append_audit(
        &self,
        mut entry: AuditEntry,
        max: usize,
        max_age_ms: u64,
    ) -> Result<u64, StoreError> {
        let tx = self.db.begin_write().map_err(e)?;
        let seq = {
            let mut t = tx.open_table(AUDIT).map_err(e)?;
            let next = t
                .last()
                .map_err(e)?
                .map(|(k, _)| k.value() + 1)
                .unwrap_or(1);
            entry.seq = next;
            let bytes = serde_json::to_vec(&entry).map_err(e)?;
            t.insert(next, bytes.as_slice()).map_err(e)?;
            let oldest_kept = entry.at_ms.saturating_sub(max_age_ms);
            loop {
                let len = t.len().map_err(e)? as usize;
                let first = t.first().map_err(e)?.map(|(k, v)| {
                    let at = serde_json::from_slice::<AuditEntry>(v.value())
                        .map(|a| a.at_ms)
                        .unwrap_or(0);
                    (k.value(), at)
                });
                match first {
                    Some((k, at)) if len > max || (at < oldest_kept && k != next) => {
                        t.remove(k).map_err(e)?;
                    }
                    _ => break,
                }
            }
            next
        };
        tx.commit().map_err(e)?;
        Ok(seq)
    }

    /// The newest `limit` operator actions, newest first.
    pub fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let tx = self.db.begin_read().map_err(e)?;
        let t = tx.open_table(AUDIT).map_err(e)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(e)?.rev().take(limit) {
            let (_, v) = item.map_err(e)?;
            if let Ok(a) = serde_json::from_slice(v.value()) {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// The class schedule (`wake/schedule.rs`).
    pub fn schedule(&self) -> Result<Vec<super::wake::schedule::ScheduleEntry>, StoreError> {
        Ok(self.get(META, "schedule")?.unwrap_or_default())
    }

    pub fn put_schedule(
        &self,
        entries: &[super::wake::schedule::ScheduleEntry],
    ) -> Result<(), StoreError> {
        let entries = entries.to_vec();
        self.modify(
            META,
            "schedule",
            |cur: &mut Option<Vec<super::wake::schedule::ScheduleEntry>>| *cur = Some(entries),
        )
    }

    pub fn order(&self) -> Result<Option<OrderSession>, StoreError> {
        self.get(META, "order")
    }

    pub fn modify_order<R>(
        &self,
        f: impl FnOnce(&mut Option<OrderSession>) -> R,
    ) -> Result<R, StoreError> {
        self.modify(META, "order", f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("voi.redb");
        {
            let s = Store::open(&p).expect("open");
            s.update_terminal("AA:BB:CC:DD:EE:FF", |r| r.config.name = "PC-1".into())
                .expect("write");
            assert_eq!(s.next_batch_no().expect("n"), 1);
            assert_eq!(s.next_batch_no().expect("n"), 2);
            s.put_group(&DesktopGroup {
                desktop_group_uuid: "g1".into(),
                ..Default::default()
            })
            .expect("group");
        }
        let s = Store::open(&p).expect("reopen");
        assert_eq!(
            s.terminal("AA:BB:CC:DD:EE:FF")
                .expect("r")
                .map(|r| r.config.name),
            Some("PC-1".into())
        );
        assert_eq!(s.next_batch_no().expect("n"), 3);
        assert_eq!(s.groups().expect("g").len(), 1);
    }

    #[test]
    fn the_audit_trail_is_bounded_by_count_and_age() {
        let d = tempfile::tempdir().expect("tmp");
        let s = Store::open(&d.path().join("a.redb")).expect("open");
        let entry = |at_ms: u64| AuditEntry {
            seq: 0,
            at_ms,
            at: String::new(),
            who: "operator".into(),
            from: String::new(),
            action: "POST /x".into(),
            terminals: vec![],
            status: 200,
            result: String::new(),
        };
        for i in 0..10 {
            s.append_audit(entry(1_000 + i), 5, u64::MAX)
                .expect("append");
        }
        let a = s.audit(100).expect("read");
        assert_eq!(a.len(), 5);
        assert_eq!(a[0].seq, 10, "newest first");
        // Everything older than the age limit goes at the next append.
        s.append_audit(entry(100_000), 5, 1_000).expect("append");
        let a = s.audit(100).expect("read");
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a[0].seq, 11);
    }

    #[test]
    fn next_free_number() {
        let mut o = OrderSession {
            batch_no: BatchNo::Int(1),
            start_id: 10,
            current_id: 10,
            macs: vec!["A".into(), "B".into(), "C".into()],
            confirmed: BTreeMap::new(),
        };
        assert_eq!(o.next_free(), 10);
        o.confirmed.insert("B".into(), 10);
        o.confirmed.insert("A".into(), 12);
        assert_eq!(o.next_free(), 11);
        assert_eq!(o.unconfirmed(), vec!["C".to_string()]);
    }
}
