//! The controllers against the real control plane: Pods placed by the real
//! scheduler on kwok nodes, statuses, self-healing, node readiness, no writes in a
//! steady state, and leader election between replicas.

use std::collections::BTreeMap;
use std::time::Duration;

use berth::crd::{Instance, InstanceState, Node, NodeState};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::common::{self, FakeNode, eventually};
use crate::server::{self, TestServer};

async fn deploy(srv: &TestServer, node: &str, user: &str, port: i32) -> String {
    let body = json!({ "image": "Node.js", "memory": 64, "cpu": 0.05, "ports": port.to_string(),
                       "nodeId": node, "name": "app", "user": user, "primary": port });
    let a = srv.call("POST", "/api/instances/deploy", Some(body)).await;
    assert_eq!(a.status, 201, "{a:?}");
    a.body["Id"].as_str().expect("Id").to_owned()
}

async fn instance(client: &Client, ns: &str, id: &str) -> Instance {
    Api::<Instance>::namespaced(client.clone(), ns)
        .get(id)
        .await
        .expect("instance")
}

async fn wait_state(client: &Client, ns: &str, id: &str, state: InstanceState) -> Instance {
    let api: Api<Instance> = Api::namespaced(client.clone(), ns);
    eventually(
        Duration::from_secs(60),
        &format!("instance {id} {state:?}"),
        || async { api.get(id).await.ok().and_then(|i| i.status?.state) == Some(state) },
    )
    .await;
    instance(client, ns, id).await
}

fn condition<'a>(
    inst: &'a Instance,
    type_: &str,
) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    inst.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .unwrap_or_else(|| panic!("no {type_} condition on {}", inst.name_any()))
}

