//! A `berth serve` process per test, in its own namespace with the shipped catalog
//! and an API key, plus an HTTP client that remembers every answer so a test can
//! check that no secret ever left the server.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;
use kube::api::{Api, PostParams};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::process::Child;

use crate::common::{self, eventually};

/// A running server and what a test needs to talk to it.
pub struct TestServer {
    pub client: Client,
    pub ns: String,
    pub base: String,
    pub key: String,
    http: reqwest::Client,
    child: Child,
    logs: Arc<Mutex<String>>,
    /// Every answer body, for the secret scan.
    seen: Arc<Mutex<Vec<String>>>,
    /// Strings that must never appear in an answer or a log line.
    pub secrets: Arc<Mutex<Vec<String>>>,
    /// Strings that some answers carry (tokens) but no log line may.
    log_secrets: Arc<Mutex<Vec<String>>>,
}

/// An answer: status and body (JSON when it parses, else a string).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

async fn free_port() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr").port()
}

/// The shipped catalog, and the test cluster's (the stand-in game server), as a
/// ConfigMap labelled for Berth.
pub fn catalog_configmap() -> ConfigMap {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut data = serde_json::Map::new();
    let files = ["charts/berth/catalog", "tests/cluster/catalog"]
        .into_iter()
        .flat_map(|d| std::fs::read_dir(root.join(d)).expect("catalog dir"));
    for entry in files {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        data.insert(
            name,
            Value::String(std::fs::read_to_string(&path).expect("read")),
        );
    }
    serde_json::from_value(json!({
        "metadata": { "name": "berth-catalog", "labels": { berth::names::LABEL_CATALOG: "true" } },
        "data": data
    }))
    .expect("catalog configmap")
}

/// Leader election timing short enough for tests (lease 3 s, renew deadline 2 s,
/// retry 1 s) for controller-only replicas.
pub const FAST_ELECTION: [&str; 7] = [
    "--controller-only",
    "--lease-duration",
    "3",
    "--renew-deadline",
    "2",
    "--retry-period",
    "1",
];

/// A running `berth serve` whose log is collected as it is written (a full pipe
/// would block the server).
pub struct Berth {
    /// The process.
    pub child: Child,
    /// Its base URL.
    pub base: String,
    /// Its log so far.
    pub logs: Arc<Mutex<String>>,
}

/// Starts `berth serve` on a free port in `ns` with extra `args`.
pub async fn spawn_berth(ns: &str, args: &[&str]) -> Berth {
    spawn_berth_as(ns, args, &common::kubeconfig()).await
}

/// Starts `berth serve` with the identity of another kubeconfig.
pub async fn spawn_berth_as(ns: &str, args: &[&str], kubeconfig: &Path) -> Berth {
    spawn_berth_with(ns, args, kubeconfig, &[]).await
}

