//! What is on disk: every layer file, the chains they form, and what is
//! wrong with them. Reading only; nothing here changes a file.

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::name::LayerName;
use super::qcow2::{read_header, ImageHeader};

#[derive(Debug, Clone, Serialize)]
pub struct Layer {
    pub name: String,
    #[serde(skip)]
    pub parsed: LayerName,
    pub header: ImageHeader,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// A file in the disk dir whose name is not a layer name.
    ForeignFile {
        file: String,
    },
    Unreadable {
        layer: String,
        error: String,
    },
    /// The backing file does not exist.
    BrokenLink {
        layer: String,
        backing: String,
    },
    /// The backing file is a path (absolute, or with a directory part):
    /// it could point outside the data dir.
    OutsideDataDir {
        layer: String,
        backing: String,
    },
    /// Backing names another disk, or a level not below this one, or a
    /// base has a backing file.
    LevelMismatch {
        layer: String,
        backing: String,
    },
    BackingFormat {
        layer: String,
        format: Option<String>,
    },
    Cycle {
        layers: Vec<String>,
    },
    /// A layer that is not on its disk's chain.
    Orphan {
        layer: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct Chain {
    pub uuid: String,
    pub prefix: String,
    /// Base first, top last.
    pub layers: Vec<String>,
    pub virtual_size: u64,
    /// True when the chain reaches a base with no problem on the way.
    pub complete: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Inventory {
    pub layers: BTreeMap<String, Layer>,
    pub chains: Vec<Chain>,
    pub problems: Vec<Problem>,
}

impl Inventory {
    pub fn scan(dir: &Path) -> std::io::Result<Inventory> {
        let mut inv = Inventory::default();
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(inv),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let file = entry.file_name().to_string_lossy().into_owned();
            // Our own bookkeeping and temporaries start with a dot.
            if file.starts_with('.') || file.ends_with(".json") || file.ends_with(".torrent") {
                continue;
            }
            let Ok(parsed) = LayerName::parse(&file) else {
                inv.problems.push(Problem::ForeignFile { file });
                continue;
            };
            if !entry.file_type()?.is_file() {
                inv.problems.push(Problem::ForeignFile { file });
                continue;
            }
            match read_header(&entry.path()) {
                Ok(header) => {
                    inv.layers.insert(
                        file.clone(),
                        Layer {
                            name: file,
                            parsed,
                            header,
                        },
                    );
                }
                Err(e) => inv.problems.push(Problem::Unreadable {
                    layer: file,
                    error: e.to_string(),
                }),
            }
        }
        inv.build_chains();
        Ok(inv)
    }

    /// The parent a layer's header names, if it is a valid sibling layer.
    fn parent_of(&self, layer: &Layer, problems: &mut Vec<Problem>) -> Option<String> {
        let backing = layer.header.backing_file.clone()?;
        if backing.contains('/') || backing == ".." || backing == "." {
            problems.push(Problem::OutsideDataDir {
                layer: layer.name.clone(),
                backing,
            });
            return None;
        }
        let ok_level = LayerName::parse(&backing).ok().filter(|p| {
            p.uuid == layer.parsed.uuid
                && p.prefix == layer.parsed.prefix
                && p.level < layer.parsed.level
        });
        if ok_level.is_none() {
            problems.push(Problem::LevelMismatch {
                layer: layer.name.clone(),
                backing,
            });
            return None;
        }
        if layer.header.backing_format.as_deref() != Some("qcow2") {
            problems.push(Problem::BackingFormat {
                layer: layer.name.clone(),
                format: layer.header.backing_format.clone(),
            });
        }
        if !self.layers.contains_key(&backing) {
            problems.push(Problem::BrokenLink {
                layer: layer.name.clone(),
                backing,
            });
            return None;
        }
        Some(backing)
    }

    fn build_chains(&mut self) {
        let mut problems = Vec::new();
        let mut by_disk: BTreeMap<(String, String), Vec<&Layer>> = BTreeMap::new();
        for l in self.layers.values() {
            by_disk
                .entry((l.parsed.prefix.clone(), l.parsed.uuid_str()))
                .or_default()
                .push(l);
        }
        let mut chains = Vec::new();
        for ((prefix, uuid), mut layers) in by_disk {
            layers.sort_by_key(|l| l.parsed.level);
            let Some(top) = layers.last() else { continue };
            let mut chain = vec![top.name.clone()];
            let mut seen = BTreeSet::from([top.name.clone()]);
            let mut cur = *top;
            let mut complete = true;
            loop {
                if cur.parsed.level == 0 {
                    if cur.header.backing_file.is_some() {
                        problems.push(Problem::LevelMismatch {
                            layer: cur.name.clone(),
                            backing: cur.header.backing_file.clone().unwrap_or_default(),
                        });
                        complete = false;
                    }
                    break;
                }
                match self.parent_of(cur, &mut problems) {
                    Some(p) => {
                        if !seen.insert(p.clone()) {
                            problems.push(Problem::Cycle {
                                layers: chain.clone(),
                            });
                            complete = false;
                            break;
                        }
                        chain.push(p.clone());
                        match self.layers.get(&p) {
                            Some(l) => cur = l,
                            None => break,
                        }
                    }
                    None => {
                        complete = false;
                        break;
                    }
                }
            }
            for l in &layers {
                if !seen.contains(&l.name) {
                    problems.push(Problem::Orphan {
                        layer: l.name.clone(),
                    });
                }
            }
            chain.reverse();
            chains.push(Chain {
                uuid,
                prefix,
                virtual_size: top.header.virtual_size,
                layers: chain,
                complete,
            });
        }
        problems.dedup();
        self.chains = chains;
        self.problems.extend(problems);
    }

    pub fn chain(&self, uuid: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.uuid == uuid)
    }

    pub fn has(&self, name: &LayerName) -> bool {
        self.layers.contains_key(&name.to_string())
    }
}
