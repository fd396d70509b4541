//! 9029 update_performance: CPU, disk and memory figures in the sensor-tree
//! shape of the API document.

use sysinfo::{Disks, System};

use crate::protocol::messages::{SensorGroup, SensorReading, SensorTree, UpdatePerformanceReq};

fn reading(name: &str, value: f64, path: String) -> SensorReading {
    let v = format!("{value:.4}");
    SensorReading {
        name: name.into(),
        value: v.clone(),
        min: v.clone(),
        max: v,
        path,
    }
}

fn group(name: String, desc: Vec<SensorReading>) -> SensorGroup {
    SensorGroup {
        name,
        count: desc.len().to_string(),
        desc,
    }
}

pub fn report(mac: &str) -> UpdatePerformanceReq {
    let mut sys = System::new();
    sys.refresh_cpu_usage();
    std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
    sys.refresh_cpu_usage();
    sys.refresh_memory();
    let mut groups = Vec::new();

    let brand = sys
        .cpus()
        .first()
        .map(|c| c.brand().trim().to_string())
        .unwrap_or_default();
    let cpu = sys
        .cpus()
        .iter()
        .enumerate()
        .flat_map(|(i, c)| {
            [
                reading(
                    "CPU Core",
                    c.frequency() as f64,
                    format!("(/cpu/0/clock/{})", i + 1),
                ),
                reading(
                    "CPU Core",
                    f64::from(c.cpu_usage()),
                    format!("(/cpu/0/load/{})", i + 1),
                ),
            ]
        })
        .collect();
    groups.push(group(
        format!("{} (/cpu/0)", if brand.is_empty() { "CPU" } else { &brand }),
        cpu,
    ));

    for (i, d) in Disks::new_with_refreshed_list().iter().enumerate() {
        let total = d.total_space() as f64;
        if total <= 0.0 {
            continue;
        }
        let used = 100.0 * (total - d.available_space() as f64) / total;
        groups.push(group(
            format!("{} (/hdd/{i})", d.mount_point().display()),
            vec![reading("Used Space", used, format!("(/hdd/{i}/load/0)"))],
        ));
    }

    let total = sys.total_memory() as f64;
    let used = sys.used_memory() as f64;
    let gib = 1024.0 * 1024.0 * 1024.0;
    let load = if total > 0.0 {
        100.0 * used / total
    } else {
        0.0
    };
    groups.push(group(
        "Generic Memory (/ram)".into(),
        vec![
            reading("Memory", load, "(/ram/load/0)".into()),
            reading("Used Memory", used / gib, "(/ram/data/0)".into()),
            reading(
                "Available Memory",
                sys.available_memory() as f64 / gib,
                "(/ram/data/1)".into(),
            ),
        ],
    ));

    UpdatePerformanceReq {
        mac: mac.to_string(),
        data: SensorTree {
            name: "Sensors".into(),
            count: groups.len().to_string(),
            desc: groups,
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shape_matches_document() {
        let r = super::report("AA:BB:CC:DD:EE:FF");
        let v = serde_json::to_value(&r).expect("json");
        assert_eq!(v["data"]["name"], "Sensors");
        assert!(v["data"]["count"].is_string());
        let ram = v["data"]["desc"]
            .as_array()
            .and_then(|a| a.iter().find(|g| g["name"] == "Generic Memory (/ram)"))
            .expect("ram group");
        assert_eq!(ram["desc"][0]["Name"], "Memory");
        assert!(ram["desc"][0]["Value"].is_string());
    }
}