#[tokio::test]
async fn a_deployed_instance_runs_on_its_node_and_heals() {
    let srv = TestServer::start("ctl-lifecycle").await;
    let (client, ns) = (srv.client.clone(), srv.ns.clone());
    srv.user("u1").await;
    let node_id = srv.node("127.0.10.3").await;
    let port = common::random_port();
    let id = deploy(&srv, &node_id, "u1", port).await;

    let inst = wait_state(&client, &ns, &id, InstanceState::Running).await;
    let status = inst.status.clone().expect("status");
    assert_eq!(
        status.address.as_deref(),
        Some(format!("127.0.10.3:{port}").as_str())
    );
    assert_eq!(status.kubernetes_node.as_deref(), Some("kwok-node-3"));
    assert_eq!(status.pod_name.as_deref(), Some(id.as_str()));
    assert_eq!(status.observed_generation, inst.metadata.generation);
    assert_eq!(condition(&inst, "Ready").status, "True");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = pods.get(&id).await.expect("pod");
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("kwok-node-3")
    );
    assert_eq!(pod.owner_references()[0].uid, inst.uid().expect("uid"));
    assert!(
        pod.managed_fields()
            .iter()
            .any(|m| m.manager.as_deref() == Some("berth")),
        "the Pod is applied by the berth field manager"
    );

    // The REST API and kubectl see it running, with its address.
    let a = srv
        .call("POST", "/api/getInstance", Some(json!({ "id": id })))
        .await;
    assert_eq!(
        (a.body["InternalState"].clone(), a.body["Address"].clone()),
        (json!("READY"), json!(format!("127.0.10.3:{port}")))
    );
    let table = common::kubectl(&["get", "inst", "-n", &ns]).await;
    let row = table.lines().find(|l| l.starts_with(&id)).expect("row");
    assert!(
        row.contains("Running") && row.contains(&format!("127.0.10.3:{port}")),
        "{table}"
    );
    eventually(
        Duration::from_secs(10),
        "node Online via the API",
        || async {
            let a = srv.call("GET", "/api/nodes", None).await;
            a.body[0]["status"] == json!("Online")
                && a.body[0]["kubernetesNode"] == json!("kwok-node-3")
        },
    )
    .await;

    // A Pod deleted behind Berth's back comes back.
    let old_uid = pod.uid().expect("uid");
    pods.delete(&id, &DeleteParams::default())
        .await
        .expect("delete pod");
    eventually(Duration::from_secs(60), "pod recreated", || async {
        pods.get_opt(&id)
            .await
            .ok()
            .flatten()
            .is_some_and(|p| p.uid() != Some(old_uid.clone()))
    })
    .await;
    wait_state(&client, &ns, &id, InstanceState::Running).await;

    // Suspend removes the Pod; unsuspend brings it back.
    assert_eq!(
        srv.call("POST", &format!("/api/instances/suspend/{id}"), None)
            .await
            .status,
        200
    );
    wait_state(&client, &ns, &id, InstanceState::Suspended).await;
    eventually(
        Duration::from_secs(60),
        "pod gone when suspended",
        || async { pods.get_opt(&id).await.ok().flatten().is_none() },
    )
    .await;
    assert_eq!(
        srv.call("POST", &format!("/api/instances/unsuspend/{id}"), None)
            .await
            .status,
        200
    );
    wait_state(&client, &ns, &id, InstanceState::Running).await;

    // Deleting the Instance removes its Pod and its host port claim.
    assert_eq!(
        srv.call("DELETE", "/api/instance/delete", Some(json!({ "id": id })))
            .await
            .status,
        201
    );
    let claims: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    eventually(
        Duration::from_secs(60),
        "pod and claim garbage-collected",
        || async {
            let no_pod = pods.get_opt(&id).await.ok().flatten().is_none();
            let no_claim = claims
                .list(&ListParams::default().labels("berth.dev/claim=hostport"))
                .await
                .is_ok_and(|l| l.items.is_empty());
            no_pod && no_claim
        },
    )
    .await;

    // Events tell the story in `kubectl describe`.
    let events = common::kubectl(&[
        "get",
        "events",
        "-n",
        &ns,
        "--field-selector",
        &format!("involvedObject.name={id}"),
    ])
    .await;
    for reason in ["PodCreated", "Running", "PodDeleted", "Suspended"] {
        assert!(events.contains(reason), "no {reason} event:\n{events}");
    }
    srv.finish().await;
}

#[tokio::test]
async fn a_host_port_conflict_shows_the_schedulers_reason() {
    let srv = TestServer::start("ctl-conflict").await;
    let (client, ns) = (srv.client.clone(), srv.ns.clone());
    let fake = FakeNode::create(&client).await;
    srv.user("u1").await;
    let node_id = srv.node(&fake.ip).await;
    // Written directly, bypassing the REST API's check and claims.
    let api: Api<Instance> = Api::namespaced(client.clone(), &ns);
    for name in ["first", "second"] {
        let inst: Instance = serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Instance", "metadata": { "name": name },
            "spec": { "displayName": name, "userId": "u1", "image": "example.invalid/game:1", "node": node_id,
                      "memory": 64, "cpu": 0.05, "ports": [{ "containerPort": 7777, "hostPort": 7777 }], "primaryPort": 7777 }
        }))
        .expect("instance");
        api.create(&PostParams::default(), &inst)
            .await
            .expect("create instance");
        if name == "first" {
            wait_state(&client, &ns, "first", InstanceState::Running).await;
        }
    }
    let api2 = api.clone();
    eventually(Duration::from_secs(60), "second Unschedulable", || async {
        api2.get("second")
            .await
            .ok()
            .and_then(|i| i.status)
            .is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Scheduled" && c.reason == "Unschedulable")
            })
    })
    .await;
    let second = instance(&client, &ns, "second").await;
    assert_eq!(
        second.status.as_ref().and_then(|s| s.state),
        Some(InstanceState::Pending)
    );
    let scheduled = condition(&second, "Scheduled");
    assert!(
        scheduled.message.contains("free ports"),
        "scheduler's message expected: {}",
        scheduled.message
    );
    let describe = common::kubectl(&["describe", "inst", "second", "-n", &ns]).await;
    assert!(
        describe.contains("Unschedulable") && describe.contains("free ports"),
        "{describe}"
    );
    fake.delete(&client).await;
    srv.finish().await;
}

