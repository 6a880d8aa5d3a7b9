//! Consoles: many sockets on kwok instances whose logs kwok serves from files the
//! bench appends to. Berth's RSS per socket, and the time from a line written to
//! a Pod's log to its arrival at each socket and at the last of an instance's
//! sockets (kwok's following of the file included). No floor: a raw log stream
//! per Pod beside Berth's measures kwok's following again, and doubles the inotify
//! instances the followers take (past the host's limit, streams end at once).

use std::io::Write;

use berth::crd::Instance;
use futures::SinkExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::*;
use crate::power;

/// Sockets per instance; the instances are the power phase's.
pub const SOCKETS_PER_INSTANCE: usize = 10;
/// Lines written to every instance's log, one round at a time.
const ROUNDS: usize = 20;

/// What the phase measured.
pub struct ConsoleFigures {
    /// Sockets open at once.
    pub sockets: usize,
    /// Instances they watched.
    pub instances: usize,
    /// Berth's RSS growth per open socket (KiB), consoles' own cost included.
    pub kib_per_socket: f64,
    /// Lines that never reached a socket (30 s per round).
    pub missed: usize,
    /// Line written → arrival at a socket (ms), sorted.
    pub berth: Vec<f64>,
    /// Line written → arrival at the last of its instance's sockets (ms), sorted.
    pub every: Vec<f64>,
}

impl ConsoleFigures {
    pub fn json(&self) -> Value {
        json!({
            "sockets": self.sockets, "instances": self.instances,
            "kib_per_socket": self.kib_per_socket, "missed": self.missed,
            "line_to_socket_ms": { "p50": percentile(&self.berth, 0.5), "p99": percentile(&self.berth, 0.99) },
            "line_to_every_socket_ms": { "p50": percentile(&self.every, 0.5), "p99": percentile(&self.every, 0.99) },
        })
    }
}

/// One sighting of a bench line: (instance index, round, socket or stream).
type Arrival = (usize, usize, Instant);

/// Serves each instance's logs from a file of its own (kwok's `Logs` object).
async fn serve_logs(client: &Client, ns: &str, ids: &[String], dir: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).expect("console dir");
    let gvk = GroupVersionKind::gvk("kwok.x-k8s.io", "v1alpha1", "Logs");
    let api: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, "logs"),
    );
    let mut files = Vec::new();
    for id in ids {
        let path = dir.join(format!("{id}.log"));
        std::fs::write(&path, line("ready")).expect("log file");
        let logs = json!({
            "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Logs",
            "metadata": { "name": id },
            "spec": { "logs": [{ "containers": ["server"], "logsFile": path, "follow": true }] }
        });
        api.patch(
            id,
            &PatchParams::apply("berth-bench").force(),
            &Patch::Apply(&logs),
        )
        .await
        .expect("kwok Logs");
        files.push(path);
    }
    files
}

/// A line in the CRI log format kwok serves.
fn line(text: &str) -> String {
    format!("{} stdout F {text}\n", k8s_openapi::jiff::Timestamp::now())
}

/// The round a bench line names (`bench-<instance>-<round>`).
fn round_of(text: &str, instance: usize) -> Option<usize> {
    let rest = text.strip_prefix(&format!("bench-{instance}-"))?;
    rest.trim().parse().ok()
}

