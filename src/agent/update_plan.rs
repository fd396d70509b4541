//! The update decision run on each 9007 answer (notes §4.5), as a pure
//! function: local layers and the server's desktop groups in, a plan out.
//!
//! Rules, per disk uuid of each group:
//! * Share disk (type 2): kept while its base `operate_id` matches, else
//!   deleted and downloaded again.
//! * A missing or changed base (level 0) invalidates everything above it.
//! * Diffs (levels 1..=max_dif) are kept while their `operate_id` matches.
//!   The first mismatch invalidates that level and everything above it.
//! * Merge mode (`diff_mode = 1`): when the server has committed its level
//!   2 into level 1 (both `operate_id`s one ahead of ours), we do the same
//!   locally — merge our 2 into our 1 — and download only the new level 2,
//!   instead of fetching level 1 again.
//! * Local layers (3 commit temp, 4–5 user) survive only while nothing
//!   below them changed. Level 3 is never kept: we merge directly.
//! * Disks the server no longer lists are deleted, except local data disks
//!   created by add_data_disk.
//! * Restore groups (`desktop_group_restore = 1`) and share disks with
//!   `restore_flag = 1` get their user layer reset at boot.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

use crate::disk::name::{LayerName, SERVER_LEVELS};
use crate::protocol::messages::{DesktopGroup, DiskInfo};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalLayer {
    pub name: LayerName,
    /// None when the catalog does not know it (treated as a mismatch).
    pub operate_id: Option<i64>,
    /// Created locally by add_data_disk: never deleted by this function.
    pub local_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Download {
    pub group_uuid: String,
    pub disk_uuid: String,
    pub level: u8,
    pub disk_type: i64,
    pub prefix: String,
    pub operate_id: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Merge {
    pub child: String,
    pub into: String,
    /// The operate_id the merged layer then carries.
    pub operate_id: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub download: Vec<Download>,
    pub keep: Vec<String>,
    pub merge: Vec<Merge>,
    pub delete: Vec<String>,
    /// Why each layer of `delete` goes, in words for the log.
    pub reasons: BTreeMap<String, String>,
    /// Disk uuids whose user layer is reset at boot.
    pub reset_at_boot: Vec<String>,
}

fn valid_entries(g: &DesktopGroup) -> BTreeMap<String, (i64, BTreeMap<u8, &DiskInfo>)> {
    let mut out: BTreeMap<String, (i64, BTreeMap<u8, &DiskInfo>)> = BTreeMap::new();
    for d in &g.disks {
        let Ok(name) = LayerName::new(&d.prefix, d.dif_level, &d.uuid) else {
            continue;
        };
        if !SERVER_LEVELS.contains(&name.level) {
            continue;
        }
        let max = if d.disk_type == 2 {
            0
        } else {
            d.max_dif.unwrap_or(2).clamp(0, 2)
        };
        if i64::from(name.level) > max {
            continue;
        }
        let e = out
            .entry(name.uuid_str())
            .or_insert((d.disk_type, BTreeMap::new()));
        e.1.insert(name.level, d);
    }
    out
}

pub fn decide(local: &[LocalLayer], groups: &[DesktopGroup]) -> Plan {
    let mut plan = Plan::default();
    let mut by_uuid: BTreeMap<String, BTreeMap<u8, &LocalLayer>> = BTreeMap::new();
    for l in local {
        by_uuid
            .entry(l.name.uuid_str())
            .or_default()
            .insert(l.name.level, l);
    }
    let mut referenced = BTreeSet::new();

    for g in groups {
        for (uuid, (disk_type, server)) in valid_entries(g) {
            if !referenced.insert(uuid.clone()) {
                continue;
            }
            let mine = by_uuid.get(&uuid).cloned().unwrap_or_default();
            let Some(base) = server.get(&0) else { continue };
            let download = |level: u8, plan: &mut Plan| {
                if let Some(d) = server.get(&level) {
                    plan.download.push(Download {
                        group_uuid: g.desktop_group_uuid.clone(),
                        disk_uuid: uuid.clone(),
                        level,
                        disk_type,
                        prefix: d.prefix.clone(),
                        operate_id: d.operate_id,
                    });
                }
            };
            let delete_from = |level: u8, why: &str, plan: &mut Plan| {
                for (l, layer) in mine.range(level..) {
                    let name = layer.name.to_string();
                    let reason = if *l == level {
                        why.to_string()
                    } else {
                        format!("it is built on level {level}, which goes: {why}")
                    };
                    plan.reasons.entry(name.clone()).or_insert(reason);
                    plan.delete.push(name);
                }
            };
            let op = |level: u8| mine.get(&level).and_then(|l| l.operate_id);
            // Why a level the server lists is not ours to keep.
            let changed = |level: u8| -> String {
                let server_op = server.get(&level).map(|d| d.operate_id).unwrap_or(0);
                match (mine.get(&level), op(level)) {
                    (None, _) => format!("level {level} is not here"),
                    (Some(_), None) => format!(
                        "our copy of level {level} has no recorded version; the server's is operate_id {server_op}"
                    ),
                    (Some(_), Some(o)) => format!(
                        "the server's level {level} is a new version (operate_id {o} here, {server_op} on the server)"
                    ),
                }
            };
            let same = |level: u8| {
                server
                    .get(&level)
                    .map(|d| d.operate_id)
                    .is_some_and(|s| op(level) == Some(s))
            };

            let restore = if disk_type == 2 {
                base.restore_flag == Some(1)
            } else {
                g.desktop_group_restore == 1
            };
            if restore {
                plan.reset_at_boot.push(uuid.clone());
            }

            if !same(0) {
                delete_from(0, &changed(0), &mut plan);
                for level in server.keys() {
                    download(*level, &mut plan);
                }
                continue;
            }
            plan.keep.push(mine[&0].name.to_string());

            let mut invalid_from: Option<u8> = None;
            let mut invalid_why = String::new();
            for k in 1..=2u8 {
                match (server.get(&k), mine.get(&k)) {
                    (Some(_), Some(l)) if same(k) => plan.keep.push(l.name.to_string()),
                    (None, None) => {}
                    (None, Some(_)) => {
                        invalid_from = Some(k);
                        invalid_why = format!("the server no longer lists level {k}");
                        break;
                    }
                    (Some(s1), local_k) => {
                        let merged = g.diff_mode == 1
                            && k == 1
                            && local_k.is_some()
                            && op(1).is_some_and(|o| o + 1 == s1.operate_id)
                            && server
                                .get(&2)
                                .is_some_and(|s2| op(2).is_some_and(|o| o + 1 == s2.operate_id));
                        if merged {
                            let (l1, l2) = (&mine[&1], &mine[&2]);
                            plan.merge.push(Merge {
                                child: l2.name.to_string(),
                                into: l1.name.to_string(),
                                operate_id: s1.operate_id,
                            });
                            plan.keep.push(l1.name.to_string());
                            download(2, &mut plan);
                            // The old level 2 disappears in the merge; local
                            // layers above it were built on old data.
                            delete_from(
                                3,
                                "it was built on the level 2 that merges into level 1",
                                &mut plan,
                            );
                            invalid_from = None;
                            break;
                        }
                        invalid_from = Some(k);
                        invalid_why = changed(k);
                        for level in server.keys().filter(|l| **l >= k) {
                            download(*level, &mut plan);
                        }
                        break;
                    }
                }
                if k == 2 {
                    // Nothing below changed: user layers stay, level 3 goes.
                    for (l, layer) in mine.range(3..) {
                        if *l == 3 {
                            plan.reasons.insert(
                                layer.name.to_string(),
                                "a level 3 (commit temp) is never kept: it is merged at once"
                                    .into(),
                            );
                            plan.delete.push(layer.name.to_string());
                        } else {
                            plan.keep.push(layer.name.to_string());
                        }
                    }
                }
            }
            if let Some(k) = invalid_from {
                delete_from(k, &invalid_why, &mut plan);
            }
        }
    }

    for (uuid, layers) in &by_uuid {
        if referenced.contains(uuid) {
            continue;
        }
        for l in layers.values() {
            if l.local_only {
                plan.keep.push(l.name.to_string());
            } else {
                plan.reasons.insert(
                    l.name.to_string(),
                    format!("no desktop group the server lists has disk {uuid}"),
                );
                plan.delete.push(l.name.to_string());
            }
        }
    }
    plan.delete.sort();
    plan.delete.dedup();
    plan.keep.retain(|k| !plan.delete.contains(k));
    plan
}

#[cfg(test)]
mod reason_tests {
    use super::*;
    use crate::protocol::Sectors;

    const D: &str = "91f9d1ba-cb4a-41ba-971a-618f9e306571";

    #[test]
    fn every_deletion_has_its_reason() {
        let g = DesktopGroup {
            desktop_group_uuid: "g".into(),
            disks: [(0, 0), (1, 2)]
                .iter()
                .map(|(level, op)| DiskInfo {
                    uuid: D.into(),
                    dif_level: *level,
                    prefix: "voi".into(),
                    max_dif: Some(2),
                    operate_id: *op,
                    real_size: Sectors(1),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let local: Vec<LocalLayer> = [(0u8, 0i64), (1, 1), (4, 0)]
            .iter()
            .map(|(l, op)| LocalLayer {
                name: LayerName::new("voi", i64::from(*l), D).expect("name"),
                operate_id: Some(*op),
                local_only: false,
            })
            .collect();
        let plan = decide(&local, &[g]);
        assert_eq!(plan.delete.len(), 2, "{plan:?}");
        for d in &plan.delete {
            assert!(plan.reasons.contains_key(d), "{d} has no reason: {plan:?}");
        }
        let l1 = &plan.reasons[&format!("voi_1_{D}")];
        assert!(l1.contains("operate_id 1 here, 2 on the server"), "{l1}");
        let l4 = &plan.reasons[&format!("voi_4_{D}")];
        assert!(l4.contains("built on level 1"), "{l4}");
        assert!(!plan.delete.contains(&format!("voi_0_{D}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Sectors;

    const D: &str = "91f9d1ba-cb4a-41ba-971a-618f9e306571";
    const S: &str = "22222222-cb4a-41ba-971a-618f9e306571";
    const G: &str = "f15a1759-789e-4e17-a3e1-e723121e9314";

    fn disk(uuid: &str, ty: i64, level: i64, op: i64) -> DiskInfo {
        DiskInfo {
            uuid: uuid.into(),
            disk_type: ty,
            dif_level: level,
            prefix: "voi".into(),
            max_dif: Some(2),
            operate_id: op,
            real_size: Sectors(1),
            ..Default::default()
        }
    }

    fn group(diff_mode: i64, restore: i64, disks: Vec<DiskInfo>) -> DesktopGroup {
        DesktopGroup {
            desktop_group_uuid: G.into(),
            diff_mode,
            desktop_group_restore: restore,
            disks,
            ..Default::default()
        }
    }

    fn local(uuid: &str, layers: &[(u8, i64)]) -> Vec<LocalLayer> {
        layers
            .iter()
            .map(|(l, op)| LocalLayer {
                name: LayerName::new("voi", i64::from(*l), uuid).expect("name"),
                operate_id: Some(*op),
                local_only: false,
            })
            .collect()
    }

    fn n(uuid: &str, l: u8) -> String {
        format!("voi_{l}_{uuid}")
    }

    fn levels(p: &Plan) -> Vec<u8> {
        p.download.iter().map(|d| d.level).collect()
    }

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            local: Vec<LocalLayer>,
            group: DesktopGroup,
            download: Vec<u8>,
            delete: Vec<String>,
            merge: usize,
            keep_has: Vec<String>,
            reset: bool,
        }
        let server3 = |d: i64, o1: i64, o2: i64| {
            group(
                d,
                0,
                vec![disk(D, 0, 0, 0), disk(D, 0, 1, o1), disk(D, 0, 2, o2)],
            )
        };
        let cases = vec![
            Case {
                name: "fresh terminal downloads every level",
                local: vec![],
                group: server3(0, 1, 1),
                download: vec![0, 1, 2],
                delete: vec![],
                merge: 0,
                keep_has: vec![],
                reset: false,
            },
            Case {
                name: "everything current: keep, user layer stays",
                local: local(D, &[(0, 0), (1, 1), (2, 1), (4, 0)]),
                group: server3(0, 1, 1),
                download: vec![],
                delete: vec![],
                merge: 0,
                keep_has: vec![n(D, 0), n(D, 1), n(D, 2), n(D, 4)],
                reset: false,
            },
            Case {
                name: "level 2 operate_id changed: replace 2, drop user layer",
                local: local(D, &[(0, 0), (1, 1), (2, 1), (4, 0)]),
                group: server3(0, 1, 2),
                download: vec![2],
                delete: vec![n(D, 2), n(D, 4)],
                merge: 0,
                keep_has: vec![n(D, 0), n(D, 1)],
                reset: false,
            },
            Case {
                name: "no-merge mode, both diffs moved on: fetch 1 and 2 again",
                local: local(D, &[(0, 0), (1, 1), (2, 1)]),
                group: server3(0, 2, 2),
                download: vec![1, 2],
                delete: vec![n(D, 1), n(D, 2)],
                merge: 0,
                keep_has: vec![n(D, 0)],
                reset: false,
            },
            Case {
                name: "merge mode, server committed 2 into 1: merge locally, fetch new 2",
                local: local(D, &[(0, 0), (1, 1), (2, 1), (3, 0), (4, 0)]),
                group: server3(1, 2, 2),
                download: vec![2],
                delete: vec![n(D, 3), n(D, 4)],
                merge: 1,
                keep_has: vec![n(D, 0), n(D, 1)],
                reset: false,
            },
            Case {
                name: "merge mode but operate_ids jumped by more than one: refetch",
                local: local(D, &[(0, 0), (1, 1), (2, 1)]),
                group: server3(1, 3, 3),
                download: vec![1, 2],
                delete: vec![n(D, 1), n(D, 2)],
                merge: 0,
                keep_has: vec![n(D, 0)],
                reset: false,
            },
            Case {
                name: "base changed: everything goes",
                local: local(D, &[(0, 0), (1, 1), (2, 1)]),
                group: group(0, 0, vec![disk(D, 0, 0, 5), disk(D, 0, 1, 1)]),
                download: vec![0, 1],
                delete: vec![n(D, 0), n(D, 1), n(D, 2)],
                merge: 0,
                keep_has: vec![],
                reset: false,
            },
            Case {
                name: "max_dif 1: a listed level 2 is ignored and the local 2 dropped",
                local: local(D, &[(0, 0), (1, 1), (2, 1)]),
                group: group(
                    0,
                    0,
                    vec![
                        disk(D, 0, 0, 0),
                        DiskInfo {
                            max_dif: Some(1),
                            ..disk(D, 0, 1, 1)
                        },
                        DiskInfo {
                            max_dif: Some(1),
                            ..disk(D, 0, 2, 1)
                        },
                    ],
                ),
                download: vec![],
                delete: vec![n(D, 2)],
                merge: 0,
                keep_has: vec![n(D, 0), n(D, 1)],
                reset: false,
            },
            Case {
                name: "restore group: user layer reset at boot",
                local: local(D, &[(0, 0), (4, 0)]),
                group: group(0, 1, vec![disk(D, 0, 0, 0)]),
                download: vec![],
                delete: vec![],
                merge: 0,
                keep_has: vec![n(D, 0), n(D, 4)],
                reset: true,
            },
            Case {
                name: "share disk with a new version: replaced",
                local: local(S, &[(0, 3)]),
                group: group(
                    0,
                    0,
                    vec![DiskInfo {
                        restore_flag: Some(1),
                        ..disk(S, 2, 0, 4)
                    }],
                ),
                download: vec![0],
                delete: vec![n(S, 0)],
                merge: 0,
                keep_has: vec![],
                reset: true,
            },
            Case {
                name: "share disk unchanged: kept",
                local: local(S, &[(0, 3)]),
                group: group(0, 0, vec![disk(S, 2, 0, 3)]),
                download: vec![],
                delete: vec![],
                merge: 0,
                keep_has: vec![n(S, 0)],
                reset: false,
            },
            Case {
                name: "disk no longer listed: deleted",
                local: local(S, &[(0, 3), (4, 0)]),
                group: group(0, 0, vec![]),
                download: vec![],
                delete: vec![n(S, 0), n(S, 4)],
                merge: 0,
                keep_has: vec![],
                reset: false,
            },
            Case {
                name: "server dropped level 2: local 2 deleted",
                local: local(D, &[(0, 0), (1, 1), (2, 1)]),
                group: group(0, 0, vec![disk(D, 0, 0, 0), disk(D, 0, 1, 1)]),
                download: vec![],
                delete: vec![n(D, 2)],
                merge: 0,
                keep_has: vec![n(D, 0), n(D, 1)],
                reset: false,
            },
            Case {
                name: "unknown local operate_id counts as a mismatch",
                local: vec![LocalLayer {
                    name: LayerName::new("voi", 0, D).expect("n"),
                    operate_id: None,
                    local_only: false,
                }],
                group: group(0, 0, vec![disk(D, 0, 0, 0)]),
                download: vec![0],
                delete: vec![n(D, 0)],
                merge: 0,
                keep_has: vec![],
                reset: false,
            },
        ];
        for c in cases {
            let p = decide(&c.local, &[c.group]);
            assert_eq!(levels(&p), c.download, "{}: download {p:?}", c.name);
            let mut want = c.delete.clone();
            want.sort();
            assert_eq!(p.delete, want, "{}: delete", c.name);
            assert_eq!(p.merge.len(), c.merge, "{}: merge", c.name);
            for k in &c.keep_has {
                assert!(p.keep.contains(k), "{}: keep {k} in {:?}", c.name, p.keep);
            }
            assert_eq!(!p.reset_at_boot.is_empty(), c.reset, "{}: reset", c.name);
        }
    }

    #[test]
    fn local_data_disks_survive_and_bad_entries_are_ignored() {
        let mut l = local(S, &[(0, 0)]);
        l[0].local_only = true;
        let bad = DiskInfo {
            uuid: "../../etc".into(),
            ..disk(D, 0, 0, 0)
        };
        let p = decide(&l, &[group(0, 0, vec![bad])]);
        assert!(p.download.is_empty());
        assert_eq!(p.keep, vec![n(S, 0)]);
        assert!(p.delete.is_empty());
    }
}