#[tokio::test]
async fn node_status_follows_the_kubernetes_nodes_readiness() {
    let srv = TestServer::start("ctl-node").await;
    let (client, ns) = (srv.client.clone(), srv.ns.clone());
    let fake = FakeNode::create(&client).await;
    let node_id = srv.node(&fake.ip).await;
    let nodes: Api<Node> = Api::namespaced(client.clone(), &ns);
    let state = |want: NodeState| {
        let nodes = nodes.clone();
        let node_id = node_id.clone();
        async move {
            eventually(
                Duration::from_secs(30),
                &format!("node {want:?}"),
                || async {
                    nodes.get(&node_id).await.ok().and_then(|n| n.status?.state) == Some(want)
                },
            )
            .await;
        }
    };
    state(NodeState::Online).await;
    let n = nodes.get(&node_id).await.expect("node");
    let status = n.status.expect("status");
    assert_eq!(status.kubernetes_node.as_deref(), Some(fake.name.as_str()));
    assert_eq!(
        status.capacity.map(|c| (c.cpu, c.memory)),
        Some((64.0, 262_144))
    );

    fake.set_ready(&client, false).await;
    state(NodeState::Offline).await;
    eventually(
        Duration::from_secs(10),
        "node Offline via the API",
        || async {
            srv.call("GET", "/api/nodes", None).await.body[0]["status"] == json!("Offline")
        },
    )
    .await;
    fake.set_ready(&client, true).await;
    state(NodeState::Online).await;

    // A node whose address matches nothing is Unknown, and says why.
    let lost = srv.node("192.0.2.123").await;
    let nodes2 = nodes.clone();
    eventually(
        Duration::from_secs(30),
        "unmatched node Unknown",
        || async {
            nodes2
                .get(&lost)
                .await
                .ok()
                .and_then(|n| n.status)
                .is_some_and(|s| {
                    s.state == Some(NodeState::Unknown)
                        && s.message.is_some_and(|m| m.contains("192.0.2.123"))
                })
        },
    )
    .await;
    fake.delete(&client).await;
    srv.finish().await;
}

#[tokio::test]
async fn a_steady_state_makes_no_writes() {
    let srv = TestServer::start_with("ctl-steady", &["--stop-timeout", "1"]).await;
    let (client, ns) = (srv.client.clone(), srv.ns.clone());
    let fake = FakeNode::create(&client).await;
    srv.user("u1").await;
    let node_id = srv.node(&fake.ip).await;
    let ids =
        futures::future::join_all((0..200).map(|i| deploy(&srv, &node_id, "u1", 20000 + i))).await;
    assert_eq!(ids.len(), 200);
    let api: Api<Instance> = Api::namespaced(client.clone(), &ns);
    eventually(
        Duration::from_secs(180),
        "200 instances Running",
        || async { common::running_instances(&client, &ns).await == 200 },
    )
    .await;
    // Stopped instances are part of a steady state too.
    for id in &ids[..10] {
        assert_eq!(crate::power::power(&srv, id, "stop").await.status, 202);
    }
    for id in &ids[..10] {
        crate::power::wait_power(&srv, id, berth::crd::PowerState::Offline, false).await;
    }
    // In-flight work (Events, the node's status) settles: Berth's write count
    // stops moving. Then nothing may be written for 30 s.
    common::settled(Duration::from_secs(60), "Berth's writes", || {
        server::kube_writes(&srv.base)
    })
    .await;
    let versions =
        |items: Vec<(String, Option<String>)>| items.into_iter().collect::<BTreeMap<_, _>>();
    let rv_instances = versions(
        api.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .iter()
            .map(|i| (i.name_any(), i.resource_version()))
            .collect(),
    );
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let rv_pods = versions(
        pods.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .iter()
            .map(|p| (p.name_any(), p.resource_version()))
            .collect(),
    );
    let writes_before = server::kube_writes(&srv.base).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let writes_after = server::kube_writes(&srv.base).await;
    assert_eq!(
        writes_after, writes_before,
        "Berth wrote to the API server in a steady state"
    );
    let rv_instances_after = versions(
        api.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .iter()
            .map(|i| (i.name_any(), i.resource_version()))
            .collect(),
    );
    let rv_pods_after = versions(
        pods.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .iter()
            .map(|p| (p.name_any(), p.resource_version()))
            .collect(),
    );
    assert_eq!(
        rv_instances, rv_instances_after,
        "Instances changed in a steady state"
    );
    assert_eq!(rv_pods, rv_pods_after, "Pods changed in a steady state");
    assert_eq!(rv_pods.len(), 190);
    fake.delete(&client).await;
    srv.finish().await;
}

