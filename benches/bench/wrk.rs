//! HTTP load from wrk (another process, so the load generator's CPU is not
//! Berth's), and the latency figures it prints.

use std::path::Path;

use serde_json::Value;

/// What wrk measured.
pub struct Wrk {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub rps: f64,
}

/// One load: a request, repeated by `connections` connections for `seconds`.
pub struct Load<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub body: Option<Value>,
    pub headers: &'a [(&'a str, &'a str)],
    pub connections: usize,
    pub seconds: usize,
}

impl<'a> Load<'a> {
    /// `method path`, 8 connections for 10 s: the reads table's load.
    pub fn new(method: &'a str, path: &'a str) -> Self {
        Self {
            method,
            path,
            body: None,
            headers: &[],
            connections: 8,
            seconds: 10,
        }
    }
}

fn parse_duration_ms(s: &str) -> f64 {
    let s = s.trim();
    for (unit, f) in [("us", 0.001), ("ms", 1.0), ("s", 1000.0)] {
        if let Some(n) = s.strip_suffix(unit) {
            return n.parse::<f64>().map_or(f64::NAN, |n| n * f);
        }
    }
    f64::NAN
}

/// Runs `load` against Berth at `base` with API key `key`; the Lua script goes to `dir`.
pub async fn run(base: &str, key: &str, load: Load<'_>, dir: &Path) -> Wrk {
    let script = dir.join(format!(
        "{}-{}.lua",
        load.path
            .trim_start_matches('/')
            .replace(['/', '?', '&', '='], "_"),
        load.headers.len()
    ));
    let mut lua = format!(
        "wrk.method = \"{}\"\nwrk.headers[\"x-api-key\"] = \"{key}\"\n",
        load.method
    );
    if let Some(b) = &load.body {
        lua.push_str(&format!(
            "wrk.body = [[{b}]]\nwrk.headers[\"content-type\"] = \"application/json\"\n"
        ));
    }
    for (k, v) in load.headers {
        lua.push_str(&format!("wrk.headers[\"{k}\"] = \"{v}\"\n"));
    }
    std::fs::write(&script, lua).expect("lua");
    let out = tokio::process::Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{}", load.connections),
            &format!("-d{}s", load.seconds),
            "--latency",
            "-s",
            script.to_str().expect("path"),
            &format!("{base}{}", load.path),
        ])
        .output()
        .await
        .expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let non2xx = line("Non-2xx");
    assert!(non2xx.is_empty(), "{}: {non2xx}\n{text}", load.path);
    Wrk {
        p50_ms: parse_duration_ms(line("50%").trim_start_matches("50%")),
        p99_ms: parse_duration_ms(line("99%").trim_start_matches("99%")),
        rps: line("Requests/sec:")
            .trim_start_matches("Requests/sec:")
            .trim()
            .parse()
            .unwrap_or(f64::NAN),
    }
}
