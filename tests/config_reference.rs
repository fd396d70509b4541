//! `docs/config.md` names every config key of both programs, with its
//! default: a key added to either config struct and not documented fails
//! here.

use std::collections::BTreeSet;

fn keys(prefix: &str, v: &toml::Value, out: &mut BTreeSet<String>) {
    if let toml::Value::Table(t) = v {
        for (k, v) in t {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if let toml::Value::Table(_) = v {
                keys(&path, v, out);
            } else {
                out.insert(path);
            }
        }
    }
}

fn documented() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.md"))
        .expect("docs/config.md")
}

fn check(program: &str, v: toml::Value) {
    let doc = documented();
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with(program))
        .unwrap_or_else(|| panic!("docs/config.md has no '## {program}' section"));
    let mut all = BTreeSet::new();
    keys("", &v, &mut all);
    let missing: Vec<&String> = all
        .iter()
        .filter(|k| {
            let leaf = k.rsplit('.').next().unwrap_or(k);
            !section.contains(&format!("`{k}`")) && !section.contains(&format!("{leaf} ="))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/config.md ({program}) does not document: {missing:?}"
    );
}

#[test]
fn every_server_key_is_documented() {
    let cfg = voi::server::ServerConfig::default();
    check(
        "voi-server",
        toml::Value::try_from(&cfg).expect("serialises"),
    );
}

#[test]
fn every_agent_key_is_documented() {
    let cfg = voi::agent::config::AgentConfig::new(
        "192.0.2.1",
        std::path::Path::new("/var/lib/voi-agent"),
    );
    check(
        "voi-agent",
        toml::Value::try_from(&cfg).expect("serialises"),
    );
}

/// Prints both programs' defaults as TOML (`cargo test --test
/// config_reference -- --ignored --nocapture`), the source of the blocks
/// in docs/config.md.
#[test]
#[ignore]
fn print_defaults() {
    let s = voi::server::ServerConfig::default();
    println!("{}", toml::to_string(&s).expect("toml"));
    let a = voi::agent::config::AgentConfig::new(
        "192.0.2.1",
        std::path::Path::new("/var/lib/voi-agent"),
    );
    println!("{}", toml::to_string(&a).expect("toml"));
}