#[tokio::test]
async fn only_the_lease_holder_reconciles_and_a_successor_takes_over() {
    let srv = TestServer::start_with("ctl-leader", &["--api-only"]).await;
    let (client, ns) = (srv.client.clone(), srv.ns.clone());
    srv.user("u1").await;
    let node_id = srv.node("127.0.10.1").await;
    let args = server::FAST_ELECTION;
    let server::Berth {
        child: mut first,
        base: first_base,
        ..
    } = server::spawn_berth(&ns, &args).await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), &ns);
    eventually(Duration::from_secs(30), "a leader", || async {
        leases
            .get_opt("berth-controller")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
            .is_some()
    })
    .await;
    let server::Berth {
        child: mut second,
        base: second_base,
        ..
    } = server::spawn_berth(&ns, &args).await;

    let id = deploy(&srv, &node_id, "u1", common::random_port()).await;
    wait_state(&client, &ns, &id, InstanceState::Running).await;
    let reconciles = |base: String| async move {
        server::metric(
            &base,
            "berth_reconciles_total{controller=\"instance\",result=\"ok\"}",
        )
        .await
    };
    assert!(
        reconciles(first_base.clone()).await > 0,
        "the leader reconciles"
    );
    assert_eq!(
        reconciles(second_base.clone()).await,
        0,
        "the follower does not"
    );

    first.start_kill().expect("kill the leader");
    let _ = first.wait().await;
    let id2 = deploy(&srv, &node_id, "u1", common::random_port()).await;
    wait_state(&client, &ns, &id2, InstanceState::Running).await;
    assert!(
        reconciles(second_base.clone()).await > 0,
        "the successor reconciles"
    );
    let holder: Value =
        serde_json::to_value(leases.get("berth-controller").await.expect("lease").spec)
            .expect("json");
    assert!(
        holder["holderIdentity"]
            .as_str()
            .is_some_and(|h| !h.is_empty()),
        "{holder}"
    );
    second.start_kill().expect("kill");
    srv.finish().await;
}

/// The holder of the controllers' Lease.
async fn lease_holder(client: &Client, ns: &str) -> Option<String> {
    Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), ns)
        .get_opt("berth-controller")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
}

