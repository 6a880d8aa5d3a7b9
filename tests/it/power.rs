//! Power and lifecycle through the REST API, on kwok nodes (Pods and statuses;
//! what a real process does on stop, kill and reinstall is in `real_node`).

use std::collections::BTreeSet;
use std::time::Duration;

use berth::crd::{Instance, Power, PowerState};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

use crate::common::{self, FakeNode, eventually};
use crate::server::{Answer, TestServer};

/// A server whose stops do not wait long (kwok discards what is typed into a
/// console, so a StopCommand is never obeyed there), a fake node of the test's
/// own, a user, and a Berth Node on it.
async fn setup(test: &str) -> (TestServer, FakeNode, String) {
    let srv = TestServer::start_with(test, &["--stop-timeout", "1"]).await;
    let fake = FakeNode::create(&srv.client).await;
    srv.user("u1").await;
    let node = srv.node(&fake.ip).await;
    (srv, fake, node)
}

async fn deploy(srv: &TestServer, node: &str, port: i32) -> String {
    let a = srv
        .call(
            "POST",
            "/api/instances/deploy",
            Some(
                json!({ "image": "Python", "memory": 64, "cpu": 0.1, "ports": port.to_string(),
                         "nodeId": node, "name": "app", "user": "u1", "primary": port }),
            ),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    a.body["Id"].as_str().expect("Id").to_owned()
}

pub(crate) async fn power(srv: &TestServer, id: &str, action: &str) -> Answer {
    srv.call(
        "POST",
        &format!("/api/instances/{id}/power"),
        Some(json!({ "action": action })),
    )
    .await
}

async fn instance(srv: &TestServer, id: &str) -> Instance {
    Api::<Instance>::namespaced(srv.client.clone(), &srv.ns)
        .get(id)
        .await
        .expect("instance")
}

/// What a refused request must leave alone: the spec and its generation (the
/// controller's status writes go on).
async fn spec_of(srv: &TestServer, id: &str) -> (Option<i64>, Value) {
    let i = instance(srv, id).await;
    (i.metadata.generation, json!(i.spec))
}

/// The instance's Pod's uid, if it has a live one.
pub(crate) async fn pod_uid(srv: &TestServer, id: &str) -> Option<String> {
    Api::<Pod>::namespaced(srv.client.clone(), &srv.ns)
        .get_opt(id)
        .await
        .expect("get pod")
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .and_then(|p| p.uid())
}

pub(crate) async fn wait_power(
    srv: &TestServer,
    id: &str,
    want: PowerState,
    pod: bool,
) -> Instance {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let i = instance(srv, id).await;
        let has_pod = pod_uid(srv, id).await.is_some();
        if i.status.as_ref().and_then(|s| s.power) == Some(want) && has_pod == pod {
            return i;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} not {want:?} (Pod: {pod}); status {:?}",
            i.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The reasons of the Events on instance `id`.
pub(crate) async fn event_reasons(srv: &TestServer, id: &str) -> BTreeSet<String> {
    events(srv, id).await.into_iter().map(|(r, _)| r).collect()
}

/// The Events on instance `id`: (reason, message).
pub(crate) async fn events(srv: &TestServer, id: &str) -> Vec<(String, String)> {
    let out = common::kubectl(&[
        "get",
        "events",
        "-n",
        &srv.ns,
        "--field-selector",
        &format!("involvedObject.name={id}"),
        "-o",
        r#"jsonpath={range .items[*]}{.reason}{"\t"}{.message}{"\n"}{end}"#,
    ])
    .await;
    out.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(r, m)| (r.to_owned(), m.to_owned()))
        .collect()
}

async fn hostport_claims(srv: &TestServer) -> usize {
    Api::<ConfigMap>::namespaced(srv.client.clone(), &srv.ns)
        .list(&ListParams::default().labels("berth.dev/claim=hostport"))
        .await
        .expect("claims")
        .items
        .len()
}

#[tokio::test]
async fn power_actions_move_the_pod_and_the_status() {
    let (srv, fake, node) = setup("pw-actions").await;
    let port = common::random_port();
    let id = deploy(&srv, &node, port).await;
    wait_power(&srv, &id, PowerState::Running, true).await;
    let first = pod_uid(&srv, &id).await.expect("a Pod");

    // Stop: the Pod goes; the instance, its host port and its data claim stay.
    let a = power(&srv, &id, "stop").await;
    assert_eq!(a.status, 202, "{a:?}");
    assert_eq!(a.body["desired"], "Stopped");
    assert_eq!(a.body["Id"], id.as_str());
    wait_power(&srv, &id, PowerState::Offline, false).await;
    assert_eq!(
        hostport_claims(&srv).await,
        1,
        "a stopped server keeps its host port"
    );
    let shown = srv
        .call("POST", "/api/getInstance", Some(json!({ "id": id })))
        .await;
    assert_eq!(
        (
            shown.body["Power"].as_str(),
            shown.body["DesiredPower"].as_str()
        ),
        (Some("Offline"), Some("Stopped"))
    );

    // Start: a new Pod, on the same host port.
    assert_eq!(power(&srv, &id, "start").await.status, 202);
    wait_power(&srv, &id, PowerState::Running, true).await;
    let second = pod_uid(&srv, &id).await.expect("a Pod");
    assert_ne!(second, first);
    let pod = Api::<Pod>::namespaced(srv.client.clone(), &srv.ns)
        .get(&id)
        .await
        .expect("pod");
    let ports: Vec<Option<i32>> = pod.spec.expect("spec").containers[0]
        .ports
        .iter()
        .flatten()
        .map(|p| p.host_port)
        .collect();
    assert!(ports.iter().all(|p| *p == Some(port)), "{ports:?}");

    // Restart: another new Pod, and the request acknowledged.
    assert_eq!(power(&srv, &id, "restart").await.status, 202);
    eventually(
        Duration::from_secs(60),
        "a restarted Pod, Running, the request acknowledged",
        || async {
            let i = instance(&srv, &id).await;
            let asked = i.spec.restart_requested_at.clone();
            let status = i.status.clone().unwrap_or_default();
            pod_uid(&srv, &id).await.is_some_and(|u| u != second)
                && status.power == Some(PowerState::Running)
                && asked.is_some()
                && status.restarted_at == asked
        },
    )
    .await;

    // Kill: the Pod goes at once.
    let started = std::time::Instant::now();
    assert_eq!(power(&srv, &id, "kill").await.status, 202);
    wait_power(&srv, &id, PowerState::Offline, false).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "killed after {:?}",
        started.elapsed()
    );
    assert_eq!(instance(&srv, &id).await.spec.power, Power::Killed);

    let reasons = event_reasons(&srv, &id).await;
    for reason in ["Stopping", "Killed", "Running"] {
        assert!(reasons.contains(reason), "no {reason} Event in {reasons:?}");
    }
    fake.delete(&srv.client).await;
    srv.finish().await;
}