/// One socket: authenticates, waits for the history, then reports bench lines.
async fn socket(
    base: String,
    id: String,
    instance: usize,
    token: String,
    ready: mpsc::Sender<()>,
    arrivals: mpsc::UnboundedSender<Arrival>,
) {
    let url = format!(
        "{}/api/instances/{id}/ws",
        base.replacen("http://", "ws://", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket");
    let auth = json!({ "event": "auth", "args": [token] }).to_string();
    ws.send(Message::text(auth)).await.expect("auth");
    let mut told = false;
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        let v: Value = serde_json::from_str(text.as_str()).expect("frame");
        if v["event"] != "console output" {
            continue;
        }
        let out = v["args"][0].as_str().unwrap_or_default();
        if !told && out == "ready" {
            told = true;
            let _ = ready.send(()).await;
        } else if let Some(round) = round_of(out, instance) {
            let _ = arrivals.send((instance, round, Instant::now()));
        }
    }
}

/// Runs the phase on `ids` (Running kwok instances) of the server at `base`.
pub async fn run(
    bench: &power::Bench<'_>,
    ns: &str,
    ids: &[String],
    pid: u32,
    dir: &Path,
) -> ConsoleFigures {
    let (client, http, base, key) = (bench.client, bench.http, bench.base, bench.key);
    let files = serve_logs(client, ns, ids, dir).await;
    let instances: Api<Instance> = Api::namespaced(client.clone(), ns);
    let mut tokens = Vec::new();
    for id in ids {
        let owner = instances.get(id).await.expect("instance").spec.user_id;
        let path = format!("/api/instances/{id}/console-token");
        let a = api_post(http, base, key, &path, json!({ "userId": owner })).await;
        tokens.push(a["token"].as_str().expect("token").to_owned());
    }
    // kwok serves the files once it has seen the Logs objects.
    for id in ids {
        let logs = format!("{base}/api/instances/{id}/logs?tail=1");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let a: Value = http
                .get(&logs)
                .header("x-api-key", key)
                .send()
                .await
                .expect("logs")
                .json()
                .await
                .expect("logs JSON");
            if a["lines"] == json!(["ready"]) {
                break;
            }
            assert!(Instant::now() < deadline, "bench: {id}'s log never served");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, rss_before) = rss(pid);

    let (arrive, mut arrivals) = mpsc::unbounded_channel();
    let (ready_tx, mut ready) = mpsc::channel(64);
    let mut tasks = Vec::new();
    for (i, (id, token)) in ids.iter().zip(&tokens).enumerate() {
        for _ in 0..SOCKETS_PER_INSTANCE {
            tasks.push(tokio::spawn(socket(
                base.to_owned(),
                id.clone(),
                i,
                token.clone(),
                ready_tx.clone(),
                arrive.clone(),
            )));
        }
    }
    let sockets = ids.len() * SOCKETS_PER_INSTANCE;
    for _ in 0..sockets {
        tokio::time::timeout(Duration::from_secs(120), ready.recv())
            .await
            .expect("bench: sockets never all got their history");
    }
    tokio::time::sleep(Duration::from_secs(5)).await; // settle (stats ticks, attaches)
    let (_, rss_after) = rss(pid);

    let mut berth = Vec::new();
    let mut every = Vec::new();
    let mut missed = 0;
    for round in 0..ROUNDS {
        let mut written = Vec::new();
        for (i, path) in files.iter().enumerate() {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .expect("open log");
            f.write_all(line(&format!("bench-{i}-{round}")).as_bytes())
                .expect("append");
            written.push(Instant::now());
        }
        let mut last = vec![None::<Instant>; ids.len()];
        let mut got = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while got < sockets {
            tokio::select! {
                Some((i, r, at)) = arrivals.recv() => if r == round {
                    berth.push(ms(at - written[i]));
                    last[i] = last[i].max(Some(at));
                    got += 1;
                },
                () = tokio::time::sleep_until(deadline) => {
                    eprintln!(
                        "bench: round {round}: only {got} of {sockets} sockets got the line in 30 s"
                    );
                    missed += sockets - got;
                    break;
                }
            }
        }
        for (i, at) in last.iter().enumerate() {
            if let Some(at) = at {
                every.push(ms(*at - written[i]));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for t in tasks {
        t.abort();
    }
    for v in [&mut berth, &mut every] {
        v.sort_by(f64::total_cmp);
    }
    ConsoleFigures {
        sockets,
        instances: ids.len(),
        kib_per_socket: (rss_after - rss_before) * 1024.0 / sockets as f64,
        missed,
        berth,
        every,
    }
}
