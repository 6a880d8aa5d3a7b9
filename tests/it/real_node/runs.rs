//! A game server's life on the real node: installed, reachable, its console, its
//! memory limit, its restarts, its removal.

use std::sync::atomic::Ordering;
use std::time::Duration;

use berth::crd::{Instance, InstanceState};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::json;
use tokio::io::AsyncReadExt;

use super::*;
use crate::common::{self, eventually};

#[tokio::test]
async fn a_game_server_runs_for_real_through_berths_api() {
    let (srv, ip, node, files) = setup("real-runs").await;
    let (id, port) = deploy(&srv, &node, &files, 64, json!({})).await;
    let inst = wait_state(&srv, &id, InstanceState::Running, Duration::from_secs(60)).await;
    assert_eq!(
        inst.status
            .as_ref()
            .and_then(|s| s.kubernetes_node.as_deref()),
        Some(REAL_NODE)
    );

    // The install step fetched the file, as the game server's user (fsGroup).
    assert!(
        files.served.load(Ordering::SeqCst) >= 1,
        "the install file was never fetched"
    );
    let owned = exec(
        &srv,
        &id,
        &["stat", "-c", "%u:%g %s", "/app/data/standin.jar"],
    )
    .await;
    assert_eq!(owned.trim(), format!("1000:1000 {}", INSTALL_FILE.len()));

    // Its host port answers on the node's address, on TCP and UDP.
    let mut tcp = tokio::net::TcpStream::connect((ip.as_str(), port as u16))
        .await
        .expect("connect");
    let mut line = String::new();
    tcp.read_to_string(&mut line).await.expect("read");
    assert!(line.contains("berth stand-in game server"), "{line:?}");
    let udp = tokio::net::UdpSocket::bind((ip.as_str(), 0))
        .await
        .expect("udp");
    udp.connect((ip.as_str(), port as u16))
        .await
        .expect("udp connect");
    let mut answer = [0u8; 64];
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            udp.send(b"ping").await.expect("send");
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(300), udp.recv(&mut answer)).await
            {
                return n;
            }
        }
    })
    .await
    .expect("a UDP answer");
    assert!(String::from_utf8_lossy(&answer[..got]).contains("stand-in"));

    // Its output is in the logs, and what is typed reaches its stdin.
    let banner = logs(&srv, &id).await;
    assert!(
        banner.contains("Starting Berth stand-in game server") && banner.contains("Done ("),
        "{banner}"
    );
    assert!(banner.contains("Found standin.jar"), "{banner}");
    type_line(&srv, &id, "say hello from the test").await;
    eventually(
        Duration::from_secs(10),
        "the said line in the logs",
        || async {
            logs(&srv, &id)
                .await
                .contains("[Server] hello from the test")
        },
    )
    .await;

    // Deleted: the Pod and its containers go from the node.
    let (task, _) = server_process(&srv, &id).await;
    let a = srv
        .call("DELETE", "/api/instance/delete", Some(json!({ "id": id })))
        .await;
    assert_eq!(a.status, 201);
    // The kubelet removes the container after the graceful stop and its own
    // cleanup; on a loaded 2-core CI machine that took over 60 s once.
    eventually(
        Duration::from_secs(120),
        "the container gone from containerd",
        || async {
            !ctr(&["containers", "ls", "-q"])
                .await
                .lines()
                .any(|l| l == task)
        },
    )
    .await;
    srv.finish().await;
}

#[tokio::test]
async fn a_server_over_its_memory_limit_is_oom_killed_and_says_so() {
    let (srv, _ip, node, files) = setup("real-oom").await;
    // 48 MiB allowed, 160 MiB taken: the kernel kills it, again and again.
    let (id, _) = deploy(&srv, &node, &files, 48, json!({ "HOG_MIB": "160" })).await;
    let api: Api<Instance> = Api::namespaced(srv.client.clone(), &srv.ns);
    eventually(
        Duration::from_secs(120),
        "the Instance to say it was OOMKilled",
        || async {
            api.get(&id)
                .await
                .ok()
                .and_then(|i| i.status)
                .is_some_and(|s| {
                    s.restarts.unwrap_or(0) >= 1
                        && s.last_exit.as_deref() == Some("OOMKilled (exit 137)")
                })
        },
    )
    .await;
    let failed = wait_state(&srv, &id, InstanceState::Failed, Duration::from_secs(120)).await;
    let ready = failed
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .cloned()
        .expect("Ready");
    assert_eq!(ready.reason, "CrashLoopBackOff");
    assert!(ready.message.contains("OOMKilled (exit 137)"), "{ready:?}");
    let events = common::kubectl(&[
        "get",
        "events",
        "-n",
        &srv.ns,
        "--field-selector",
        &format!("involvedObject.name={id}"),
    ])
    .await;
    assert!(
        events.contains("Crashed") && events.contains("OOMKilled"),
        "{events}"
    );
    srv.finish().await;
}

#[tokio::test]
async fn a_killed_server_is_restarted_and_runs_again() {
    let (srv, _ip, node, files) = setup("real-kill").await;
    let (id, _) = deploy(&srv, &node, &files, 64, json!({})).await;
    wait_state(&srv, &id, InstanceState::Running, Duration::from_secs(60)).await;
    let (_, pid) = server_process(&srv, &id).await;
    common::signal(pid, libc::SIGKILL);
    eventually(
        Duration::from_secs(60),
        "the restart counted, and Running again",
        || async {
            let i = instance(&srv, &id).await;
            i.status.is_some_and(|s| {
                s.restarts == Some(1)
                    && s.last_exit
                        .as_deref()
                        .is_some_and(|e| e.contains("exit 137"))
                    && s.state == Some(InstanceState::Running)
            })
        },
    )
    .await;
    let (_, again) = server_process(&srv, &id).await;
    assert_ne!(again, pid, "a new process runs");
    let pods = Api::<Pod>::namespaced(srv.client.clone(), &srv.ns)
        .list(&ListParams::default().labels(&format!("berth.dev/instance={id}")))
        .await
        .expect("pods");
    assert_eq!(pods.items.len(), 1, "restarted in place, not replaced");
    srv.finish().await;
}
