//! Chaos: the control plane itself restarts under Berth. These disturb every test
//! sharing the cluster, so `make test` skips them and `make chaos` runs them alone.

use std::path::PathBuf;
use std::time::Duration;

use berth::crd::{Instance, InstanceState};
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

use crate::common::eventually;
use crate::server::TestServer;

fn cluster_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/cluster")
}

fn kill(component: &str) {
    let pid: i32 = std::fs::read_to_string(cluster_dir().join(format!("pids/{component}.pid")))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    // SAFETY: kill(2) on a control plane process the test scripts started.
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGKILL) },
        0,
        "kill {component}"
    );
}

async fn up() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/up.sh");
    let out = tokio::process::Command::new("bash")
        .arg(script)
        .output()
        .await
        .expect("up.sh");
    assert!(
        out.status.success(),
        "up.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
#[ignore = "restarts the shared control plane; run alone with `make chaos`"]
async fn berth_recovers_when_the_api_server_and_etcd_restart() {
    let srv = TestServer::start("chaos-apiserver").await;
    srv.user("u1").await;
    let node = srv.node("127.0.10.2").await;
    let deploy = |port: i32| {
        let body = json!({ "image": "Python", "memory": 64, "cpu": 0.05, "ports": port.to_string(),
                           "nodeId": node, "name": "app", "user": "u1", "primary": port });
        let srv = &srv;
        async move {
            // Retried with the same key while the API server is away.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            loop {
                let req = srv
                    .raw("POST", "/api/instances/deploy")
                    .header("x-api-key", &srv.key)
                    .header("idempotency-key", format!("chaos-{port}"))
                    .json(&body);
                let a = srv.send(req).await;
                if a.status == 201 {
                    return a.body["Id"].as_str().map(str::to_owned).unwrap_or_default();
                }
                assert!(a.status >= 500, "only unavailability is retried: {a:?}");
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "deploy {port} never succeeded: {a:?}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    let before: Vec<String> = futures::future::join_all((0..20).map(|i| deploy(20000 + i))).await;

    kill("kube-apiserver");
    kill("etcd");
    let during = tokio::spawn({
        let base = srv.base.clone();
        async move {
            reqwest::get(format!("{base}/healthz"))
                .await
                .map(|r| r.status().as_u16())
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    up().await;
    assert_eq!(
        during.await.expect("join").ok(),
        Some(200),
        "Berth stays alive without its API server"
    );

    let after: Vec<String> = futures::future::join_all((0..20).map(|i| deploy(21000 + i))).await;
    let api: Api<Instance> = Api::namespaced(srv.client.clone(), &srv.ns);
    eventually(
        Duration::from_secs(120),
        "all 40 instances Running after the restart",
        || async {
            api.list(&ListParams::default()).await.is_ok_and(|l| {
                l.items.len() == 40
                    && l.items.iter().all(|i| {
                        i.status.as_ref().and_then(|s| s.state) == Some(InstanceState::Running)
                    })
            })
        },
    )
    .await;
    let a = srv.call("GET", "/api/instances", None).await;
    let listed: Vec<&str> = a
        .body
        .as_array()
        .map(|v| v.iter().filter_map(|i| i["Id"].as_str()).collect())
        .unwrap_or_default();
    for id in before.iter().chain(&after) {
        assert!(
            listed.contains(&id.as_str()),
            "{id} missing from the API's (re-watched) cache"
        );
    }
    let _: Value = a.body;
    srv.finish().await;
}
