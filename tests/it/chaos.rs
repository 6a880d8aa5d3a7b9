//! Chaos: the control plane itself fails under Berth. These disturb every test
//! sharing the cluster, so the parallel run skips them and `make test` runs them
//! afterwards, one at a time (`make chaos` runs only them).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use berth::crd::{Instance, InstanceState};
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

use crate::common::{self, eventually};
use crate::server::{self, TestServer};

fn cluster_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/cluster")
}

/// Kills a control plane component with SIGKILL and waits until it is dead (a
/// zombie counts: it only waits to be reaped).
async fn kill(component: &str) {
    let pid: u32 = std::fs::read_to_string(cluster_dir().join(format!("pids/{component}.pid")))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    common::signal(pid, libc::SIGKILL);
    eventually(
        Duration::from_secs(10),
        "the killed process gone",
        || async {
            std::fs::read_to_string(format!("/proc/{pid}/status")).map_or(true, |s| {
                s.lines()
                    .any(|l| l.starts_with("State:") && l.contains('Z'))
            })
        },
    )
    .await;
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

/// `/readyz`'s status code (0: no answer).
async fn readyz(base: &str) -> u16 {
    reqwest::get(format!("{base}/readyz"))
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// Deploys with an Idempotency-Key, retrying while the API server is away.
async fn deploy(srv: &TestServer, node: &str, port: i32) -> String {
    let body = json!({ "image": "Python", "memory": 64, "cpu": 0.05, "ports": port.to_string(),
                       "nodeId": node, "name": "app", "user": "u1", "primary": port });
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

/// Applies `manifest` (YAML or JSON) with kubectl in `ns`.
async fn kubectl_apply(ns: &str, manifest: &str) {
    let path = std::env::temp_dir().join(format!("berth-chaos-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&path, manifest).expect("write manifest");
    common::kubectl(&["apply", "-n", ns, "-f", path.to_str().expect("path")]).await;
    std::fs::remove_file(&path).ok();
}

/// A user made with kubectl alone: its Secret, then its username and email claims.
async fn kubectl_user(ns: &str, user_id: &str, username: &str) {
    use berth::store::claims::{ClaimKind, claim_name};
    use berth::store::users::{email_key, secret_name, username_key};
    use k8s_openapi::ByteString;
    let email = format!("{username}@example.com");
    let secret = secret_name(user_id);
    let data: std::collections::BTreeMap<&str, ByteString> = [
        ("userId", user_id),
        ("username", username),
        ("email", &email),
        ("admin", "false"),
        (
            "password",
            "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k, ByteString(v.as_bytes().to_vec())))
    .collect();
    let manifest = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "berth.dev/user",
        "metadata": { "name": secret, "labels": { "app.kubernetes.io/managed-by": "berth" } },
        "data": data
    });
    kubectl_apply(ns, &manifest.to_string()).await;
    let uid = common::kubectl(&[
        "get",
        "secret",
        &secret,
        "-n",
        ns,
        "-o",
        "jsonpath={.metadata.uid}",
    ])
    .await;
    for (kind, key) in [
        (ClaimKind::Username, username_key(username)),
        (ClaimKind::Email, email_key(&email)),
    ] {
        kubectl_apply(
            ns,
            &json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": { "name": claim_name(kind, &key),
                              "labels": { "app.kubernetes.io/managed-by": "berth", "berth.dev/claim": kind.as_str() },
                              "ownerReferences": [{ "apiVersion": "v1", "kind": "Secret", "name": secret, "uid": uid.trim(), "controller": true }] },
                "data": { "holder": user_id }
            })
            .to_string(),
        )
        .await;
    }
}

#[tokio::test]
#[ignore = "kills the shared control plane: `make test` runs it after the parallel tests, alone"]
async fn a_control_plane_restart_never_leaves_berth_stale_or_falsely_ready() {
    let srv = TestServer::start_with("chaos-restart", &["--watch-grace", "3"]).await;
    srv.user("u1").await;
    let node = srv.node("127.0.10.2").await;
    let before: Vec<String> =
        futures::future::join_all((0..20).map(|i| deploy(&srv, &node, 20000 + i))).await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(srv.client.clone(), &srv.ns);
    let (_, probe) = berth::store::apikeys::create(&secrets, Some("probe".into()))
        .await
        .expect("probe key");
    srv.secret(&probe);
    let with_probe = || srv.send(srv.raw("GET", "/api/images").header("x-api-key", &probe));
    eventually(Duration::from_secs(5), "the probe key accepted", || async {
        with_probe().await.status == 200
    })
    .await;

    kill("kube-apiserver").await;
    kill("etcd").await;
    // (c) Unready while its view cannot be kept fresh, yet alive.
    eventually(
        Duration::from_secs(30),
        "/readyz failing during the outage",
        || async { readyz(&srv.base).await == 503 },
    )
    .await;
    let a = srv.send(srv.raw("GET", "/readyz")).await;
    assert!(
        a.body["reason"]
            .as_str()
            .is_some_and(|r| r.contains("failing")),
        "{a:?}"
    );
    assert_eq!(srv.send(srv.raw("GET", "/healthz")).await.status, 200);
    up().await;
    let restarted = Instant::now();
    eventually(
        Duration::from_secs(60),
        "/readyz ready again, by itself",
        || async { readyz(&srv.base).await == 200 },
    )
    .await;
    eprintln!(
        "ready again {:?} after the control plane",
        restarted.elapsed()
    );

    // (a) A key revoked after the restart is refused within 2 s.
    berth::store::apikeys::revoke(&secrets, "probe")
        .await
        .expect("revoke");
    let revoked = Instant::now();
    eventually(
        Duration::from_secs(2),
        "the revoked key refused",
        || async { with_probe().await.status == 401 },
    )
    .await;
    eprintln!("revoked key refused after {:?}", revoked.elapsed());

    // (b) What kubectl makes after the restart reaches the REST API within 5 s.
    let inst = json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "Instance", "metadata": { "name": "kubectl1" },
        "spec": { "displayName": "made with kubectl", "userId": "u1", "image": "ghcr.io/skyportlabs/images:python312",
                  "node": node, "memory": 64, "cpu": 0.05, "ports": [{ "containerPort": 25000, "hostPort": 25000 }],
                  "primaryPort": 25000 }
    });
    kubectl_apply(&srv.ns, &inst.to_string()).await;
    eventually(
        Duration::from_secs(5),
        "the kubectl Instance in the REST API",
        || async {
            srv.call(
                "POST",
                "/api/getInstance",
                Some(json!({ "id": "kubectl1" })),
            )
            .await
            .status
                == 200
        },
    )
    .await;
    kubectl_user(&srv.ns, "kubectl-user", "kubectluser").await;
    eventually(
        Duration::from_secs(5),
        "the kubectl user in the REST API",
        || async {
            let a = srv
                .call(
                    "POST",
                    "/api/getUser",
                    Some(json!({ "type": "username", "value": "kubectluser" })),
                )
                .await;
            a.status == 201 && a.body["userId"] == "kubectl-user"
        },
    )
    .await;
    let catalog = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "after-restart", "labels": { berth::names::LABEL_CATALOG: "true" } },
        "data": { "chaos.json": json!({ "Name": "Chaos", "Image": "example.invalid/chaos:1" }).to_string() }
    });
    kubectl_apply(&srv.ns, &catalog.to_string()).await;
    eventually(
        Duration::from_secs(5),
        "the kubectl catalog image in the REST API",
        || async {
            srv.call("GET", "/api/images", None)
                .await
                .body
                .as_array()
                .is_some_and(|a| a.iter().any(|i| i["Name"] == "Chaos"))
        },
    )
    .await;

    // (d) Deploys before and after all reach Running.
    let after: Vec<String> =
        futures::future::join_all((0..20).map(|i| deploy(&srv, &node, 21000 + i))).await;
    let api: Api<Instance> = Api::namespaced(srv.client.clone(), &srv.ns);
    let deployed: Vec<&String> = before.iter().chain(&after).collect();
    eventually(
        Duration::from_secs(120),
        "all 40 deployed instances Running",
        || async {
            api.list(&ListParams::default()).await.is_ok_and(|l| {
                l.items
                    .iter()
                    .filter(|i| {
                        i.metadata
                            .name
                            .as_ref()
                            .is_some_and(|n| deployed.contains(&n))
                    })
                    .filter(|i| {
                        i.status.as_ref().and_then(|s| s.state) == Some(InstanceState::Running)
                    })
                    .count()
                    == 40
            })
        },
    )
    .await;
    let listed = srv.call("GET", "/api/instances", None).await;
    let ids: Vec<&str> = listed
        .body
        .as_array()
        .map(|v| v.iter().filter_map(|i| i["Id"].as_str()).collect())
        .unwrap_or_default();
    for id in before.iter().chain(&after) {
        assert!(ids.contains(&id.as_str()), "{id} missing from the REST API");
    }
    let errors = server::sum_series(
        &server::metrics(&srv.base).await,
        "berth_watch_errors_total",
        &[],
        &[],
    );
    assert!(errors > 0, "watch failures are counted");
    eprintln!("watch failures counted: {errors}");
    srv.finish().await;
}

