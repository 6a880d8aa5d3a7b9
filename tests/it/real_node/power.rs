//! Power on the real node, where a console has a process behind it: a stop types
//! the catalog's StopCommand and the server saves and exits by itself; one that
//! ignores it is stopped at the timeout; a kill does not wait; a start finds the
//! data and the port again; a reinstall fetches the install files again, on the
//! data kept or wiped.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use berth::crd::PowerState;
use serde_json::json;
use tokio::io::AsyncReadExt;

use super::*;
use crate::common::eventually;
use crate::power::{events, power, wait_power};

/// Data that outlives Pods (host-path volume claims, handed to the game server's
/// user), and a stop timeout long enough for a server that obeys to obey.
const KEPT_DATA: [&str; 5] = [
    "--storage-class",
    "berth-test-hostpath",
    "--chown-data",
    "--stop-timeout",
    "20",
];

/// Whether the event `reason` was told with a message containing `says`.
async fn told(srv: &TestServer, id: &str, reason: &str, says: &str) -> bool {
    events(srv, id)
        .await
        .iter()
        .any(|(r, m)| r == reason && m.contains(says))
}

/// What the server's data folder holds now (names), and the content of `file`.
async fn data(srv: &TestServer, id: &str, file: &str) -> (Vec<String>, String) {
    let names = exec(srv, id, &["ls", "/app/data"]).await;
    let content = exec(srv, id, &["cat", &format!("/app/data/{file}")]).await;
    (
        names.split_whitespace().map(str::to_owned).collect(),
        content,
    )
}

/// Whether the container's process has ended (the container's record stays
/// until the kubelet's garbage collection, up to a minute later).
async fn process_gone(task: &str) -> bool {
    !ctr(&["tasks", "ls"])
        .await
        .lines()
        .any(|l| l.starts_with(task) && l.contains("RUNNING"))
}

#[tokio::test]
async fn a_stop_types_the_stop_command_and_a_start_finds_the_saved_world() {
    let (srv, ip, node, files) = setup_with("real-stop", &KEPT_DATA).await;
    let (id, port) = deploy(&srv, &node, &files, 64, json!({})).await;
    wait_power(&srv, &id, PowerState::Running, true).await;
    let (task, _) = server_process(&srv, &id).await;

    let asked = Instant::now();
    let a = power(&srv, &id, "stop").await;
    assert_eq!(a.status, 202, "{a:?}");
    wait_power(&srv, &id, PowerState::Offline, false).await;
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "stopped after {took:?}: the server did not obey its StopCommand"
    );
    assert!(told(&srv, &id, "Stopping", "sent `stop` to the server").await);
    assert!(told(&srv, &id, "Stopped", "Stopped after").await);
    assert!(!told(&srv, &id, "StopTimedOut", "").await);
    eventually(Duration::from_secs(30), "the server process gone", || {
        process_gone(&task)
    })
    .await;

    // Started again: the world it saved on `stop` is there, on the same port.
    assert_eq!(power(&srv, &id, "start").await.status, 202);
    wait_power(&srv, &id, PowerState::Running, true).await;
    let (names, saved) = data(&srv, &id, "saved").await;
    assert!(
        saved.contains("stop command"),
        "saved by the stop command, not a signal: {saved:?} in {names:?}"
    );
    assert!(logs(&srv, &id).await.contains("Found saved"));
    let mut tcp = tokio::net::TcpStream::connect((ip.as_str(), port as u16))
        .await
        .expect("the same port answers");
    let mut line = String::new();
    tcp.read_to_string(&mut line).await.expect("read");
    assert!(line.contains(&format!("on port {port}")), "{line:?}");
    srv.finish().await;
}

#[tokio::test]
async fn a_server_that_ignores_stop_is_stopped_at_the_timeout() {
    let (srv, _ip, node, files) = setup_with(
        "real-stop-timeout",
        &["--stop-timeout", "2", "--termination-grace-period", "3"],
    )
    .await;
    let (id, _) = deploy(&srv, &node, &files, 64, json!({ "IGNORE_STOP": "1" })).await;
    wait_power(&srv, &id, PowerState::Running, true).await;
    let (task, _) = server_process(&srv, &id).await;

    let asked = Instant::now();
    assert_eq!(power(&srv, &id, "stop").await.status, 202);
    eventually(Duration::from_secs(60), "the server process gone", || {
        process_gone(&task)
    })
    .await;
    let took = asked.elapsed();
    // It ignored `stop` (2 s) and SIGTERM (3 s): only SIGKILL ended it.
    assert!(
        took >= Duration::from_secs(5),
        "gone after {took:?}: it cannot have waited for the timeout and the grace"
    );
    assert!(told(&srv, &id, "Stopping", "sent `stop` to the server").await);
    assert!(told(&srv, &id, "StopTimedOut", "Stop timed out after 2 s").await);
    assert!(!told(&srv, &id, "Stopped", "Stopped after").await);
    wait_power(&srv, &id, PowerState::Offline, false).await;
    srv.finish().await;
}

