//! The server owns every layer's `operate_id`: it is the layer's version in
//! the image library, and it moves only when the layer's content does (a
//! new info hash). Terminals take a new operate_id as a new copy of the
//! layer and fetch it again, so a number that moved because a form was
//! saved would cost the room a whole redistribution (issue 37).
//!
//! The versions live in the store beside the groups (`layer_versions`),
//! and every stored group carries its layers' versions. Both are brought
//! in line in one transaction (`Store::sync_layer_versions`), after every
//! library scan and before a group is stored, so a crash between the two
//! leaves nothing half done.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::protocol::messages::DesktopGroup;

/// What the store remembers of one layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerVersion {
    pub info_hash: String,
    pub operate_id: i64,
}

/// A layer whose content changed, so its version moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Bumped {
    pub layer: String,
    pub from: i64,
    pub to: i64,
}

/// A disk entry whose operate_id a client sent and the library overrode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Overridden {
    pub layer: String,
    pub sent: i64,
    pub library: i64,
}

/// Records of layers neither in the library nor named by a group are
/// forgotten beyond this many (a library that churns through layer names
/// does not grow the table without end).
pub const MAX_FORGOTTEN_RECORDS: usize = 4096;

/// Brings `versions` in line with the library (layer → info hash): a new
/// layer starts at the highest operate_id a group already gives it (what
/// terminals already hold, so adopting this rule costs nobody a fetch), a
/// changed hash moves the version by one, an unchanged one keeps it.
pub fn reconcile(
    versions: &mut BTreeMap<String, LayerVersion>,
    library: &BTreeMap<String, String>,
    groups: &[DesktopGroup],
) -> Vec<Bumped> {
    let mut bumped = Vec::new();
    for (layer, info_hash) in library {
        match versions.get_mut(layer) {
            Some(v) if v.info_hash == *info_hash => {}
            Some(v) => {
                let from = v.operate_id;
                v.operate_id = from.saturating_add(1);
                v.info_hash = info_hash.clone();
                bumped.push(Bumped {
                    layer: layer.clone(),
                    from,
                    to: v.operate_id,
                });
            }
            None => {
                let held = groups
                    .iter()
                    .flat_map(|g| g.disks.iter())
                    .filter(|d| d.layer_name() == *layer)
                    .map(|d| d.operate_id.max(0))
                    .max()
                    .unwrap_or(0);
                versions.insert(
                    layer.clone(),
                    LayerVersion {
                        info_hash: info_hash.clone(),
                        operate_id: held,
                    },
                );
            }
        }
    }
    let forgotten: Vec<String> = versions
        .keys()
        .filter(|l| !library.contains_key(*l))
        .filter(|l| {
            !groups
                .iter()
                .flat_map(|g| g.disks.iter())
                .any(|d| d.layer_name() == **l)
        })
        .cloned()
        .collect();
    if forgotten.len() > MAX_FORGOTTEN_RECORDS {
        for l in &forgotten[..forgotten.len() - MAX_FORGOTTEN_RECORDS] {
            versions.remove(l);
        }
    }
    bumped
}

/// Gives every disk of `g` its layer's version; returns the entries whose
/// number differed. A layer without a record keeps its number (it is not
/// in the library, and the caller refuses such a group anyway).
pub fn apply(g: &mut DesktopGroup, versions: &BTreeMap<String, LayerVersion>) -> Vec<Overridden> {
    let mut changed = Vec::new();
    for d in &mut g.disks {
        let layer = d.layer_name();
        if let Some(v) = versions.get(&layer) {
            if d.operate_id != v.operate_id {
                changed.push(Overridden {
                    layer,
                    sent: d.operate_id,
                    library: v.operate_id,
                });
                d.operate_id = v.operate_id;
            }
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::DiskInfo;

    const U: &str = "91f9d1ba-cb4a-41ba-971a-618f9e306571";

    fn group(ops: &[(i64, i64)]) -> DesktopGroup {
        DesktopGroup {
            desktop_group_uuid: "g".into(),
            disks: ops
                .iter()
                .map(|(level, op)| DiskInfo {
                    uuid: U.into(),
                    dif_level: *level,
                    prefix: "voi".into(),
                    operate_id: *op,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn lib(entries: &[(i64, &str)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(l, h)| (format!("voi_{l}_{U}"), h.to_string()))
            .collect()
    }

    #[test]
    fn a_version_moves_only_when_the_content_does() {
        let mut v = BTreeMap::new();
        let groups = vec![group(&[(0, 0), (1, 3)])];
        // First sight: what the groups already gave (terminals hold it).
        assert!(reconcile(&mut v, &lib(&[(0, "a"), (1, "b")]), &groups).is_empty());
        assert_eq!(v[&format!("voi_1_{U}")].operate_id, 3);
        // The same content again: nothing moves, however often.
        for _ in 0..3 {
            assert!(reconcile(&mut v, &lib(&[(0, "a"), (1, "b")]), &groups).is_empty());
        }
        // Level 1 replaced: it alone moves, by one.
        let b = reconcile(&mut v, &lib(&[(0, "a"), (1, "c")]), &groups);
        assert_eq!(
            b,
            vec![Bumped {
                layer: format!("voi_1_{U}"),
                from: 3,
                to: 4
            }]
        );
        assert_eq!(v[&format!("voi_0_{U}")].operate_id, 0);
    }

    #[test]
    fn a_client_number_is_overridden_and_reported() {
        let mut v = BTreeMap::new();
        reconcile(&mut v, &lib(&[(0, "a"), (1, "b")]), &[]);
        // What the console used to send on every save: old number + 1.
        let mut g = group(&[(0, 1), (1, 1)]);
        let o = apply(&mut g, &v);
        assert_eq!(o.len(), 2);
        assert_eq!(g.disks[0].operate_id, 0);
        assert_eq!(g.disks[1].operate_id, 0);
        // Saved again as stored: nothing to say.
        assert!(apply(&mut g, &v).is_empty());
    }

    #[test]
    fn records_of_forgotten_layers_are_bounded() {
        let mut v = BTreeMap::new();
        for i in 0..(MAX_FORGOTTEN_RECORDS + 10) {
            v.insert(
                format!("voi_0_{i:08}"),
                LayerVersion {
                    info_hash: "x".into(),
                    operate_id: 1,
                },
            );
        }
        reconcile(&mut v, &lib(&[(0, "a")]), &[]);
        assert_eq!(v.len(), MAX_FORGOTTEN_RECORDS + 1);
        assert!(v.contains_key(&format!("voi_0_{U}")));
    }
}