/// Advances etcd's revision past everything Berth has seen (writes outside
/// Kubernetes' keys) and compacts its history up to there.
async fn compact_etcd() -> u64 {
    let etcd = format!(
        "http://127.0.0.1:{}",
        std::env::var("ETCD_PORT").unwrap_or_else(|_| "12379".into())
    );
    let http = reqwest::Client::new();
    let mut revision = 0;
    for _ in 0..50 {
        // base64("/berth-chaos/bump") and base64("x")
        let put: Value = http
            .post(format!("{etcd}/v3/kv/put"))
            .json(&json!({ "key": "L2JlcnRoLWNoYW9zL2J1bXA=", "value": "eA==" }))
            .send()
            .await
            .expect("etcd put")
            .json()
            .await
            .expect("etcd answer");
        revision = put["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .expect("revision");
    }
    let compacted = http
        .post(format!("{etcd}/v3/kv/compaction"))
        .json(&json!({ "revision": revision.to_string(), "physical": true }))
        .send()
        .await
        .expect("etcd compaction");
    assert!(compacted.status().is_success(), "{compacted:?}");
    revision
}

#[tokio::test]
#[ignore = "kills the shared API server: `make test` runs it after the parallel tests, alone"]
async fn after_an_etcd_compaction_berth_relists_and_serves_fresh_data() {
    let srv = TestServer::start_with("chaos-compaction", &["--watch-grace", "3"]).await;
    srv.user("u1").await;
    let node = srv.node("127.0.10.3").await;
    let gone = deploy(&srv, &node, 22000).await;

    // The API server goes; etcd's history moves on and is compacted meanwhile,
    // so every resourceVersion Berth knows is expired when it comes back.
    kill("kube-apiserver").await;
    let revision = compact_etcd().await;
    up().await;
    eventually(Duration::from_secs(60), "/readyz ready again", || async {
        readyz(&srv.base).await == 200
    })
    .await;
    // Fresh: what changes now shows, what goes now goes.
    let api: Api<Instance> = Api::namespaced(srv.client.clone(), &srv.ns);
    api.delete(&gone, &Default::default())
        .await
        .expect("delete");
    eventually(
        Duration::from_secs(5),
        "a deletion after the restart seen",
        || async {
            srv.call("POST", "/api/getInstance", Some(json!({ "id": gone })))
                .await
                .status
                == 400
        },
    )
    .await;
    let fresh = deploy(&srv, &node, 22001).await;
    common::kubectl(&[
        "patch",
        "instance",
        &fresh,
        "-n",
        &srv.ns,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"displayName":"renamed with kubectl"}}"#,
    ])
    .await;
    eventually(
        Duration::from_secs(5),
        "a change made with kubectl after the restart seen",
        || async {
            let a = srv
                .call("POST", "/api/getInstance", Some(json!({ "id": fresh })))
                .await;
            a.status == 200 && a.body["Name"] == "renamed with kubectl"
        },
    )
    .await;
    let now: u64 = api
        .get(&fresh)
        .await
        .expect("get")
        .metadata
        .resource_version
        .and_then(|v| v.parse().ok())
        .expect("resourceVersion");
    assert!(
        now > revision,
        "etcd's history was compacted past what Berth had seen"
    );
    let nodes = srv.call("GET", "/api/nodes", None).await;
    assert_eq!(
        nodes.body[0]["instances"], 1,
        "the node's count follows the relisted instances: {nodes:?}"
    );
    srv.finish().await;
}
