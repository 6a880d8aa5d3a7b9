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

/// The count of a histogram series (`name_count{labels}`) in `text`, 0 when absent.
fn histogram_count(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{series} ")))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

#[tokio::test]
async fn metrics_time_answers_by_route_reconciles_and_api_server_calls() {
    use crate::server::{TestServer, metrics};
    let srv = TestServer::start("serve-metrics").await;
    let fake = common::FakeNode::create(&srv.client).await;
    srv.user("m1").await;
    let node = srv.node(&fake.ip).await;
    let port = common::random_port();
    let a = srv
        .call(
            "POST",
            "/api/instances/deploy",
            Some(serde_json::json!({
                "image": "ghcr.io/skyportlabs/images:java21", "memory": "512", "cpu": 1,
                "ports": port.to_string(), "primary": port.to_string(),
                "nodeId": node, "name": "Timed", "user": "m1",
            })),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    for _ in 0..3 {
        assert_eq!(srv.call("GET", "/api/instances", None).await.status, 200);
    }
    assert_eq!(
        srv.call("GET", "/api/no-such-route", None).await.status,
        404
    );
    let bad = srv
        .call(
            "POST",
            "/api/getInstance",
            Some(serde_json::json!({ "id": "nope" })),
        )
        .await;
    assert_eq!(bad.status, 400);

    // The reconcile that made the Pod is timed once it ran.
    eventually(Duration::from_secs(30), "a timed reconcile", || async {
        histogram_count(
            &metrics(&srv.base).await,
            "berth_reconcile_duration_seconds_count{controller=\"instance\"}",
        ) > 0
    })
    .await;
    let text = metrics(&srv.base).await;
    let count = |series: &str| histogram_count(&text, series);
    assert_eq!(
        count("berth_http_request_duration_seconds_count{route=\"/api/instances\",class=\"2xx\"}"),
        3,
        "by route pattern"
    );
    assert_eq!(
        count(
            "berth_http_request_duration_seconds_count{route=\"/api/instances/deploy\",class=\"2xx\"}"
        ),
        1
    );
    assert!(
        count(
            "berth_http_request_duration_seconds_count{route=\"/api/getInstance\",class=\"4xx\"}"
        ) >= 1
    );
    assert!(
        count("berth_http_request_duration_seconds_count{route=\"unmatched\",class=\"4xx\"}") >= 1
    );
    assert!(
        count("berth_kube_request_duration_seconds_count{verb=\"create\",resource=\"instances\"}")
            >= 1,
        "the deploy's create is timed"
    );
    assert!(
        count("berth_kube_request_duration_seconds_count{verb=\"create\",resource=\"pods\"}") >= 1
    );
    assert_eq!(
        count("berth_kube_request_duration_seconds_count{verb=\"watch\",resource=\"pods\"}"),
        0,
        "watches are counted, not timed"
    );
    assert!(
        crate::server::sum_series(&text, "berth_kube_requests_total", &["verb=\"watch\""], &[]) > 0
    );
    // The test cluster (1.36) streams lists: every informer filled from watches,
    // no paged list request at all.
    assert_eq!(
        crate::server::sum_series(&text, "berth_kube_requests_total", &["verb=\"list\""], &[]),
        0,
        "watches start with a streaming list"
    );
    // Every bucket bound is in seconds, from half a millisecond.
    assert!(
        text.contains("berth_http_request_duration_seconds_bucket{le=\"0.0005\",route=\"/api/instances\",class=\"2xx\"}"),
        "{text}"
    );
    fake.delete(&srv.client).await;
    srv.finish().await;
}
