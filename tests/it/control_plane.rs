//! The test control plane itself: that what Berth relies on is real and works.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

use crate::common::{self, eventually};

const FAKE_NODES: &str = "type=kwok";

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test]
async fn fake_nodes_are_ready_and_the_server_version_is_stamped() {
    let client = common::client().await;
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default().labels(FAKE_NODES))
        .await
        .expect("list nodes");
    assert!(
        nodes.items.len() >= 3,
        "expected at least 3 fake nodes, got {}",
        nodes.items.len()
    );
    for node in &nodes.items {
        assert!(
            node_ready(node),
            "node {:?} is not Ready",
            node.metadata.name
        );
    }

    let version: serde_json::Value =
        serde_json::from_str(&common::kubectl(&["version", "-o", "json"]).await).expect("json");
    let server = version["serverVersion"]["gitVersion"]
        .as_str()
        .unwrap_or_default();
    assert!(server.starts_with("v1.36."), "server version is {server:?}");
    let client_version = version["clientVersion"]["gitVersion"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(
        client_version, server,
        "kubectl and the API server are one build"
    );
}

fn pinned_pod(name: &str, node: &str, host_port: i32) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "affinity": { "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{ "matchExpressions": [{
                    "key": "kubernetes.io/hostname", "operator": "In", "values": [node]
                }]}]
            }}},
            "containers": [{
                "name": "game", "image": "example.invalid/game:1",
                "ports": [{ "containerPort": 25565, "hostPort": host_port, "protocol": "TCP" }]
            }]
        }
    }))
    .expect("pod literal")
}

#[tokio::test]
async fn the_scheduler_honours_node_affinity_and_host_port_conflicts() {
    let client = common::client().await;
    let ns = common::namespace(&client, "scheduler").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let port = common::random_port();

    pods.create(
        &PostParams::default(),
        &pinned_pod("first", "kwok-node-2", port),
    )
    .await
    .expect("create first pod");
    eventually(
        Duration::from_secs(30),
        "first pod Running on kwok-node-2",
        || async {
            let p = pods.get("first").await.expect("get pod");
            let spec_node = p.spec.as_ref().and_then(|s| s.node_name.clone());
            let phase = p.status.as_ref().and_then(|s| s.phase.clone());
            let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone());
            spec_node.as_deref() == Some("kwok-node-2")
                && phase.as_deref() == Some("Running")
                && ip.is_some()
        },
    )
    .await;

    pods.create(
        &PostParams::default(),
        &pinned_pod("second", "kwok-node-2", port),
    )
    .await
    .expect("create second pod");
    eventually(
        Duration::from_secs(30),
        "second pod Unschedulable",
        || async {
            let p = pods.get("second").await.expect("get pod");
            p.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| {
                    c.type_ == "PodScheduled"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("Unschedulable")
                })
        },
    )
    .await;
    let second = pods.get("second").await.expect("get pod");
    assert_eq!(
        second.spec.and_then(|s| s.node_name),
        None,
        "the conflicting pod must not be bound"
    );
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    eventually(
        Duration::from_secs(30),
        "FailedScheduling event",
        || async {
            events
                .list(&ListParams::default().fields("involvedObject.name=second"))
                .await
                .expect("list events")
                .items
                .iter()
                .any(|e| e.reason.as_deref() == Some("FailedScheduling"))
        },
    )
    .await;
}

#[tokio::test]
async fn the_garbage_collector_deletes_owned_pods() {
    let client = common::client().await;
    let ns = common::namespace(&client, "gc").await;
    let owners: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let owner = owners
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": { "name": "owner" } })).expect("cm"),
        )
        .await
        .expect("create owner");
    let mut pod = pinned_pod("owned", "kwok-node-1", common::random_port());
    pod.metadata.owner_references = Some(vec![
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
            "uid": owner.metadata.uid.expect("uid"),
        }))
        .expect("owner ref"),
    ]);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create owned pod");

    owners
        .delete("owner", &DeleteParams::default())
        .await
        .expect("delete owner");
    eventually(
        Duration::from_secs(60),
        "owned pod deleted by the garbage collector",
        || async { pods.get_opt("owned").await.expect("get pod").is_none() },
    )
    .await;
}

fn crd_with_schema(group: &str, schema: serde_json::Value) -> CustomResourceDefinition {
    serde_json::from_value(json!({
        "metadata": { "name": format!("widgets.{group}") },
        "spec": {
            "group": group,
            "names": { "kind": "Widget", "plural": "widgets" },
            "scope": "Namespaced",
            "versions": [{ "name": "v1", "served": true, "storage": true, "schema": { "openAPIV3Schema": schema } }]
        }
    }))
    .expect("crd literal")
}

#[tokio::test]
async fn crds_must_be_structural() {
    let client = common::client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];

    // A property without a type is not structural.
    let bad = crd_with_schema(
        &format!("bad{suffix}.test.berth.dev"),
        json!({ "type": "object", "properties": { "spec": { "properties": { "size": { "type": "integer" } } } } }),
    );
    let err = crds
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("a non-structural CRD is refused");
    assert!(err.to_string().contains("type"), "unexpected error: {err}");

    let group = format!("good{suffix}.test.berth.dev");
    let good = crd_with_schema(
        &group,
        json!({ "type": "object", "properties": { "spec": { "type": "object", "properties": { "size": { "type": "integer" } } } } }),
    );
    crds.create(&PostParams::default(), &good)
        .await
        .expect("a structural CRD is accepted");
    let name = format!("widgets.{group}");
    let established = kube::runtime::wait::await_condition(
        crds.clone(),
        &name,
        kube::runtime::wait::conditions::is_crd_established(),
    );
    tokio::time::timeout(Duration::from_secs(30), established)
        .await
        .expect("Established in time")
        .expect("watch works");
    crds.delete(&name, &DeleteParams::default())
        .await
        .expect("delete crd");
}

