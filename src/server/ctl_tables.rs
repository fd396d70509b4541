//! What `voi-server ctl` prints for a person: the API's answers as
//! aligned tables (`--json` prints the envelope instead, for scripts).
//! Pure: a JSON answer in, text out.

use serde_json::Value;

fn s(v: &Value) -> String {
    match v {
        Value::String(x) => x.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Columns padded to their widest cell; the last one is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = width.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let n = cells.len();
        let mut out = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                out.push_str(&c);
            } else {
                let pad = width[i].saturating_sub(c.chars().count());
                out.push_str(&c);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = vec![line(header.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n")
}

fn human_bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn clock(ms: &Value) -> String {
    ms.as_u64()
        .and_then(|ms| chrono::DateTime::from_timestamp_millis(i64::try_from(ms).ok()?))
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%H:%M:%S")
                .to_string()
        })
        .unwrap_or_default()
}

/// A terminal's desktop in words, as the console says it.
pub fn desktop_words(t: &Value) -> String {
    let d = &t["desktop"];
    let name = s(&d["desktop_group_name"]);
    match s(&d["state"]).as_str() {
        "unknown" if !d["last_state"].is_null() && d["last_state"] != "off" => format!(
            "last seen {} {name} at {}",
            s(&d["last_state"]),
            clock(&d["last_seen_ms"])
        ),
        "unknown" | "off" | "" => String::new(),
        "running" => {
            let why = s(&d["reason"]);
            format!(
                "running {name} on {} since {}{}",
                s(&d["accelerator"]),
                clock(&d["since_ms"]),
                if why.is_empty() {
                    String::new()
                } else {
                    format!(" ({why})")
                }
            )
        }
        "failed" => format!("failed {name}: {}", s(&d["reason"])),
        other => format!("{other} {name}"),
    }
}

pub fn terminals(data: &Value) -> String {
    let empty = Vec::new();
    let list = data["terminals"].as_array().unwrap_or(&empty);
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|t| {
            vec![
                s(&t["mac"]),
                s(&t["name"]),
                match t["terminal_id"].as_i64() {
                    Some(n) if n >= 0 => n.to_string(),
                    _ => "-".into(),
                },
                s(&t["ip"]),
                s(&t["room"]),
                if t["online"] == true {
                    "online"
                } else {
                    "offline"
                }
                .into(),
                s(&t["soft_version"]),
                desktop_words(t),
            ]
        })
        .collect();
    let online = list.iter().filter(|t| t["online"] == true).count();
    format!(
        "{}\n{} terminal(s), {online} online",
        table(
            &["MAC", "NAME", "NO.", "IP", "ROOM", "STATE", "VERSION", "DESKTOP"],
            &rows
        ),
        list.len()
    )
}

pub fn terminal(t: &Value) -> String {
    let transfers: Vec<String> = t["transfers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    let mut line = format!(
                        "{} {}% {}",
                        s(&x["layer"]),
                        s(&x["progress"]),
                        s(&x["state"])
                    );
                    if x["result"] == 2 {
                        line.push_str(&format!(" failed: {}", s(&x["msg"])));
                    }
                    line
                })
                .collect()
        })
        .unwrap_or_default();
    let rows = vec![
        vec!["mac".into(), s(&t["mac"])],
        vec!["name".into(), s(&t["name"])],
        vec!["number".into(), s(&t["terminal_id"])],
        vec!["ip".into(), s(&t["ip"])],
        vec!["room".into(), s(&t["room"])],
        vec![
            "online".into(),
            format!(
                "{} (last login {})",
                t["online"] == true,
                s(&t["last_login"])
            ),
        ],
        vec!["version".into(), s(&t["soft_version"])],
        vec!["admission".into(), s(&t["admission"])],
        vec!["desktop".into(), {
            let w = desktop_words(t);
            if w.is_empty() {
                s(&t["desktop"]["state"])
            } else {
                w
            }
        }],
        vec![
            "desktops held".into(),
            t["desktop_group_names"]
                .as_array()
                .map(|a| a.iter().map(s).collect::<Vec<_>>().join(", "))
                .unwrap_or_default(),
        ],
        vec!["transfers".into(), transfers.join("; ")],
    ];
    table(&["", ""], &rows)
        .lines()
        .skip(1)
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn groups(data: &Value) -> String {
    let empty = Vec::new();
    let list = data["desktop_group_list"].as_array().unwrap_or(&empty);
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|g| {
            let uuid = s(&g["desktop_group_uuid"]);
            let layers = g["disks"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|d| format!("{}@{}", s(&d["dif_level"]), s(&d["operate_id"])))
                .collect::<Vec<_>>()
                .join(",");
            let os = match g["os_sys_type"].as_i64() {
                Some(1) => "win7-64",
                Some(2) => "win7",
                Some(3) => "win10",
                _ => "other",
            };
            let problems = &data["undeliverable"][&uuid];
            vec![
                s(&g["desktop_group_name"]),
                uuid,
                os.into(),
                if g["desktop_group_restore"] == 1 {
                    "restore"
                } else {
                    "persistent"
                }
                .into(),
                layers,
                if problems.is_null() {
                    "ok".into()
                } else {
                    format!("cannot be delivered: {problems}")
                },
            ]
        })
        .collect();
    table(
        &["NAME", "UUID", "OS", "MODE", "LEVEL@VERSION", "DELIVERY"],
        &rows,
    )
}