#[tokio::test]
async fn a_suspended_instance_refuses_to_start() {
    let (srv, fake, node) = setup("pw-suspended").await;
    let id = deploy(&srv, &node, common::random_port()).await;
    let a = srv
        .call("POST", &format!("/api/instances/suspend/{id}"), None)
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let before = spec_of(&srv, &id).await;
    for action in ["start", "restart"] {
        let a = power(&srv, &id, action).await;
        assert_eq!(
            (a.status, a.body),
            (
                409,
                json!({ "error": "The instance is suspended; unsuspend it first" })
            ),
            "{action}"
        );
    }
    assert_eq!(spec_of(&srv, &id).await, before, "nothing written");
    wait_power(&srv, &id, PowerState::Offline, false).await;
    fake.delete(&srv.client).await;
    srv.finish().await;
}

#[tokio::test]
async fn concurrent_power_requests_end_in_the_last_ones_state() {
    let (srv, fake, node) = setup("pw-race").await;
    let id = deploy(&srv, &node, common::random_port()).await;
    wait_power(&srv, &id, PowerState::Running, true).await;
    let answers = futures::future::join_all((0..20).map(|i| {
        let action = if i % 2 == 0 { "stop" } else { "start" };
        power(&srv, &id, action)
    }))
    .await;
    assert!(answers.iter().all(|a| a.status == 202), "{answers:?}");
    // The API server ordered them: the answer with the highest generation is the last.
    let last = answers
        .iter()
        .max_by_key(|a| a.body["generation"].as_i64().unwrap_or_default())
        .expect("answers");
    let desired = last.body["desired"].as_str().expect("desired").to_owned();
    let spec = instance(&srv, &id).await.spec.power;
    assert_eq!(
        json!(spec),
        json!(desired),
        "the spec holds the last request's power"
    );
    match desired.as_str() {
        "Running" => wait_power(&srv, &id, PowerState::Running, true).await,
        _ => wait_power(&srv, &id, PowerState::Offline, false).await,
    };
    fake.delete(&srv.client).await;
    srv.finish().await;
}

