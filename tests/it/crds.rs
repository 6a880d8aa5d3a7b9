//! Berth's CRDs on the real API server: schema validation, CEL rules, kubectl views.

use std::time::Duration;

use berth::crd::{Instance, Node};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::common;

fn instance(name: &str, spec: Value) -> Instance {
    serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "Instance",
        "metadata": { "name": name }, "spec": spec
    }))
    .expect("instance literal")
}

fn valid_spec() -> Value {
    json!({
        "displayName": "Survival", "userId": "1163853373418598482", "image": "ghcr.io/example/paper:1.21",
        "node": "node-a", "memory": 1024, "cpu": 1.5,
        "ports": [{ "containerPort": 25565, "hostPort": 25565 }, { "containerPort": 25566, "hostPort": 25566 }],
        "primaryPort": 25565
    })
}

fn with(mut spec: Value, key: &str, value: Value) -> Value {
    spec[key] = value;
    spec
}

/// Creates an Instance from raw JSON (bypassing Rust's types, as kubectl would) and
/// returns the API server's error message, if any.
async fn create_raw(api: &Api<Instance>, name: &str, spec: Value) -> Result<(), String> {
    let body = json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "Instance",
        "metadata": { "name": name }, "spec": spec
    });
    let data = serde_json::to_vec(&body).expect("json");
    let req = http::Request::post(format!("{}?", api.resource_url()))
        .header("content-type", "application/json")
        .body(data)
        .expect("request");
    match api.clone().into_client().request::<Value>(req).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) => Err(status.message),
        Err(e) => panic!("unexpected client error: {e}"),
    }
}

#[tokio::test]
async fn valid_resources_are_accepted_and_invalid_ones_refused_with_the_schemas_message() {
    let client = common::client().await;
    common::crds(&client).await;
    let ns = common::namespace(&client, "crd-validation").await;
    let instances: Api<Instance> = Api::namespaced(client.clone(), &ns);
    let nodes: Api<Node> = Api::namespaced(client.clone(), &ns);

    let node: Node = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "Node",
        "metadata": { "name": "node-a" },
        "spec": { "displayName": "Node A", "address": "127.0.10.1", "ram": 8192, "tags": "eu,fast" }
    }))
    .expect("node literal");
    nodes
        .create(&PostParams::default(), &node)
        .await
        .expect("valid node accepted");
    instances
        .create(&PostParams::default(), &instance("valid", valid_spec()))
        .await
        .expect("valid instance accepted");

    let cases = [
        (
            "memory-zero",
            with(valid_spec(), "memory", json!(0)),
            "memory must be at least 1 MiB",
        ),
        (
            "cpu-zero",
            with(valid_spec(), "cpu", json!(0)),
            "cpu must be greater than 0 cores",
        ),
        (
            "port-too-big",
            with(
                valid_spec(),
                "ports",
                json!([{ "containerPort": 70000, "hostPort": 25565 }]),
            ),
            "should be less than or equal to 65535",
        ),
        (
            "host-port-twice",
            with(
                valid_spec(),
                "ports",
                json!([{ "containerPort": 1, "hostPort": 25565 }, { "containerPort": 2, "hostPort": 25565 }]),
            ),
            "host ports must be unique within an instance",
        ),
        (
            "primary-not-a-port",
            with(valid_spec(), "primaryPort", json!(27015)),
            "primaryPort must be one of the instance's host ports",
        ),
    ];
    for (name, spec, message) in cases {
        let err = create_raw(&instances, name, spec)
            .await
            .expect_err(&format!("{name} must be refused"));
        assert!(
            err.contains(message),
            "{name}: expected {message:?} in {err:?}"
        );
    }

    let params = PatchParams::default();
    let err = instances
        .patch(
            "valid",
            &params,
            &Patch::Merge(json!({ "spec": { "node": "node-b" } })),
        )
        .await
        .expect_err("changing the node is refused");
    assert!(err.to_string().contains("node is immutable"), "{err}");
    let err = instances
        .patch(
            "valid",
            &params,
            &Patch::Merge(json!({ "spec": { "userId": "someone-else" } })),
        )
        .await
        .expect_err("changing the owner is refused");
    assert!(err.to_string().contains("userId is immutable"), "{err}");
    // Other fields stay mutable.
    instances
        .patch(
            "valid",
            &params,
            &Patch::Merge(json!({ "spec": { "suspended": true } })),
        )
        .await
        .expect("suspending is allowed");
}

#[tokio::test]
async fn kubectl_shows_printer_columns_categories_and_field_docs() {
    let client = common::client().await;
    common::crds(&client).await;
    let ns = common::namespace(&client, "crd-kubectl").await;
    let instances: Api<Instance> = Api::namespaced(client.clone(), &ns);
    let nodes: Api<Node> = Api::namespaced(client.clone(), &ns);
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "berth.dev/v1alpha1", "kind": "Node", "metadata": { "name": "node-a" },
                "spec": { "displayName": "Node A", "address": "127.0.10.1" }
            }))
            .expect("node"),
        )
        .await
        .expect("create node");
    instances
        .create(&PostParams::default(), &instance("abcd1234", valid_spec()))
        .await
        .expect("create instance");

    // kubectl's discovery cache may lag the CRDs' creation by a moment.
    let inst =
        common::kubectl_eventually(&["get", "inst", "-n", &ns], Duration::from_secs(30)).await;
    let header: Vec<&str> = inst
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME", "STATE", "POWER", "NODE", "ADDRESS", "RESTARTS", "IMAGE", "USER", "AGE"
        ],
        "{inst}"
    );
    assert!(
        inst.contains("abcd1234") && inst.contains("ghcr.io/example/paper:1.21"),
        "{inst}"
    );

    let bnode = common::kubectl(&["get", "bnode", "-n", &ns]).await;
    let header: Vec<&str> = bnode
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "STATE",
            "KUBERNETES",
            "NODE",
            "ADDRESS",
            "INSTANCES",
            "AGE"
        ],
        "{bnode}"
    );

    let berth = common::kubectl(&["get", "berth", "-n", &ns, "-o", "name"]).await;
    assert!(berth.contains("instance.berth.dev/abcd1234"), "{berth}");
    assert!(berth.contains("node.berth.dev/node-a"), "{berth}");

    let explain = common::kubectl(&["explain", "instance.spec.memory"]).await;
    assert!(explain.contains("Memory in MiB"), "{explain}");
}
