//! Which files of the image directory may be served, and why the others
//! may not. A terminal checks every layer it downloads against the same
//! rules (its chain is `prefix_0_U` ← `prefix_1_U` ← `prefix_2_U`, one uuid
//! per disk), so a layer the server would serve against them is a layer
//! every terminal downloads, refuses and downloads again.
//!
//! Pure: it sees names and parsed headers, never the disk.

use std::collections::BTreeMap;

use crate::disk::name::{LayerName, SERVER_LEVELS};
use crate::disk::qcow2::ImageHeader;

/// One directory entry as the scan saw it.
pub struct Entry {
    pub file: String,
    /// `None` for something that is not a regular file.
    pub header: Option<Result<ImageHeader, String>>,
}

/// The rule, as the README and every refusal state it.
pub const NAMING_RULE: &str = "a layer is named prefix_level_uuid: the base is voi_0_<U>, its diffs voi_1_<U> (backed by voi_0_<U>) and voi_2_<U> (backed by voi_1_<U>), every level of a disk with the base's uuid <U>";

/// Every file's verdict: `Ok` to serve, `Err(reason)` refused. Files the
/// server itself writes there (dot-files: an upload being moved in) are
/// not judged.
pub fn check(entries: &[Entry]) -> BTreeMap<String, Result<(), String>> {
    let mut verdicts = BTreeMap::new();
    let mut layers: Vec<(LayerName, &Entry)> = Vec::new();
    for e in entries {
        if e.file.starts_with('.') {
            continue;
        }
        let verdict = match LayerName::parse(&e.file) {
            Err(err) => Err(format!("name does not parse ({err}); {NAMING_RULE}")),
            Ok(name) if !SERVER_LEVELS.contains(&name.level) => Err(format!(
                "level {} is out of range: the server's levels are {}–{} (3–5 are the terminal's own)",
                name.level,
                SERVER_LEVELS.start(),
                SERVER_LEVELS.end()
            )),
            Ok(name) => match &e.header {
                None => Err("not a regular file".to_string()),
                Some(Err(err)) => Err(format!("not qcow2: {err}")),
                Some(Ok(_)) => {
                    layers.push((name, e));
                    continue;
                }
            },
        };
        verdicts.insert(e.file.clone(), verdict);
    }
    // Parents before children: a child of a refused parent is refused.
    layers.sort_by_key(|(n, _)| n.level);
    let sizes: BTreeMap<String, u64> = layers
        .iter()
        .filter_map(|(n, e)| match &e.header {
            Some(Ok(h)) => Some((n.to_string(), h.virtual_size)),
            _ => None,
        })
        .collect();
    for (name, e) in &layers {
        let Some(Ok(header)) = &e.header else {
            continue;
        };
        let verdict = judge(name, header, &sizes, &verdicts);
        verdicts.insert(e.file.clone(), verdict);
    }
    verdicts
}

