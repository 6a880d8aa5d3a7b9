//! After the 10,000: reads while a deploy wave runs, and 100 nodes (deploy
//! throughput against 10 nodes, the node controller's writes at steady state).

use super::*;

/// Reads measured while deploys run.
pub struct WaveReads {
    /// The wave's deploys per second.
    pub deploys_per_s: f64,
    /// `GET /api/instances` (whole, as Skyport asks) during the wave.
    pub list: Wrk,
    /// `POST /api/getInstance` during the wave.
    pub get: Wrk,
}

/// Connections of each read load during a wave: a few panels polling.
const WAVE_READERS: usize = 4;

/// Deploys `n` instances at concurrency 32 and waits for all to be Running;
/// deploys per second from the first request to the last Running.
pub async fn wave(deployer: &Arc<Deployer>, users: &[String], clock: &Clock, n: usize) -> f64 {
    let before = count(&clock.instance_running);
    let start = Instant::now();
    deployer.deploy_many(n, users).await;
    wait_until("wave Running", Duration::from_secs(900), || {
        count(&clock.instance_running) >= before + n
    })
    .await;
    n as f64 / start.elapsed().as_secs_f64()
}

/// `GET /api/instances` and `getInstance` (wrk, 4 connections each, 10 s) while
/// 2,000 deploys run; the reads start once the wave has.
pub async fn reads_during_wave(
    deployer: &Arc<Deployer>,
    users: &[String],
    clock: &Clock,
    (base, key): (&str, &str),
    sample_instance: &str,
    dir: &Path,
) -> WaveReads {
    let reads = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let list = Load {
            connections: WAVE_READERS,
            ..Load::new("GET", "/api/instances")
        };
        let get = Load {
            connections: WAVE_READERS,
            body: Some(json!({ "id": sample_instance })),
            ..Load::new("POST", "/api/getInstance")
        };
        tokio::join!(
            wrk::run(base, key, list, dir),
            wrk::run(base, key, get, dir)
        )
    };
    let (deploys_per_s, (list, get)) =
        tokio::join!(wave(deployer, users, clock, THROUGHPUT_DEPLOYS), reads);
    WaveReads {
        deploys_per_s,
        list,
        get,
    }
}

/// With 100 nodes.
pub struct HundredNodes {
    /// Deploys per second over the first 10 nodes, then over all 100.
    pub per_s_10: f64,
    pub per_s_100: f64,
    /// Writes to Berth Nodes (the node controller's) and all writes, in a
    /// minute of steady state with 100 nodes.
    pub node_writes_per_min: u64,
    pub writes_per_min: u64,
}

/// Throughput over the 10 nodes, then 90 more fake nodes and Berth Nodes,
/// throughput over all 100, then a quiet minute's writes.
pub async fn hundred_nodes(
    deployer: &Arc<Deployer>,
    users: &[String],
    clock: &Clock,
    (client, http, run): (&Client, &reqwest::Client, &str),
    (base, key): (&str, &str),
) -> (HundredNodes, Vec<(String, String)>) {
    let per_s_10 = wave(deployer, users, clock, THROUGHPUT_DEPLOYS).await;
    let more = fake_nodes(client, run, FAKE_NODES..100).await;
    let mut ids = deployer.nodes.clone();
    for (_, ip) in &more {
        let r = api_post(
            http,
            base,
            key,
            "/api/nodes/create",
            json!({ "name": ip, "address": ip }),
        )
        .await;
        ids.push(r["id"].as_str().expect("id").to_owned());
    }
    let wide = Arc::new(Deployer {
        http: http.clone(),
        base: base.to_owned(),
        key: key.to_owned(),
        nodes: ids,
        // Above every port the 10-node deploys handed out.
        port_base: 30_000,
        next: Mutex::new(0),
    });
    let per_s_100 = wave(&wide, users, clock, THROUGHPUT_DEPLOYS).await;
    // Steady state: the wave's status writes and Events done.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (nodes_before, all_before) = (
        kube_writes(base, Some("nodes")).await,
        kube_writes(base, None).await,
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    let figures = HundredNodes {
        per_s_10,
        per_s_100,
        node_writes_per_min: kube_writes(base, Some("nodes")).await - nodes_before,
        writes_per_min: kube_writes(base, None).await - all_before,
    };
    (figures, more)
}
