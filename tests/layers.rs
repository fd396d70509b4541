//! The source tree's layers, checked from the sources themselves:
//!
//! * shared code (everything in `src/` outside `agent/`, `server/` and the
//!   `demo` that runs both) imports neither program;
//! * neither program imports the other;
//! * no two files import each other, directly or around a circle.
//!
//! An import is any `crate::…`, `super::…` or `self::…` path, in a `use` or
//! inline, and any `child::…` path to a module the file declares. A bare
//! `mod child;` is not an import. Test modules (`#[cfg(test)]` to the end of
//! the file) are not read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const PROGRAMS: [&str; 2] = ["agent", "server"];
/// Runs both programs in one process; only the binaries use it.
const COMPOSITION: [&str; 1] = ["demo"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The module path of a file: `src/agent/session/mod.rs` -> `agent::session`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// The file that defines a module path, if there is one.
fn file_of(module: &[String]) -> Option<PathBuf> {
    if module.is_empty() {
        return Some(PathBuf::from("lib.rs"));
    }
    let joined: PathBuf = module.iter().collect();
    let as_file = joined.with_extension("rs");
    if src().join(&as_file).is_file() {
        return Some(as_file);
    }
    let as_dir = joined.join("mod.rs");
    src().join(&as_dir).is_file().then_some(as_dir)
}

/// The deepest file that a path of module segments lands in.
fn deepest_file(path: &[String]) -> Option<PathBuf> {
    (1..=path.len())
        .rev()
        .find_map(|n| file_of(&path[..n]))
        .filter(|f| f != Path::new("lib.rs"))
}

fn strip_comments_and_tests(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        // Drop string literals' contents crudely: paths inside strings are
        // not imports.
        let mut in_str = false;
        let mut prev = ' ';
        for c in line.chars() {
            if c == '"' && prev != '\\' {
                in_str = !in_str;
                out.push('"');
            } else if !in_str {
                out.push(c);
            }
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// Every path that starts with one of `roots`, braces expanded.
fn paths(text: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let bytes: Vec<char> = text.chars().collect();
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut i = 0;
    while i < bytes.len() {
        if is_ident(bytes[i]) && (i == 0 || !is_ident(bytes[i - 1]) && bytes[i - 1] != ':') {
            let (list, end) = parse_path(&bytes, i);
            found.extend(list);
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    found
}

/// Parses `a::b::{c, d::e}` from `start`; returns the expanded paths (only
/// those with at least two segments) and where it stopped.
fn parse_path(s: &[char], start: usize) -> (Vec<Vec<String>>, usize) {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut prefix: Vec<String> = Vec::new();
    let mut i = start;
    loop {
        let b = i;
        while i < s.len() && is_ident(s[i]) {
            i += 1;
        }
        if b == i {
            break;
        }
        prefix.push(s[b..i].iter().collect());
        if i + 1 < s.len() && s[i] == ':' && s[i + 1] == ':' {
            i += 2;
            if i < s.len() && s[i] == '{' {
                // A group: each member is a path below the prefix.
                let mut out = Vec::new();
                i += 1;
                loop {
                    while i < s.len() && (s[i].is_whitespace() || s[i] == ',') {
                        i += 1;
                    }
                    if i >= s.len() || s[i] == '}' {
                        i += 1;
                        break;
                    }
                    let (inner, end) = parse_path(s, i);
                    let members = if inner.is_empty() {
                        // A single segment (`self`, a type name).
                        let b = i;
                        let mut j = i;
                        while j < s.len() && is_ident(s[j]) {
                            j += 1;
                        }
                        i = if j == b { j + 1 } else { j };
                        vec![vec![s[b..j].iter().collect::<String>()]]
                    } else {
                        i = end;
                        inner
                    };
                    for m in members {
                        let mut p = prefix.clone();
                        p.extend(m.into_iter().filter(|x| x != "self"));
                        out.push(p);
                    }
                    // Skip `as alias` and anything else up to , or }.
                    while i < s.len() && s[i] != ',' && s[i] != '}' {
                        i += 1;
                    }
                }
                return (out, i);
            }
            continue;
        }
        break;
    }
    if prefix.len() >= 2 {
        (vec![prefix], i)
    } else {
        (Vec::new(), i)
    }
}

struct Graph {
    /// file -> files it imports (paths relative to src/).
    edges: BTreeMap<PathBuf, BTreeSet<PathBuf>>,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn graph() -> Graph {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut edges = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&root).expect("under src").to_path_buf();
        if rel.starts_with("bin") {
            continue;
        }
        let module = module_of(&rel);
        let text = std::fs::read_to_string(&f).expect("read");
        let text = strip_comments_and_tests(&text);
        let children: BTreeSet<String> = text
            .lines()
            .filter_map(|l| {
                let t = l.trim();
                let t = t.strip_prefix("pub ").unwrap_or(t);
                let t = t.strip_prefix("pub(crate) ").unwrap_or(t);
                t.strip_prefix("mod ")
                    .and_then(|r| r.strip_suffix(';'))
                    .map(str::to_string)
            })
            .collect();
        let mut to = BTreeSet::new();
        for p in paths(&text) {
            let abs: Vec<String> = match p[0].as_str() {
                "crate" => p[1..].to_vec(),
                "super" => {
                    let mut base = module.clone();
                    let mut rest = &p[..];
                    while rest.first().is_some_and(|s| s == "super") {
                        base.pop();
                        rest = &rest[1..];
                    }
                    base.extend(rest.iter().cloned());
                    base
                }
                "self" => {
                    let mut base = module.clone();
                    base.extend(p[1..].iter().cloned());
                    base
                }
                c if children.contains(c) => {
                    let mut base = module.clone();
                    base.extend(p.iter().cloned());
                    base
                }
                _ => continue,
            };
            if let Some(target) = deepest_file(&abs) {
                if target != rel {
                    to.insert(target);
                }
            }
        }
        edges.insert(rel, to);
    }
    Graph { edges }
}

fn program_of(file: &Path) -> Option<&'static str> {
    let first = file.iter().next()?.to_string_lossy().into_owned();
    let first = first.trim_end_matches(".rs");
    PROGRAMS
        .iter()
        .chain(COMPOSITION.iter())
        .find(|p| **p == first)
        .copied()
}

#[test]
fn the_import_parser_sees_groups_and_inline_paths() {
    let text = "use crate::{agent::Agent, disk::{name::LayerName, DiskStore}};\nlet x = super::conn::ConnState::new();";
    let got = paths(text);
    assert!(got.contains(&vec!["crate".into(), "agent".into(), "Agent".into()]));
    assert!(got.contains(&vec![
        "crate".into(),
        "disk".into(),
        "name".into(),
        "LayerName".into()
    ]));
    assert!(got.contains(&vec![
        "super".into(),
        "conn".into(),
        "ConnState".into(),
        "new".into()
    ]));
}

#[test]
fn shared_code_imports_neither_program_and_programs_not_each_other() {
    let g = graph();
    let mut bad = Vec::new();
    for (from, tos) in &g.edges {
        let from_prog = program_of(from);
        for to in tos {
            let to_prog = program_of(to);
            let ok = match (from_prog, to_prog) {
                (_, None) => true,
                (Some(a), Some(b)) if a == b => true,
                (Some("demo"), Some(_)) => true,
                _ => false,
            };
            if !ok {
                bad.push(format!("{} imports {}", from.display(), to.display()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "layer violations (shared code must not import agent/ or server/, and they not each other):\n{}",
        bad.join("\n")
    );
}

/// Groups of files that import each other around a circle (Tarjan's
/// strongly connected components of more than one file).
fn circles(g: &Graph) -> Vec<Vec<PathBuf>> {
    struct Walk<'a> {
        g: &'a Graph,
        index: BTreeMap<PathBuf, usize>,
        low: BTreeMap<PathBuf, usize>,
        stack: Vec<PathBuf>,
        on_stack: BTreeSet<PathBuf>,
        found: Vec<Vec<PathBuf>>,
    }
    fn connect(w: &mut Walk, v: &PathBuf) {
        let i = w.index.len();
        w.index.insert(v.clone(), i);
        w.low.insert(v.clone(), i);
        w.stack.push(v.clone());
        w.on_stack.insert(v.clone());
        let next: Vec<PathBuf> = w.g.edges.get(v).into_iter().flatten().cloned().collect();
        for m in next {
            if !w.index.contains_key(&m) {
                connect(w, &m);
                let lm = w.low[&m];
                let lv = w.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lm);
            } else if w.on_stack.contains(&m) {
                let im = w.index[&m];
                let lv = w.low.get_mut(v).expect("visited");
                *lv = (*lv).min(im);
            }
        }
        if w.low[v] == w.index[v] {
            let mut group = Vec::new();
            while let Some(x) = w.stack.pop() {
                w.on_stack.remove(&x);
                let done = &x == v;
                group.push(x);
                if done {
                    break;
                }
            }
            if group.len() > 1 {
                group.sort();
                w.found.push(group);
            }
        }
    }
    let mut w = Walk {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in g.edges.keys() {
        if !w.index.contains_key(v) {
            connect(&mut w, v);
        }
    }
    w.found
}

/// One line per circle, its members joined by commas.
fn shown(found: &[Vec<PathBuf>]) -> String {
    found
        .iter()
        .map(|c| {
            c.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn no_file_imports_itself_through_others() {
    let found = circles(&graph());
    assert!(
        found.is_empty(),
        "files that import each other around a circle:\n{}",
        shown(&found)
    );
}

#[test]
fn a_circle_is_found() {
    let mut edges = BTreeMap::new();
    let (a, b, c) = (
        PathBuf::from("a.rs"),
        PathBuf::from("b.rs"),
        PathBuf::from("c.rs"),
    );
    edges.insert(a.clone(), BTreeSet::from([b.clone()]));
    edges.insert(b.clone(), BTreeSet::from([c.clone()]));
    edges.insert(c.clone(), BTreeSet::from([a.clone()]));
    assert_eq!(circles(&Graph { edges }), vec![vec![a, b, c]]);
}

#[test]
fn the_checks_catch_a_violation() {
    // The graph of this very tree must contain edges, or the checks above
    // would pass vacuously.
    let g = graph();
    let total: usize = g.edges.values().map(BTreeSet::len).sum();
    assert!(
        total > 50,
        "only {total} imports found: the parser is broken"
    );
}

/// The top-level part of `src/` a file belongs to: its first folder, or the
/// file itself (`protocol/codec.rs` -> `protocol`, `tls.rs` -> `tls`).
fn part_of(file: &Path) -> PathBuf {
    let first = file
        .iter()
        .next()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    PathBuf::from(first.trim_end_matches(".rs"))
}

/// The same graph with each file replaced by its top-level part.
fn parts_graph(g: &Graph) -> Graph {
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for (from, tos) in &g.edges {
        let a = part_of(from);
        let entry = edges.entry(a.clone()).or_default();
        for to in tos {
            let b = part_of(to);
            if b != a {
                entry.insert(b);
            }
        }
    }
    Graph { edges }
}

#[test]
fn the_shared_parts_import_each_other_one_way() {
    // Files can avoid circles while their folders still go round one
    // (protocol/ used disk/ for layer names while disk/ used protocol/ for
    // desktop groups); then neither folder can be read as the lower layer.
    let found = circles(&parts_graph(&graph()));
    assert!(
        found.is_empty(),
        "parts of src/ that import each other around a circle:\n{}",
        shown(&found)
    );
}

#[test]
fn a_circle_between_folders_is_found() {
    let mut edges = BTreeMap::new();
    edges.insert(
        PathBuf::from("protocol/torrent_struct.rs"),
        BTreeSet::from([PathBuf::from("disk/name.rs")]),
    );
    edges.insert(
        PathBuf::from("disk/decision.rs"),
        BTreeSet::from([PathBuf::from("protocol/messages.rs")]),
    );
    assert_eq!(
        circles(&parts_graph(&Graph { edges })),
        vec![vec![PathBuf::from("disk"), PathBuf::from("protocol")]]
    );
}