#[tokio::test]
async fn rbac_is_enforced() {
    let out = common::run(
        "kubectl",
        &[
            "auth",
            "can-i",
            "--as",
            "system:serviceaccount:a:b",
            "list",
            "secrets",
        ],
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");
    assert!(!out.status.success(), "can-i exits non-zero on no");
    // The admin can, so the "no" above is RBAC's answer and not a broken command.
    assert_eq!(
        common::kubectl(&["auth", "can-i", "list", "secrets"])
            .await
            .trim(),
        "yes"
    );
}

#[tokio::test]
async fn helm_works_on_a_small_chart() {
    let dir = std::env::temp_dir().join(format!("berth-helm-{}", uuid::Uuid::new_v4().simple()));
    let chart = dir.join("hello");
    std::fs::create_dir_all(chart.join("templates")).expect("mkdir");
    std::fs::write(
        chart.join("Chart.yaml"),
        "apiVersion: v2\nname: hello\ndescription: A test chart\nversion: 0.1.0\nicon: https://example.invalid/icon.png\n",
    )
    .expect("write Chart.yaml");
    std::fs::write(chart.join("values.yaml"), "greeting: hello\n").expect("write values");
    std::fs::write(
        chart.join("templates/configmap.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-greeting\ndata:\n  greeting: {{ .Values.greeting | quote }}\n",
    )
    .expect("write template");
    let chart = chart.to_str().expect("utf-8 path");

    let version = common::run("helm", &["version", "--short"]).await;
    assert!(
        String::from_utf8_lossy(&version.stdout).starts_with("v3."),
        "helm version: {version:?}"
    );
    let lint = common::run("helm", &["lint", "--strict", chart]).await;
    assert!(
        lint.status.success(),
        "helm lint: {}",
        String::from_utf8_lossy(&lint.stdout)
    );
    let rendered = common::run("helm", &["template", "demo", chart, "--set", "greeting=hi"]).await;
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(
        rendered.status.success()
            && text.contains("name: demo-greeting")
            && text.contains("greeting: \"hi\""),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// A line in the CRI log format kwok serves (time, stream, full-line tag, text).
pub fn cri_log_line(text: &str) -> String {
    format!("{} stdout F {text}\n", k8s_openapi::jiff::Timestamp::now())
}

#[tokio::test]
async fn fake_nodes_serve_logs_that_follow_a_file() {
    use std::io::Write;
    let client = common::client().await;
    let ns = common::namespace(&client, "cp-kwok-logs").await;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "console" },
        "spec": { "nodeName": "kwok-node-1",
                  "containers": [{ "name": "server", "image": "x", "stdin": true, "tty": true }] }
    }))
    .expect("pod");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    // Every fake game server shows the cluster's stand-in console...
    let logs =
        common::kubectl_eventually(&["logs", "-n", &ns, "console"], Duration::from_secs(30)).await;
    assert!(logs.contains("Done ("), "{logs}");
    // ...unless a Logs object names a file of its own, which is followed.
    let file = std::env::temp_dir().join(format!("berth-{ns}.log"));
    std::fs::write(&file, cri_log_line("first line")).expect("log file");
    let manifest = json!({
        "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Logs",
        "metadata": { "name": "console", "namespace": ns },
        "spec": { "logs": [{ "containers": ["server"], "logsFile": file, "follow": true }] }
    });
    let path = std::env::temp_dir().join(format!("berth-{ns}-logs.json"));
    std::fs::write(&path, manifest.to_string()).expect("manifest");
    common::kubectl(&["apply", "-f", path.to_str().expect("path")]).await;
    eventually(
        Duration::from_secs(30),
        "the Pod's own log file served",
        || async {
            pods.logs("console", &Default::default())
                .await
                .is_ok_and(|l| l.contains("first line"))
        },
    )
    .await;
    let follow = tokio::process::Command::new(common::bin("kubectl"))
        .args(["logs", "-f", "-n", &ns, "console"])
        .env("KUBECONFIG", common::kubeconfig())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl logs -f");
    let mut out = follow.stdout.expect("stdout");
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 1024];
        let mut appended = false;
        loop {
            if !appended && seen.contains("first line") {
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&file)
                    .expect("open");
                f.write_all(cri_log_line("written while followed").as_bytes())
                    .expect("append");
                appended = true;
            }
            if seen.contains("written while followed") {
                return;
            }
            let n = tokio::io::AsyncReadExt::read(&mut out, &mut buf)
                .await
                .expect("read");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await;
    assert!(found.is_ok(), "the appended line never arrived: {seen:?}");
    std::fs::remove_file(&file).ok();
    std::fs::remove_file(&path).ok();
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client)
        .delete(&ns, &Default::default())
        .await;
}