#[tokio::test]
async fn bad_lifecycle_requests_get_4xx_json_and_write_nothing() {
    let (srv, fake, node) = setup("pw-bad").await;
    let port = common::random_port();
    let id = deploy(&srv, &node, port).await;
    wait_power(&srv, &id, PowerState::Running, true).await;
    // Grow-only applies to a disk that is set: set one first.
    let a = srv
        .call(
            "PATCH",
            &format!("/api/instances/{id}"),
            Some(json!({ "disk": 2048 })),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let before = spec_of(&srv, &id).await;
    let claims = hostport_claims(&srv).await;
    let cases: Vec<(&str, String, Value, u16, &str)> = vec![
        (
            "POST",
            format!("/api/instances/{id}/power"),
            json!({ "action": "reboot" }),
            400,
            "action must be start, stop, restart or kill",
        ),
        (
            "POST",
            format!("/api/instances/{id}/power"),
            json!({}),
            400,
            "Missing required field: action",
        ),
        (
            "POST",
            format!("/api/instances/{id}/power"),
            json!({ "action": ["stop"] }),
            400,
            "action must be a string",
        ),
        (
            "POST",
            "/api/instances/nosuch/power".into(),
            json!({ "action": "stop" }),
            400,
            "Instance not found",
        ),
        (
            "POST",
            "/api/instances/%00/power".into(),
            json!({ "action": "stop" }),
            400,
            "Instance not found",
        ),
        (
            "PATCH",
            format!("/api/instances/{id}"),
            json!({}),
            400,
            "Nothing to change",
        ),
        (
            "PATCH",
            format!("/api/instances/{id}"),
            json!({ "user": "u2" }),
            400,
            "user cannot be edited",
        ),
        (
            "PATCH",
            format!("/api/instances/{id}"),
            json!({ "nodeId": "x" }),
            400,
            "nodeId cannot be edited",
        ),
        (
            "PATCH",
            format!("/api/instances/{id}"),
            json!({ "memory": -1 }),
            400,
            "memory must be a whole number",
        ),
        (
            "PATCH",
            format!("/api/instances/{id}"),
            json!({ "cpu": "lots" }),
            400,
            "cpu must be a number",
        ),
        (
            "PATCH",
            format!("/api/instances/{id}"),
            json!({ "ports": "70000" }),
            400,
            "is not a port between 1 and 65535",
        ),
        (
            "PATCH",
            format!("/api/instances/{id}"),
            json!({ "primary": 1 }),
            400,
            "primary port 1 is not one of the instance's ports",
        ),
        (
            "PATCH",
            format!("/api/instances/{id}"),
            json!({ "image": "docker.io/library/nginx" }),
            400,
            "Image not found in the catalog",
        ),
        (
            "PATCH",
            format!("/api/instances/{id}"),
            json!({ "disk": 5 }),
            400,
            "disk can only grow",
        ),
        (
            "PATCH",
            format!("/api/instances/{id}"),
            json!({ "variables": "[1]" }),
            400,
            "variables must be an object",
        ),
        (
            "PATCH",
            "/api/instances/nosuch".into(),
            json!({ "name": "x" }),
            400,
            "Instance not found",
        ),
        (
            "POST",
            format!("/api/instances/{id}/reinstall"),
            json!({ "wipe": "yes" }),
            400,
            "wipe must be true or false",
        ),
        (
            "POST",
            "/api/instances/nosuch/reinstall".into(),
            json!({}),
            400,
            "Instance not found",
        ),
    ];
    for (method, path, body, status, says) in cases {
        let a = srv.call(method, &path, Some(body.clone())).await;
        assert_eq!(a.status, status, "{method} {path} {body}: {a:?}");
        assert!(
            a.body["error"].as_str().is_some_and(|e| e.contains(says)),
            "{method} {path} {body}: {a:?}"
        );
    }
    assert_eq!(spec_of(&srv, &id).await, before, "a refused request wrote");
    assert_eq!(hostport_claims(&srv).await, claims);
    fake.delete(&srv.client).await;
    srv.finish().await;
}

#[tokio::test]
async fn edits_are_checked_atomic_and_rolled_out() {
    let (srv, fake, node) = setup("pw-edit").await;
    let (pa, pb) = (common::random_port(), common::random_port() + 1);
    let a = deploy(&srv, &node, pa).await;
    let b = deploy(&srv, &node, pb).await;
    wait_power(&srv, &a, PowerState::Running, true).await;
    wait_power(&srv, &b, PowerState::Running, true).await;
    let claims = hostport_claims(&srv).await;
    let before = spec_of(&srv, &a).await;

    // Onto a taken port: 400, and nothing changed, no claim left behind.
    let taken = srv
        .call(
            "PATCH",
            &format!("/api/instances/{a}"),
            Some(json!({ "ports": format!("{pa},{pb}") })),
        )
        .await;
    assert_eq!(taken.status, 400, "{taken:?}");
    assert!(
        taken.body["error"]
            .as_str()
            .is_some_and(|e| e.contains(&format!("Host port {pb} is already in use"))),
        "{taken:?}"
    );
    assert_eq!(spec_of(&srv, &a).await, before);
    assert_eq!(hostport_claims(&srv).await, claims);

    // CPU: resized in place, the same Pod.
    let pod_before = pod_uid(&srv, &a).await.expect("pod");
    let edited = srv
        .call(
            "PATCH",
            &format!("/api/instances/{a}"),
            Some(json!({ "cpu": 0.25 })),
        )
        .await;
    assert_eq!(
        (edited.status, edited.body["Cpu"].clone()),
        (200, json!(0.25)),
        "{edited:?}"
    );
    let pods: Api<Pod> = Api::namespaced(srv.client.clone(), &srv.ns);
    eventually(
        Duration::from_secs(30),
        "the Pod's CPU resized in place",
        || async {
            pods.get(&a).await.ok().is_some_and(|p| {
                let r = p
                    .spec
                    .and_then(|s| s.containers[0].resources.clone())
                    .unwrap_or_default();
                r.limits
                    .as_ref()
                    .and_then(|l| l.get("cpu"))
                    .map(|q| q.0.as_str())
                    == Some("250m")
                    && r.requests == r.limits
            })
        },
    )
    .await;
    assert_eq!(
        pod_uid(&srv, &a).await,
        Some(pod_before.clone()),
        "no new Pod for a CPU change"
    );

    // Memory and a new port: a new Pod with them; the old port is freed.
    let pn = common::random_port() + 2;
    let edited = srv
        .call(
            "PATCH",
            &format!("/api/instances/{a}"),
            Some(json!({ "memory": 128, "ports": pn.to_string(), "primary": pn })),
        )
        .await;
    assert_eq!(edited.status, 200, "{edited:?}");
    assert_eq!(
        (edited.body["Memory"].clone(), edited.body["Ports"].clone()),
        (json!(128), json!(format!("{pn}:{pn}")))
    );
    eventually(
        Duration::from_secs(60),
        "a new Pod with the new memory and port",
        || async {
            pods.get_opt(&a).await.ok().flatten().is_some_and(|p| {
                let c = &p.spec.as_ref().expect("spec").containers[0];
                let memory = c
                    .resources
                    .as_ref()
                    .and_then(|r| r.limits.as_ref())
                    .and_then(|l| l.get("memory"))
                    .map(|q| q.0.clone());
                p.uid() != Some(pod_before.clone())
                    && memory.as_deref() == Some("128Mi")
                    && c.ports
                        .iter()
                        .flatten()
                        .all(|port| port.host_port == Some(pn))
            })
        },
    )
    .await;
    assert_eq!(
        hostport_claims(&srv).await,
        claims,
        "one claim given up, one made"
    );
    let reused = deploy(&srv, &node, pa).await;
    assert!(
        !reused.is_empty(),
        "the freed port can be deployed on again"
    );
    let reasons = event_reasons(&srv, &a).await;
    assert!(
        reasons.contains("Edited") && reasons.contains("Resized"),
        "{reasons:?}"
    );

    // A name is not the Pod's: no new Pod.
    let pod_now = pod_uid(&srv, &a).await;
    let renamed = srv
        .call(
            "PATCH",
            &format!("/api/instances/{a}"),
            Some(json!({ "name": "renamed" })),
        )
        .await;
    assert_eq!(renamed.body["Name"], "renamed");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pod_uid(&srv, &a).await, pod_now);
    fake.delete(&srv.client).await;
    srv.finish().await;
}