#[tokio::test]
async fn a_frozen_leader_stops_writing_until_it_leads_again() {
    let srv = TestServer::start_with("ctl-frozen", &["--api-only"]).await;
    let (client, ns) = (srv.client.clone(), srv.ns.clone());
    let fake = FakeNode::create(&client).await;
    srv.user("u1").await;
    let node_id = srv.node(&fake.ip).await;
    let args = [
        "--controller-only",
        "--lease-duration",
        "4",
        "--renew-deadline",
        "3",
        "--retry-period",
        "1",
    ];
    let kubeconfig = common::kubeconfig();
    let a = server::spawn_berth_with(&ns, &args, &kubeconfig, &[("POD_NAME", "ctl-a")]).await;
    eventually(Duration::from_secs(30), "ctl-a leads", || async {
        lease_holder(&client, &ns)
            .await
            .is_some_and(|h| h.starts_with("ctl-a-"))
    })
    .await;
    let mut b = server::spawn_berth_with(&ns, &args, &kubeconfig, &[("POD_NAME", "ctl-b")]).await;
    let first = deploy(&srv, &node_id, "u1", common::random_port()).await;
    wait_state(&client, &ns, &first, InstanceState::Running).await;
    let before = common::settled(Duration::from_secs(30), "ctl-a's writes", || {
        server::kube_writes(&a.base)
    })
    .await;
    assert!(before > 0, "the leader wrote");

    // Frozen past its renew deadline: the follower takes over and works on.
    let a_pid = a.child.id().expect("pid");
    common::signal(a_pid, libc::SIGSTOP);
    eventually(Duration::from_secs(30), "ctl-b takes over", || async {
        lease_holder(&client, &ns)
            .await
            .is_some_and(|h| h.starts_with("ctl-b-"))
    })
    .await;
    let during =
        futures::future::join_all((0..10).map(|i| deploy(&srv, &node_id, "u1", 21000 + i))).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    pods.delete(&first, &Default::default())
        .await
        .expect("delete a Pod");
    for id in &during {
        wait_state(&client, &ns, id, InstanceState::Running).await;
    }

    // Thawed: it sees a world it no longer leads; it must not write into it.
    common::signal(a_pid, libc::SIGCONT);
    let after = deploy(&srv, &node_id, "u1", 22000).await;
    wait_state(&client, &ns, &after, InstanceState::Running).await;
    eventually(
        Duration::from_secs(30),
        "ctl-a notices it stopped leading",
        || async { a.logs.lock().expect("lock").contains("stopped leading") },
    )
    .await;
    let thawed = common::settled(Duration::from_secs(30), "ctl-a's writes", || {
        server::kube_writes(&a.base)
    })
    .await;
    assert_eq!(
        thawed, before,
        "the old leader wrote after losing the Lease"
    );
    assert!(
        lease_holder(&client, &ns)
            .await
            .is_some_and(|h| h.starts_with("ctl-b-")),
        "the new leader keeps the Lease"
    );

    // Until it leads again: then it writes.
    b.child.start_kill().expect("kill ctl-b");
    let _ = b.child.wait().await;
    eventually(Duration::from_secs(30), "ctl-a leads again", || async {
        lease_holder(&client, &ns)
            .await
            .is_some_and(|h| h.starts_with("ctl-a-"))
    })
    .await;
    let last = deploy(&srv, &node_id, "u1", 23000).await;
    wait_state(&client, &ns, &last, InstanceState::Running).await;
    assert!(
        server::kube_writes(&a.base).await > before,
        "leading again, it writes"
    );
    drop(a);
    fake.delete(&client).await;
    srv.finish().await;
}

#[tokio::test]
async fn pods_are_pinned_by_node_name_whatever_the_hostname_label() {
    let srv = TestServer::start("ctl-pin-name").await;
    let (client, ns) = (srv.client.clone(), srv.ns.clone());
    // On clouds the hostname label often differs from the node's name.
    let fake = FakeNode::create_with(&client, None, Some("ip-10-0-0-7.internal")).await;
    srv.user("u1").await;
    let node_id = srv.node(&fake.ip).await;
    let id = deploy(&srv, &node_id, "u1", common::random_port()).await;
    let inst = wait_state(&client, &ns, &id, InstanceState::Running).await;
    assert_eq!(
        inst.status.and_then(|s| s.kubernetes_node),
        Some(fake.name.clone())
    );
    let pod = Api::<Pod>::namespaced(client.clone(), &ns)
        .get(&id)
        .await
        .expect("pod");
    let spec = pod.spec.expect("spec");
    assert_eq!(spec.node_name.as_deref(), Some(fake.name.as_str()));
    let term = serde_json::to_value(
        &spec
            .affinity
            .expect("affinity")
            .node_affinity
            .expect("node affinity")
            .required_during_scheduling_ignored_during_execution
            .expect("required")
            .node_selector_terms[0],
    )
    .expect("json");
    assert_eq!(
        term,
        json!({ "matchFields": [{ "key": "metadata.name", "operator": "In", "values": [fake.name] }] })
    );
    fake.delete(&client).await;
    srv.finish().await;
}