/// Starts `berth serve` with extra environment variables (e.g. `POD_NAME`, which
/// names it in the leader Lease) and waits until it is ready.
pub async fn spawn_berth_with(
    ns: &str,
    args: &[&str],
    kubeconfig: &Path,
    env: &[(&str, &str)],
) -> Berth {
    let berth = start_berth(ns, args, kubeconfig, env).await;
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(30), "berth serve ready", || async {
        http.get(format!("{}/readyz", berth.base))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    berth
}

/// Starts `berth serve` and waits only until it answers `/healthz`.
pub async fn start_berth(
    ns: &str,
    args: &[&str],
    kubeconfig: &Path,
    env: &[(&str, &str)],
) -> Berth {
    let given = args
        .iter()
        .position(|a| *a == "--listen")
        .and_then(|i| args.get(i + 1))
        .map(|a| a.to_string());
    let listen = match given {
        Some(l) => l,
        None => format!("127.0.0.1:{}", free_port().await),
    };
    let mut all = vec!["--log-format", "json", "serve", "-n", ns];
    if !args.contains(&"--listen") {
        all.extend(["--listen", &listen]);
    }
    all.extend(args);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(&all)
        .env("KUBECONFIG", kubeconfig)
        .envs(env.iter().copied())
        .env(
            "RUST_LOG",
            "debug,kube=info,hyper=info,tower=info,h2=info,rustls=info",
        )
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start berth serve");
    let logs = Arc::new(Mutex::new(String::new()));
    if let Some(mut err) = child.stderr.take() {
        let logs = logs.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = err.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                logs.lock()
                    .expect("lock")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    let base = format!("http://{listen}");
    let http = reqwest::Client::new();
    eventually(Duration::from_secs(30), "berth serve listening", || async {
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    Berth { child, base, logs }
}

/// The text of a server's /metrics.
pub async fn metrics(base: &str) -> String {
    reqwest::get(format!("{base}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// A counter from a server's /metrics, e.g.
/// `berth_reconciles_total{controller="instance",result="ok"}`.
pub async fn metric(base: &str, series: &str) -> u64 {
    let text = metrics(base).await;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .map(|v| v.trim().parse::<u64>().expect("counter"))
        })
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

/// The sum of every series of `name` whose labels include all of `labels`
/// (e.g. `verb="patch"`) and none of `without`.
pub fn sum_series(text: &str, name: &str, labels: &[&str], without: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|x| l.contains(x)) && !without.iter().any(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Writes (create, update, patch, delete) a server made to the API server so far,
/// other than renewals of its leader Lease.
pub async fn kube_writes(base: &str) -> u64 {
    let text = metrics(base).await;
    ["create", "update", "patch", "delete"]
        .iter()
        .map(|v| {
            sum_series(
                &text,
                "berth_kube_requests_total",
                &[&format!("verb=\"{v}\"")],
                &["resource=\"leases\""],
            )
        })
        .sum()
}

impl TestServer {
    /// Starts a server in a fresh namespace named after `test`.
    pub async fn start(test: &str) -> Self {
        Self::start_with(test, &[]).await
    }

    /// Starts a server with extra arguments to `berth serve`.
    pub async fn start_with(test: &str, args: &[&str]) -> Self {
        let client = common::client().await;
        common::crds(&client).await;
        let ns = common::namespace(&client, test).await;
        Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &catalog_configmap())
            .await
            .expect("create catalog");
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let (_, key) = berth::store::apikeys::create(&secrets, Some("test".into()))
            .await
            .expect("api key");

        let Berth { child, base, logs } = spawn_berth(&ns, args).await;
        // Berth closes a keep-alive connection idle past its header timeout (10 s);
        // a client reusing one just then gets no answer. Clients must let idle
        // connections go sooner, as this one does.
        let http = reqwest::Client::builder()
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        Self {
            client,
            ns,
            base,
            secrets: Arc::new(Mutex::new(vec![key.clone()])),
            key,
            http,
            child,
            logs,
            seen: Arc::default(),
            log_secrets: Arc::default(),
        }
    }

    /// Creates user `id` (username `id`, email `id@example.com`) through the API.
    pub async fn user(&self, id: &str) {
        let body = json!({ "username": id, "email": format!("{id}@example.com"), "password": "correct horse", "userId": id });
        let a = self.call("POST", "/api/users/create", Some(body)).await;
        assert_eq!(a.status, 201, "create user {id}: {a:?}");
    }

    /// Registers a Berth Node at `address` through the API and returns its id.
    pub async fn node(&self, address: &str) -> String {
        let a = self
            .call(
                "POST",
                "/api/nodes/create",
                Some(json!({ "name": "N", "address": address })),
            )
            .await;
        assert_eq!(a.status, 201, "create node at {address}: {a:?}");
        a.body["id"].as_str().expect("node id").to_owned()
    }

    /// Sends a request with the API key; `body` as JSON when given.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let mut req = self
            .http
            .request(
                Method::from_bytes(method.as_bytes()).expect("method"),
                format!("{}{path}", self.base),
            )
            .header("x-api-key", &self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(req).await
    }

    /// Sends any request (the test sets headers and body) and records the answer.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let resp = req.send().await.expect("request sent");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        self.seen.lock().expect("lock").push(text.clone());
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer { status, body }
    }

    /// Sends a request with a user's (or console) token instead of the API key.
    pub async fn as_user(&self, method: &str, path: &str, token: &str) -> Answer {
        self.send(self.raw(method, path).bearer_auth(token)).await
    }

    /// A raw request builder for `path`, without the API key.
    pub fn raw(&self, method: &str, path: &str) -> reqwest::RequestBuilder {
        self.http.request(
            Method::from_bytes(method.as_bytes()).expect("method"),
            format!("{}{path}", self.base),
        )
    }

    /// Remembers a string that must never show in answers or logs.
    pub fn secret(&self, s: &str) {
        self.secrets.lock().expect("lock").push(s.to_owned());
    }

    /// Remembers a string answers may carry (a token, in the answer that issued
    /// it) but no log line may.
    pub fn log_secret(&self, s: &str) {
        self.log_secrets.lock().expect("lock").push(s.to_owned());
    }

    /// Stops the server and checks that no answer and no log line held a secret:
    /// a password, an API key, or any argon2 hash.
    pub async fn finish(mut self) {
        self.child.start_kill().expect("kill");
        let _ = self.child.wait().await;
        tokio::time::sleep(Duration::from_millis(100)).await; // the log reader's last read
        let logs = self.logs.lock().expect("lock").clone();
        let seen = self.seen.lock().expect("lock").join("\n");
        let mut forbidden = self.secrets.lock().expect("lock").clone();
        forbidden.push("$argon2".to_owned());
        for s in &forbidden {
            assert!(
                !seen.contains(s.as_str()),
                "an answer contains secret material {s:?}"
            );
            assert!(
                !logs.contains(s.as_str()),
                "the log contains secret material {s:?}"
            );
        }
        for s in self.log_secrets.lock().expect("lock").iter() {
            assert!(
                !logs.contains(s.as_str()),
                "the log contains secret material {s:?}"
            );
        }
        assert!(!logs.contains("panicked"), "the server panicked:\n{logs}");
        // Passed: the namespace goes (a failed test leaves it for a look).
        let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(self.client.clone())
            .delete(&self.ns, &Default::default())
            .await;
    }
}
