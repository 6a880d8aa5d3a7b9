//! Schemathesis (from PyPI, installed by `make test` into target/venv) against
//! `/api/openapi.json` with a valid API key and a fixed seed: every operation,
//! positive and negative cases; no 5xx, and every answer as the document says.

use std::path::PathBuf;

use crate::server::TestServer;

/// Cases per operation: 15 operations × 70 ≥ 1,000 cases in all (`make fuzz`
/// raises it through BERTH_FUZZ_EXAMPLES).
const PER_OPERATION: &str = "70";
const SEED: &str = "20261126";

fn schemathesis() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/schemathesis");
    assert!(
        path.exists(),
        "{} is missing: `make test` installs it (see Makefile, target venv)",
        path.display()
    );
    path
}

#[tokio::test]
async fn schemathesis_finds_no_server_errors_and_no_undocumented_answers() {
    let srv = TestServer::start("fuzz").await;
    // Some data for the generated requests to meet.
    srv.user("fuzz").await;
    srv.node("127.0.10.1").await;

    let report = std::env::temp_dir().join(format!("berth-fuzz-{}.ndjson", srv.ns));
    let out = tokio::process::Command::new(schemathesis())
        .args([
            "run",
            &format!("{}/api/openapi.json", srv.base),
            "--header",
            &format!("x-api-key: {}", srv.key),
            "--max-examples",
            &std::env::var("BERTH_FUZZ_EXAMPLES").unwrap_or_else(|_| PER_OPERATION.to_owned()),
            "--seed",
            SEED,
            "--generation-deterministic",
            "--phases",
            "examples,coverage,fuzzing",
            "--checks",
            "not_a_server_error,response_schema_conformance,content_type_conformance",
            // One worker: with two, CPython 3.11's AST validation (schemathesis
            // compiles code per schema) can fail with "AST constructor recursion
            // depth mismatch" when threads interleave (CPython gh-106905).
            "--workers",
            "1",
            "--report",
            "ndjson",
            "--report-ndjson-path",
            report.to_str().expect("path"),
        ])
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("run schemathesis");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Every finished scenario records the cases it ran.
    let cases: usize = std::fs::read_to_string(&report)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|e| {
            e["ScenarioFinished"]["recorder"]["cases"]
                .as_object()
                .map(|c| c.len())
        })
        .sum();
    eprintln!(
        "schemathesis: {cases} cases\n{}",
        text.lines()
            .rev()
            .take(25)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    std::fs::remove_file(&report).ok();
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        cases >= 1000,
        "schemathesis ran only {cases} cases (at least 1,000 expected)"
    );
    srv.finish().await;
}