#[tokio::test]
async fn an_address_two_kubernetes_nodes_share_is_never_guessed() {
    let srv = TestServer::start("ctl-ambiguous").await;
    let (client, ns) = (srv.client.clone(), srv.ns.clone());
    let first = FakeNode::create(&client).await;
    let second = FakeNode::create_with(&client, Some(&first.ip), None).await;
    srv.user("u1").await;
    let node_id = srv.node(&first.ip).await;
    let nodes: Api<Node> = Api::namespaced(client.clone(), &ns);
    let mut candidates = [first.name.clone(), second.name.clone()];
    candidates.sort();
    let named = candidates.join(", ");
    eventually(
        Duration::from_secs(30),
        "the node Unknown, naming both",
        || async {
            nodes
                .get(&node_id)
                .await
                .ok()
                .and_then(|n| n.status)
                .is_some_and(|s| {
                    s.state == Some(NodeState::Unknown)
                        && s.reason.as_deref() == Some("AmbiguousAddress")
                        && s.kubernetes_node.is_none()
                        && s.message.as_deref().is_some_and(|m| m.contains(&named))
                })
        },
    )
    .await;
    let a = srv
        .call(
            "POST",
            "/api/instances/deploy",
            Some(json!({ "image": "Python", "memory": 64, "cpu": 0.05,
            "ports": "25565", "nodeId": node_id, "name": "x", "user": "u1", "primary": 25565 })),
        )
        .await;
    assert_eq!(a.status, 400, "{a:?}");
    assert!(
        a.body["error"].as_str().is_some_and(|e| e.contains(&named)),
        "{a:?}"
    );
    // Naming the Kubernetes node settles it.
    let a = srv
        .call(
            "POST",
            "/api/nodes/create",
            Some(json!({ "name": "N", "address": first.ip, "kubernetesNode": second.name })),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    let chosen = a.body["id"].as_str().expect("id").to_owned();
    let id = deploy(&srv, &chosen, "u1", common::random_port()).await;
    let inst = wait_state(&client, &ns, &id, InstanceState::Running).await;
    assert_eq!(
        inst.status.and_then(|s| s.kubernetes_node),
        Some(second.name.clone())
    );
    first.delete(&client).await;
    second.delete(&client).await;
    srv.finish().await;
}

#[tokio::test]
async fn berth_nodes_on_one_machine_share_its_host_ports() {
    let srv = TestServer::start("ctl-port-space").await;
    let client = srv.client.clone();
    let fake = FakeNode::create(&client).await;
    srv.user("u1").await;
    let a_node = srv.node(&fake.ip).await;
    let b_node = srv.node(&fake.ip).await;
    let port = common::random_port();
    deploy(&srv, &a_node, "u1", port).await;
    let b = srv
        .call("POST", "/api/instances/deploy", Some(json!({ "image": "Python", "memory": 64, "cpu": 0.05,
            "ports": port.to_string(), "nodeId": b_node, "name": "x", "user": "u1", "primary": port })))
        .await;
    assert_eq!(
        (b.status, b.body),
        (
            400,
            json!({ "error": format!(
            "Host port {port} is already in use on Kubernetes node {} (by an instance on node {a_node})", fake.name) })
        )
    );
    let claims = Api::<ConfigMap>::namespaced(client.clone(), &srv.ns)
        .list(&ListParams::default().labels("berth.dev/claim=hostport"))
        .await
        .expect("claims");
    assert_eq!(claims.items.len(), 1);
    fake.delete(&client).await;
    srv.finish().await;
}

/// A Pod for Instance `inst` on `node`, made by someone else than the controller
/// (owned by the Instance; with Berth's labels and a stale shape when `berth_made`).
fn premade_pod(inst: &Instance, node: &str, berth_made: bool) -> Pod {
    let mut pod = json!({
        "metadata": { "name": inst.name_any(),
            "ownerReferences": [{ "apiVersion": "berth.dev/v1alpha1", "kind": "Instance",
                "name": inst.name_any(), "uid": inst.uid().expect("uid"), "controller": true }] },
        "spec": { "nodeName": node, "containers": [{ "name": "server", "image": "example.invalid/game:0" }] }
    });
    if berth_made {
        pod["metadata"]["labels"] = json!({
            berth::names::LABEL_MANAGED_BY: berth::names::MANAGED_BY,
            berth::names::LABEL_INSTANCE: inst.name_any() });
        pod["metadata"]["annotations"] =
            json!({ berth::controller::pod::ANNOTATION_POD_HASH: "an-older-shape" });
    }
    serde_json::from_value(pod).expect("pod")
}

#[tokio::test]
async fn a_pod_made_before_is_kept_and_one_of_an_older_shape_is_replaced() {
    let srv = TestServer::start("ctl-premade").await;
    let (client, ns) = (srv.client.clone(), srv.ns.clone());
    let fake = FakeNode::create(&client).await;
    srv.user("u1").await;
    // Instances on a node that does not exist yet: nothing is placed.
    let api: Api<Instance> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut premade = BTreeMap::new();
    for (name, berth_made) in [("kept", false), ("older", true)] {
        let port = common::random_port();
        let inst: Instance = serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Instance", "metadata": { "name": name },
            "spec": { "displayName": name, "userId": "u1", "image": "example.invalid/game:1", "node": "not-yet",
                      "memory": 64, "cpu": 0.05, "ports": [{ "containerPort": port, "hostPort": port }], "primaryPort": port }
        }))
        .expect("instance");
        let inst = api
            .create(&PostParams::default(), &inst)
            .await
            .expect("create instance");
        // Its Pod, made first: one the controller's cache cannot see (no Berth
        // labels: its create meets AlreadyExists), one of an older shape.
        let pod = pods
            .create(
                &PostParams::default(),
                &premade_pod(&inst, &fake.name, berth_made),
            )
            .await
            .expect("premade pod");
        premade.insert(name, pod.uid().expect("uid"));
    }
    // The node appears (written directly, under the name the Instances gave it);
    // both Instances are placed.
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "Node", "metadata": { "name": "not-yet" },
        "spec": { "displayName": "N", "address": fake.ip }
    }))
    .expect("node");
    Api::<Node>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &node)
        .await
        .expect("create node");
    // AlreadyExists on create is "already made": the Pod is kept and runs.
    wait_state(&client, &ns, "kept", InstanceState::Running).await;
    assert_eq!(
        pods.get("kept").await.expect("pod").uid(),
        Some(premade["kept"].clone()),
        "the Pod made before is kept"
    );
    // A Pod of an older shape is replaced by one of the Instance's.
    eventually(
        Duration::from_secs(60),
        "the older Pod replaced",
        || async {
            pods.get_opt("older").await.ok().flatten().is_some_and(|p| {
                p.uid() != Some(premade["older"].clone())
                    && p.annotations()
                        .get(berth::controller::pod::ANNOTATION_POD_HASH)
                        .is_some_and(|h| h != "an-older-shape")
            })
        },
    )
    .await;
    wait_state(&client, &ns, "older", InstanceState::Running).await;
    fake.delete(&client).await;
    srv.finish().await;
}