#[tokio::test]
async fn racing_port_edits_leave_one_winner_and_no_stray_claims() {
    let (srv, fake, node) = setup("pw-edit-race").await;
    let port = common::random_port();
    let id = deploy(&srv, &node, port).await;
    wait_power(&srv, &id, PowerState::Running, true).await;
    // Each edit adds a different port to the same current spec.
    let answers = futures::future::join_all((1..=10).map(|i| {
        let path = format!("/api/instances/{id}");
        let ports = format!("{port},{}", port + i);
        let srv = &srv;
        async move {
            let a = srv
                .call("PATCH", &path, Some(json!({ "ports": ports })))
                .await;
            (ports, a)
        }
    }))
    .await;
    let won: Vec<&String> = answers
        .iter()
        .filter(|(_, a)| a.status == 200)
        .map(|(p, _)| p)
        .collect();
    assert!(
        answers.iter().all(|(_, a)| [200, 409].contains(&a.status)),
        "{answers:?}"
    );
    assert!(!won.is_empty(), "{answers:?}");
    let final_ports: Vec<i32> = instance(&srv, &id)
        .await
        .spec
        .ports
        .iter()
        .map(|p| p.host_port)
        .collect();
    // The spec is one winner's, and exactly its ports are claimed: a loser's
    // claim was given back, not left behind.
    assert!(
        won.iter().any(|p| **p
            == final_ports
                .iter()
                .map(i32::to_string)
                .collect::<Vec<_>>()
                .join(",")),
        "{final_ports:?} is no winner's ({won:?})"
    );
    assert_eq!(hostport_claims(&srv).await, final_ports.len());
    fake.delete(&srv.client).await;
    srv.finish().await;
}
