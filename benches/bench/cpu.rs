//! CPU time by process during a phase, from /proc: where a wave of deploys spends
//! the machine (the API server, etcd, kwok, the controller manager, Berth, the
//! bench itself), so a ratio against the floor can be explained.

use std::collections::BTreeMap;

/// Processes whose CPU is reported, by command name (`/proc/<pid>/comm`).
const WATCHED: [&str; 7] = [
    "kube-apiserver",
    "etcd",
    "kwok",
    "kube-controller",
    "kube-scheduler",
    "berth",
    "bench",
];

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

/// CPU seconds used so far by each watched command (all its processes).
pub fn snapshot() -> BTreeMap<&'static str, f64> {
    let mut out: BTreeMap<&'static str, f64> = WATCHED.iter().map(|c| (*c, 0.0)).collect();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue;
        };
        let Some(name) = WATCHED.iter().find(|w| comm.trim().starts_with(**w)) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue;
        };
        // Fields after the command (which may hold spaces) in parentheses:
        // utime and stime are the 12th and 13th.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
            .sum();
        *out.entry(name).or_default() += ticks / TICKS_PER_S;
    }
    out
}

/// CPU milliseconds per item of each command between two snapshots.
pub fn per_item(
    before: &BTreeMap<&'static str, f64>,
    after: &BTreeMap<&'static str, f64>,
    items: usize,
) -> BTreeMap<&'static str, f64> {
    after
        .iter()
        .map(|(k, a)| {
            let b = before.get(k).copied().unwrap_or(0.0);
            (*k, (a - b) * 1000.0 / items as f64)
        })
        .collect()
}

/// Records the API server's own CPU profile (Go pprof) for `seconds` into `out`,
/// in the background; `go tool pprof -top <kube-apiserver> <out>` reads it.
pub fn apiserver_profile(seconds: u32, out: std::path::PathBuf) -> tokio::task::JoinHandle<()> {
    let kubectl =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/cluster/bin/kubectl");
    tokio::spawn(async move {
        let got = tokio::process::Command::new(kubectl)
            .args([
                "get",
                "--raw",
                &format!("/debug/pprof/profile?seconds={seconds}"),
            ])
            .output()
            .await;
        match got {
            Ok(o) if o.status.success() => {
                let _ = std::fs::write(&out, o.stdout);
            }
            Ok(o) => eprintln!(
                "bench: no API server profile: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("bench: no API server profile: {e}"),
        }
    })
}