#[tokio::test]
async fn a_kill_does_not_wait() {
    // The default grace (30 s) is what a delete of this server would take.
    let (srv, _ip, node, files) = setup("real-kill-now").await;
    let (id, _) = deploy(&srv, &node, &files, 64, json!({ "IGNORE_STOP": "1" })).await;
    wait_power(&srv, &id, PowerState::Running, true).await;
    let (task, _) = server_process(&srv, &id).await;
    let asked = Instant::now();
    assert_eq!(power(&srv, &id, "kill").await.status, 202);
    eventually(Duration::from_secs(30), "the server process gone", || {
        process_gone(&task)
    })
    .await;
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "killed after {took:?}; its grace period is 30 s"
    );
    wait_power(&srv, &id, PowerState::Offline, false).await;
    assert!(told(&srv, &id, "Killed", "deleted at once").await);
    srv.finish().await;
}

/// Asks for a reinstall and waits until it is done and the server runs again.
async fn reinstall(srv: &TestServer, id: &str, wipe: bool) {
    let a = srv
        .call(
            "POST",
            &format!("/api/instances/{id}/reinstall"),
            Some(json!({ "wipe": wipe })),
        )
        .await;
    assert_eq!(a.status, 202, "{a:?}");
    eventually(
        Duration::from_secs(90),
        "the reinstall acknowledged and the server running",
        || async {
            let i = instance(srv, id).await;
            let asked = i.spec.reinstall.map(|r| r.requested_at);
            let status = i.status.unwrap_or_default();
            asked.is_some()
                && status.reinstalled_at == asked
                && status.power == Some(PowerState::Running)
        },
    )
    .await;
}

#[tokio::test]
async fn a_reinstall_fetches_the_install_files_again_keeping_or_wiping_the_data() {
    let (srv, _ip, node, files) = setup_with("real-reinstall", &KEPT_DATA).await;
    let (id, _) = deploy(&srv, &node, &files, 64, json!({})).await;
    wait_power(&srv, &id, PowerState::Running, true).await;
    // A world to keep: the server saves it when it stops.
    assert_eq!(power(&srv, &id, "restart").await.status, 202);
    eventually(Duration::from_secs(60), "a saved world", || async {
        try_exec(&srv, &id, &["cat", "/app/data/saved"])
            .await
            .is_some_and(|saved| saved.contains("stop command"))
    })
    .await;

    // A new release of the install file; a reinstall keeping the data.
    let fetched = files.served.load(Ordering::SeqCst);
    files.set_body(b"release 2 of the install file\n");
    reinstall(&srv, &id, false).await;
    assert!(
        files.served.load(Ordering::SeqCst) > fetched,
        "not fetched again"
    );
    let (names, jar) = data(&srv, &id, "standin.jar").await;
    assert_eq!(jar, "release 2 of the install file\n");
    assert!(
        names.contains(&"saved".to_owned()),
        "the world went: {names:?}"
    );
    assert!(told(&srv, &id, "PodCreated", "reinstalling").await);

    // Wiped: the world goes, the install files come back.
    files.set_body(b"release 3\n");
    reinstall(&srv, &id, true).await;
    let (names, jar) = data(&srv, &id, "standin.jar").await;
    assert_eq!(jar, "release 3\n");
    assert!(!names.contains(&"saved".to_owned()), "not wiped: {names:?}");
    assert!(told(&srv, &id, "PodCreated", "reinstalling on wiped data").await);
    srv.finish().await;
}

#[tokio::test]
async fn a_cpu_edit_resizes_the_running_container() {
    let (srv, _ip, node, files) = setup("real-resize").await;
    let (id, _) = deploy(&srv, &node, &files, 64, json!({})).await;
    wait_power(&srv, &id, PowerState::Running, true).await;
    let (_, pid) = server_process(&srv, &id).await;
    // 0.2 cores: 20 ms of every 100 ms, in the container's own cgroup (v2's
    // cpu.max, or v1's quota; the period is the kernel's default 100 ms).
    let quota = || async {
        let read =
            "cat /sys/fs/cgroup/cpu.max 2>/dev/null || cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us";
        let out = try_exec(&srv, &id, &["sh", "-c", read]).await;
        out.and_then(|o| o.split_whitespace().next().map(str::to_owned))
            .unwrap_or_default()
    };
    assert_eq!(quota().await, "20000");
    let a = srv
        .call(
            "PATCH",
            &format!("/api/instances/{id}"),
            Some(json!({ "cpu": 0.5 })),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    eventually(
        Duration::from_secs(60),
        "the kubelet to apply 0.5 cores",
        || async { quota().await == "50000" },
    )
    .await;
    let (_, still) = server_process(&srv, &id).await;
    assert_eq!(still, pid, "the same process, not a restart");
    assert!(told(&srv, &id, "Resized", "cpu 0.2 -> 0.5").await);
    srv.finish().await;
}