pub fn images(data: &Value) -> String {
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = data["images"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|i| {
            vec![
                s(&i["layer"]),
                human_bytes(i["length"].as_u64().unwrap_or(0)),
                human_bytes(i["virtual_size"].as_u64().unwrap_or(0)),
                s(&i["state"]),
                human_bytes(i["uploaded_bytes"].as_u64().unwrap_or(0)),
                s(&i["parent"]),
            ]
        })
        .collect();
    let mut out = table(&["LAYER", "FILE", "DISK", "STATE", "SENT", "PARENT"], &rows);
    let refused = data["refused"].as_array().unwrap_or(&empty);
    if !refused.is_empty() {
        out.push_str("\n\nNot served:\n");
        out.push_str(&table(
            &["FILE", "WHY"],
            &refused
                .iter()
                .map(|r| vec![s(&r["file"]), s(&r["reason"])])
                .collect::<Vec<_>>(),
        ));
    }
    let settling = data["settling"].as_array().unwrap_or(&empty);
    if !settling.is_empty() {
        out.push_str("\n\nStill being written (taken once they hold still): ");
        out.push_str(&settling.iter().map(s).collect::<Vec<_>>().join(", "));
    }
    if let Some(progress) = data["progress"].as_object().filter(|p| !p.is_empty()) {
        let mut rows = Vec::new();
        for (mac, layers) in progress {
            for (layer, r) in layers.as_object().into_iter().flatten() {
                rows.push(vec![
                    mac.clone(),
                    layer.clone(),
                    format!("{}%", s(&r["progress"])),
                    s(&r["state"]),
                ]);
            }
        }
        out.push_str("\n\nTerminals' downloads:\n");
        out.push_str(&table(&["MAC", "LAYER", "DONE", "STATE"], &rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn columns_line_up_and_offline_never_reads_running() {
        let t = terminals(&json!({"terminals": [
            {"mac": "AA:00:00:00:00:01", "name": "PC-01", "terminal_id": 1, "ip": "10.0.0.11",
             "room": "101", "online": true, "soft_version": "0.1",
             "desktop": {"state": "running", "desktop_group_name": "Lab", "accelerator": "tcg", "since_ms": 0}},
            {"mac": "AA:00:00:00:00:02", "name": "PC-02-long-name", "terminal_id": -1, "ip": "",
             "room": "", "online": false, "soft_version": "",
             "desktop": {"state": "unknown", "last_state": "running", "desktop_group_name": "Lab", "last_seen_ms": 0}},
        ]}));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        let col = |l: &str| l.find("NO.").or_else(|| l.find("1 ")).unwrap_or(0);
        assert_eq!(lines[0].find("NO."), Some(col(lines[0])));
        assert!(lines[1].contains("running Lab on tcg"), "{t}");
        assert!(lines[2].contains("last seen running Lab"), "{t}");
        assert!(!lines[2].contains("  running"), "{t}");
        assert!(lines[3].contains("2 terminal(s), 1 online"));
        // The NAME column starts at the same place on every row.
        let at = |l: &str, what: &str| l.find(what);
        assert_eq!(at(lines[0], "NAME"), at(lines[1], "PC-01"));
        assert_eq!(at(lines[0], "NAME"), at(lines[2], "PC-02-long-name"));
    }

    #[test]
    fn images_list_what_is_refused_and_settling() {
        let t = images(&json!({
            "images": [{"layer": "voi_0_x", "length": 2048, "virtual_size": 67108864, "state": "seeding", "uploaded_bytes": 0, "parent": null}],
            "refused": [{"file": "notes.txt", "reason": "name does not parse"}],
            "settling": ["voi_1_x"],
            "progress": {},
        }));
        assert!(t.contains("64.0 MiB"), "{t}");
        assert!(
            t.contains("notes.txt") && t.contains("name does not parse"),
            "{t}"
        );
        assert!(t.contains("voi_1_x"), "{t}");
    }
}