fn judge(
    name: &LayerName,
    header: &ImageHeader,
    sizes: &BTreeMap<String, u64>,
    verdicts: &BTreeMap<String, Result<(), String>>,
) -> Result<(), String> {
    let backing = header.backing_name();
    if name.level == 0 {
        return match backing {
            None => Ok(()),
            Some(b) => Err(format!(
                "backing chain not as named: a base (level 0) has no backing file, this one is backed by {b}"
            )),
        };
    }
    let expected = LayerName {
        level: name.level - 1,
        ..name.clone()
    }
    .to_string();
    match backing {
        None => {
            return Err(format!(
                "backing chain not as named: level {} must be backed by {expected}; it has no backing file",
                name.level
            ))
        }
        Some(b) if b != expected => {
            return Err(match LayerName::parse(&b) {
                Ok(other) if other.uuid != name.uuid => format!(
                    "parent of another uuid: it is backed by {b}, and every level of a disk shares the base's uuid, so it must be backed by {expected}"
                ),
                _ => format!("backing chain not as named: it is backed by {b}, not {expected}"),
            })
        }
        Some(_) => {}
    }
    match verdicts.get(&expected) {
        Some(Err(_)) => return Err(format!("its parent {expected} is refused")),
        Some(Ok(())) => {}
        None => return Err(format!("parent missing: {expected} is not in the library")),
    }
    match sizes.get(&expected) {
        Some(&p) if p != header.virtual_size => Err(format!(
            "virtual size {} differs from its parent {expected}'s {p}",
            header.virtual_size
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "6b1a3c5e-0000-4000-8000-00000000000a";
    const V: &str = "6b1a3c5e-0000-4000-8000-00000000000b";

    fn qcow(size: u64, backing: Option<&str>) -> Option<Result<ImageHeader, String>> {
        Some(Ok(ImageHeader {
            version: 3,
            virtual_size: size,
            cluster_size: 65536,
            backing_file: backing.map(String::from),
            backing_format: None,
            allocated: 0,
            file_len: 0,
        }))
    }

    fn entry(file: &str, header: Option<Result<ImageHeader, String>>) -> Entry {
        Entry {
            file: file.into(),
            header,
        }
    }

    fn reason(v: &BTreeMap<String, Result<(), String>>, f: &str) -> String {
        match v.get(f) {
            Some(Err(r)) => r.clone(),
            other => panic!("{f}: {other:?}"),
        }
    }

    #[test]
    fn a_good_chain_is_served() {
        let b0 = format!("voi_0_{U}");
        let b1 = format!("voi_1_{U}");
        let b2 = format!("voi_2_{U}");
        let v = check(&[
            entry(&b2, qcow(1 << 30, Some(&b1))),
            entry(&b0, qcow(1 << 30, None)),
            entry(&b1, qcow(1 << 30, Some(&format!("/var/lib/voi/{b0}")))),
        ]);
        assert!(v.values().all(|r| r.is_ok()), "{v:?}");
        assert_eq!(v.len(), 3);
    }

    #[test]
    fn every_refusal_names_its_reason() {
        let v = check(&[
            entry("voi_0_notauuid", qcow(1, None)),
            entry("README.txt", None),
            entry(&format!("voi_0_{U}"), qcow(1 << 30, None)),
            entry(&format!("voi_0_{V}"), Some(Err("bad magic".into()))),
            // A diff of U named under V.
            entry(
                &format!("voi_1_{V}"),
                qcow(1 << 30, Some(&format!("voi_0_{U}"))),
            ),
            entry(
                &format!("voi_2_{U}"),
                qcow(1 << 30, Some(&format!("voi_1_{U}"))),
            ),
            entry(
                &format!("voi_3_{U}"),
                qcow(1 << 30, Some(&format!("voi_2_{U}"))),
            ),
            entry(
                &format!("abc_1_{U}"),
                qcow(1 << 30, Some(&format!("voi_0_{U}"))),
            ),
            entry(
                &format!("voi_1_{U}"),
                qcow(2 << 30, Some(&format!("voi_0_{U}"))),
            ),
            entry(&format!("win_1_{U}"), qcow(1 << 30, None)),
            entry(".tmp-upload", None),
        ]);
        assert!(reason(&v, "voi_0_notauuid").starts_with("name does not parse"));
        assert!(reason(&v, "README.txt").starts_with("name does not parse"));
        assert!(v[&format!("voi_0_{U}")].is_ok());
        assert!(reason(&v, &format!("voi_0_{V}")).starts_with("not qcow2"));
        assert!(reason(&v, &format!("voi_1_{V}")).starts_with("parent of another uuid"));
        assert!(reason(&v, &format!("voi_2_{U}")).contains("parent"));
        assert!(reason(&v, &format!("voi_3_{U}")).contains("out of range"));
        assert!(reason(&v, &format!("abc_1_{U}")).starts_with("backing chain not as named"));
        assert!(reason(&v, &format!("voi_1_{U}")).starts_with("virtual size"));
        assert!(reason(&v, &format!("win_1_{U}")).contains("no backing file"));
        assert!(!v.contains_key(".tmp-upload"));
    }

    #[test]
    fn a_missing_parent_and_a_refused_parent_are_told_apart() {
        let v = check(&[
            entry(&format!("voi_1_{U}"), qcow(1, Some(&format!("voi_0_{U}")))),
            entry(&format!("voi_0_{V}"), qcow(1, Some("elsewhere.qcow2"))),
            entry(&format!("voi_1_{V}"), qcow(1, Some(&format!("voi_0_{V}")))),
        ]);
        assert!(reason(&v, &format!("voi_1_{U}")).starts_with("parent missing"));
        assert!(reason(&v, &format!("voi_0_{V}")).contains("has no backing file"));
        assert!(reason(&v, &format!("voi_1_{V}")).contains("is refused"));
    }
}
