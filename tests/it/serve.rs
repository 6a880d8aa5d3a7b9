//! `berth serve` as a process: health endpoints, JSON logs, clean shutdown on SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::{self, eventually};

async fn free_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr").port()
}

#[tokio::test]
async fn serve_answers_health_and_shuts_down_cleanly_on_sigterm() {
    let client = common::client().await;
    let ns = common::namespace(&client, "serve").await;
    let port = free_port().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args([
            "--log-format",
            "json",
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "-n",
            &ns,
        ])
        .env("KUBECONFIG", common::kubeconfig())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start berth serve");

    let base = format!("http://127.0.0.1:{port}");
    eventually(Duration::from_secs(30), "/readyz to answer 200", || async {
        http_get(&format!("{base}/readyz"))
            .await
            .is_some_and(|(code, _)| code == 200)
    })
    .await;
    let (code, body) = http_get(&format!("{base}/healthz"))
        .await
        .expect("healthz answers");
    assert_eq!(code, 200);
    assert!(body.contains("\"ok\""), "{body}");

    let pid = child.id().expect("pid") as i32;
    // SAFETY: kill(2) on the child this test started and still owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "send SIGTERM");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits within 10 s of SIGTERM")
        .expect("wait");
    assert!(status.success(), "exit status {status}");

    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut logs = Vec::new();
    while let Ok(Some(line)) = lines.next_line().await {
        logs.push(line);
    }
    assert!(!logs.is_empty(), "berth logs something");
    for line in &logs {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(
            v.get("level").is_some() && v.get("message").is_some(),
            "{line}"
        );
    }
    assert!(
        logs.iter().any(|l| l.contains("SIGTERM received")),
        "{logs:?}"
    );
    assert!(
        logs.iter().any(|l| l.contains("shut down cleanly")),
        "{logs:?}"
    );
}

async fn http_get(url: &str) -> Option<(u16, String)> {
    let resp = reqwest::get(url).await.ok()?;
    let code = resp.status().as_u16();
    Some((code, resp.text().await.ok()?))
}
