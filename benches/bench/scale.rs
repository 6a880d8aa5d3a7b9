//! After the 10,000: reads while a deploy wave runs, and 100 nodes (deploy
//! throughput against 10 nodes, the node controller's writes at steady state).

use super::*;

/// Reads measured while deploys run.
pub struct WaveReads {
    /// The wave's deploys per second.
    pub deploys_per_s: f64,
    /// `GET /api/instances` (whole, as Skyport asks) during the wave: latencies, sorted.
    pub list: Vec<f64>,
    /// `POST /api/getInstance` during the wave: latencies, sorted.
    pub get: Vec<f64>,
}

/// Reads per second during a wave: panels polling, not a flood. The reads are
/// sent on a fixed schedule whatever the answers' pace (open loop): a closed loop
/// (wrk) would measure how long a saturated machine queues its own flood, and
/// slow the wave it reads under.
const LIST_PER_S: u64 = 20;
const GET_PER_S: u64 = 200;
/// How long the reads go on, from 2 s into the wave.
const READ_FOR: Duration = Duration::from_secs(15);

/// Sends `request` `per_s` times a second for `for_`, each in its own task; the
/// latencies in ms, sorted.
async fn paced(
    per_s: u64,
    for_: Duration,
    request: impl Fn() -> reqwest::RequestBuilder,
) -> Vec<f64> {
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_s));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + for_;
    let mut sent = Vec::new();
    while Instant::now() < end {
        tick.tick().await;
        let req = request();
        sent.push(tokio::spawn(async move {
            let start = Instant::now();
            let resp = req.send().await.expect("read sent");
            assert!(resp.status().is_success(), "read: {}", resp.status());
            let _ = resp.bytes().await.expect("read body");
            ms(start.elapsed())
        }));
    }
    let mut out = Vec::new();
    for t in sent {
        out.push(t.await.expect("read task"));
    }
    out.sort_by(f64::total_cmp);
    out
}

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

/// `GET /api/instances` (20/s) and `getInstance` (200/s) while 2,000 deploys run
/// at concurrency 32; the reads start once the wave has.
pub async fn reads_during_wave(
    deployer: &Arc<Deployer>,
    users: &[String],
    clock: &Clock,
    (http, base, key): (&reqwest::Client, &str, &str),
    sample_instance: &str,
) -> WaveReads {
    let reads = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let list = || {
            http.get(format!("{base}/api/instances"))
                .header("x-api-key", key)
        };
        let get = || {
            http.post(format!("{base}/api/getInstance"))
                .header("x-api-key", key)
                .json(&json!({ "id": sample_instance }))
        };
        tokio::join!(
            paced(LIST_PER_S, READ_FOR, list),
            paced(GET_PER_S, READ_FOR, get)
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
    ids.extend(register_nodes(http, base, key, &more).await);
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
