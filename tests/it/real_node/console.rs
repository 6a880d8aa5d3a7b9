//! The console on the real node, where a process is behind it: its output as it
//! prints it (across a crash and the container's restart), a command typed on
//! the socket reaching its stdin, a stop from the socket obeyed through the
//! StopCommand, and stats of the running container (its memory as the kubelet
//! measures it, through metrics-server and the aggregation layer).

use std::time::Duration;

use berth::crd::PowerState;
use serde_json::{Value, json};

use super::*;
use crate::console::{Socket, console_token};
use crate::power::wait_power;

/// Whether a `console output` frame's line contains `text` (and is not the
/// terminal's echo of a typed `say`).
fn printed(event: &str, args: &[Value], text: &str) -> bool {
    event == "console output"
        && args
            .first()
            .and_then(Value::as_str)
            .is_some_and(|l| l.contains(text) && !l.contains("say "))
}

/// Receives until the server printed `text`.
async fn until_printed(ws: &mut Socket, text: &str) {
    let got = ws
        .until(Duration::from_secs(60), |e, a| printed(e, a, text))
        .await;
    assert!(
        got.is_some(),
        "the server never printed {text:?} (closed: {:?}); frames but stats: {:?}",
        ws.closed,
        ws.seen
            .iter()
            .filter(|(e, _)| e != "stats")
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn the_console_shows_the_server_types_into_it_and_stops_it() {
    let (srv, _ip, node, files) = setup_with("real-console", &["--stop-timeout", "20"]).await;
    let (id, _port) = deploy(&srv, &node, &files, 64, json!({})).await;
    wait_power(&srv, &id, PowerState::Running, true).await;
    let token = console_token(&srv, &id, "u1", None).await;
    let mut ws = Socket::open(&srv.base, &id).await;
    ws.auth(&token).await;
    ws.expect("status", Some("running")).await;
    // The start-up, from the log stream's history.
    until_printed(&mut ws, "Done (").await;

    // A command typed on the socket reaches the server's stdin; it answers.
    ws.send("send command", &["say hello from the socket"])
        .await;
    until_printed(&mut ws, "hello from the socket").await;

    // Stats of the running container: its limit, its state, its uptime.
    ws.send("send stats", &[]).await;
    let stats = ws.expect("stats", None).await;
    let stats: Value = serde_json::from_str(stats[0].as_str().expect("stats text")).expect("JSON");
    assert_eq!(stats["memory_limit_bytes"], json!(64 << 20), "{stats}");
    assert_eq!(stats["state"], "running", "{stats}");
    assert!(stats["uptime"].as_u64().is_some_and(|u| u > 0), "{stats}");
    // Use, from metrics-server (the test cluster serves metrics.k8s.io): the
    // kubelet's numbers for this container, once it has scraped it twice.
    let mut used = Value::Null;
    for _ in 0..60 {
        let a = srv
            .call("GET", &format!("/api/instances/{id}/stats"), None)
            .await;
        if a.body["memory_bytes"].as_u64().is_some_and(|m| m > 0) {
            used = a.body;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let memory = used["memory_bytes"].as_u64().unwrap_or_default();
    assert!(
        memory > 1 << 20 && memory < 64 << 20,
        "the server's memory, under its limit: {used}"
    );
    assert!(used["cpu_absolute"].as_f64().is_some(), "{used}");
    let frame = ws
        .until(Duration::from_secs(10), |e, a| {
            e == "stats"
                && a.first()
                    .and_then(Value::as_str)
                    .and_then(|t| serde_json::from_str::<Value>(t).ok())
                    .is_some_and(|s| s["memory_bytes"].as_u64().is_some_and(|m| m > 0))
        })
        .await;
    assert!(frame.is_some(), "the socket's stats carry the use too");

    // A crash: the container restarts and the socket follows its new output.
    let instances: kube::Api<berth::crd::Instance> =
        kube::Api::namespaced(srv.client.clone(), &srv.ns);
    let restarts = |i: &berth::crd::Instance| i.status.as_ref().and_then(|s| s.restarts);
    let before = restarts(&instances.get(&id).await.expect("instance"));
    ws.send("send command", &["crash"]).await;
    until_printed(&mut ws, "Starting Berth stand-in").await;
    until_printed(&mut ws, "Done (").await;
    // Typed once Berth has seen the kubelet report the restart (its status counts
    // it, from the same Pod cache the console's input follows): before that, a
    // line still goes to the ended run's attach (about a second; see the closing
    // note). The power state need not change on the way: a quick restart can go
    // from running to running between two of the kubelet's status reports.
    crate::common::eventually(Duration::from_secs(30), "the restart counted", || async {
        restarts(&instances.get(&id).await.expect("instance")).unwrap_or(0) > before.unwrap_or(0)
    })
    .await;
    ws.send("send command", &["say typed after the restart"])
        .await;
    until_printed(&mut ws, "typed after the restart").await;
    let hello = ws
        .seen
        .iter()
        .filter(|(e, a)| printed(e, a, "hello from the socket"))
        .count();
    assert_eq!(hello, 1, "no line twice: {:?}", ws.tail());

    // Stop from the socket: the StopCommand is typed, the server saves and exits.
    // The status comes from the Instance's watch, the line from the log stream:
    // either may reach the socket first.
    ws.send("set state", &["stop"]).await;
    let (mut stopping, mut saved) = (false, false);
    ws.until(Duration::from_secs(60), |e, a| {
        stopping |= e == "status" && a.first().and_then(Value::as_str) == Some("stopping");
        saved |= printed(e, a, "Saving the game (stop command)");
        stopping && saved
    })
    .await;
    assert!(
        stopping && saved,
        "stopping: {stopping}, saved: {saved}; frames but stats: {:?}",
        ws.seen
            .iter()
            .filter(|(e, _)| e != "stats")
            .collect::<Vec<_>>()
    );
    ws.expect("status", Some("offline")).await;
    srv.finish().await;
}
