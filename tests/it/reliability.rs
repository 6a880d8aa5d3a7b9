//! Reliability and security: bad input, races decided by the API server, a crash
//! during deploys, graceful shutdown, and the slowing of bad API keys.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use berth::crd::{Instance, Node};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{self, eventually};
use crate::server::{self, TestServer};

/// Everything Berth writes in a namespace, counted.
async fn footprint(srv: &TestServer) -> (usize, usize, usize, usize) {
    let lp = ListParams::default();
    let inst = Api::<Instance>::namespaced(srv.client.clone(), &srv.ns)
        .list(&lp)
        .await
        .expect("list")
        .items
        .len();
    let nodes = Api::<Node>::namespaced(srv.client.clone(), &srv.ns)
        .list(&lp)
        .await
        .expect("list")
        .items
        .len();
    let secrets = Api::<Secret>::namespaced(srv.client.clone(), &srv.ns)
        .list(&lp)
        .await
        .expect("list")
        .items
        .len();
    let cms = Api::<ConfigMap>::namespaced(srv.client.clone(), &srv.ns)
        .list(&lp)
        .await
        .expect("list")
        .items
        .len();
    (inst, nodes, secrets, cms)
}

async fn setup(srv: &TestServer) -> String {
    srv.user("u1").await;
    srv.node("127.0.10.1").await
}

fn deploy_body(node: &str, port: i32) -> Value {
    json!({ "image": "Python", "memory": 64, "cpu": 0.05, "ports": port.to_string(), "nodeId": node,
            "name": "app", "user": "u1", "primary": port })
}

#[tokio::test]
async fn bad_input_gets_a_4xx_json_error_and_writes_nothing() {
    let srv = TestServer::start("rel-bad-input").await;
    let node = setup(&srv).await;
    let before = footprint(&srv).await;
    let with = |key: &str, value: Value| {
        let mut b = deploy_body(&node, 25565);
        b[key] = value;
        b
    };
    let user = |key: &str, value: Value| {
        let mut b =
            json!({ "username": "new", "email": "new@example.com", "password": "correct horse" });
        b[key] = value;
        b
    };
    let json_cases = [
        ("/api/instances/deploy", with("memory", Value::Null)),
        ("/api/instances/deploy", with("memory", json!(-1))),
        ("/api/instances/deploy", with("memory", json!(1e300))),
        (
            "/api/instances/deploy",
            with("memory", json!(9_223_372_036_854_775_807i64)),
        ),
        ("/api/instances/deploy", with("memory", json!("NaN"))),
        ("/api/instances/deploy", with("cpu", json!("Infinity"))),
        ("/api/instances/deploy", with("cpu", json!("-0"))),
        ("/api/instances/deploy", with("cpu", json!([1]))),
        ("/api/instances/deploy", with("ports", json!({ "a": 1 }))),
        (
            "/api/instances/deploy",
            with("ports", json!("25565:25565:1")),
        ),
        ("/api/instances/deploy", with("primary", json!(true))),
        ("/api/instances/deploy", with("name", json!("tab\there"))),
        (
            "/api/instances/deploy",
            with("name", json!("x".repeat(300))),
        ),
        (
            "/api/instances/deploy",
            with("nodeId", json!("../../etc/passwd")),
        ),
        ("/api/instances/deploy", with("user", json!("\u{0000}"))),
        (
            "/api/instances/deploy",
            with("variables", json!({ "A": [1, 2] })),
        ),
        (
            "/api/instances/deploy",
            with("variables", json!({ "1BAD": "x" })),
        ),
        (
            "/api/instances/deploy",
            with("image", json!("../../etc/passwd")),
        ),
        ("/api/users/create", user("username", json!("new\nline"))),
        ("/api/users/create", user("username", Value::Null)),
        ("/api/users/create", user("email", json!("a@b@c"))),
        ("/api/users/create", user("password", json!(12345678))),
        ("/api/users/create", user("userId", json!(" padded "))),
        ("/api/users/create", user("userId", json!("x".repeat(200)))),
        (
            "/api/nodes/create",
            json!({ "name": "n", "address": "a/b" }),
        ),
        (
            "/api/nodes/create",
            json!({ "name": "n", "address": "127.0.0.1", "ram": -5 }),
        ),
        (
            "/api/nodes/create",
            json!({ "name": "n", "address": "127.0.0.1", "port": "NaN" }),
        ),
        (
            "/api/getUser",
            json!({ "type": "username", "value": ["x"] }),
        ),
        ("/api/getInstance", json!({ "id": {} })),
    ];
    let mut tried = 0;
    for (path, body) in json_cases {
        let a = srv.call("POST", path, Some(body.clone())).await;
        assert!((400..500).contains(&a.status), "{path} {body}: {a:?}");
        assert!(
            a.body["error"].as_str().is_some_and(|m| !m.is_empty()),
            "{path} {body}: {a:?}"
        );
        tried += 1;
    }
    let key = srv.key.clone();
    let raw_cases: Vec<(reqwest::RequestBuilder, u16)> = vec![
        (
            srv.raw("POST", "/api/users/create")
                .header("x-api-key", &key)
                .header("content-type", "application/json")
                .body("{\"username\":"),
            400,
        ),
        (
            srv.raw("POST", "/api/users/create")
                .header("x-api-key", &key)
                .header("content-type", "application/json")
                .body(r#"{"username":"a","username":"b","email":"a@b.c","password":"12345678"}"#),
            400,
        ),
        (
            srv.raw("POST", "/api/users/create")
                .header("x-api-key", &key)
                .body(r#"{"username":"a"}"#),
            415,
        ),
        (
            srv.raw("POST", "/api/users/create")
                .header("x-api-key", &key)
                .header("content-type", "application/json")
                .body(vec![b'{'; 1024 * 1024 + 10]),
            413,
        ),
        (
            srv.raw("POST", "/api/users/create")
                .header("x-api-key", &key)
                .header("content-type", "application/json")
                .body(vec![0xff, 0xfe, 0x00]),
            400,
        ),
        (
            srv.raw("POST", "/api/users/create")
                .header("x-api-key", &key)
                .header("content-type", "application/json")
                .body("[".repeat(10_000)),
            400,
        ),
        (
            srv.raw("GET", "/api/users")
                .header("x-api-key", &key)
                .header("x-filler", "a".repeat(32 * 1024)),
            431,
        ),
        (
            srv.raw("POST", "/api/instances/suspend/%2e%2e%2fsecrets")
                .header("x-api-key", &key),
            400,
        ),
        (
            srv.raw("POST", "/api/instances/suspend/%00")
                .header("x-api-key", &key),
            400,
        ),
    ];
    for (req, status) in raw_cases {
        let a = srv.send(req).await;
        assert_eq!(a.status, status, "{a:?}");
        assert!(
            a.body["error"].as_str().is_some_and(|m| !m.is_empty()),
            "{a:?}"
        );
        tried += 1;
    }
    assert_eq!(
        footprint(&srv).await,
        before,
        "a refused request wrote something"
    );
    eprintln!("bad inputs tried: {tried}");
    srv.finish().await;
}

#[tokio::test]
async fn races_have_exactly_one_winner_and_leave_no_orphans() {
    let srv = TestServer::start("rel-races").await;
    // The same caller-chosen userId under different usernames and emails.
    let racers = (0..20).map(|i| {
        srv.call("POST", "/api/users/create", Some(json!({ "username": format!("r{i}"), "email": format!("r{i}@example.com"), "password": "correct horse", "userId": "same-id" })))
    });
    let answers = futures::future::join_all(racers).await;
    assert_eq!(
        answers.iter().filter(|a| a.status == 201).count(),
        1,
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|a| a.status == 409).count(),
        19,
        "{answers:?}"
    );
    let a = srv
        .call("POST", "/api/users/create", Some(json!({ "username": "u1", "email": "u1@example.com", "password": "correct horse", "userId": "u1" })))
        .await;
    assert_eq!(a.status, 201);

    // A deploy racing the delete of its node, ten times: one wins, nothing is orphaned.
    let mut outcomes = BTreeMap::new();
    for round in 0..10 {
        let a = srv
            .call(
                "POST",
                "/api/nodes/create",
                Some(json!({ "name": format!("n{round}"), "address": "127.0.10.1" })),
            )
            .await;
        let node = a.body["id"].as_str().expect("id").to_owned();
        let (deploy, delete) = tokio::join!(
            srv.call(
                "POST",
                "/api/instances/deploy",
                Some(deploy_body(&node, 30000 + round))
            ),
            srv.call(
                "DELETE",
                "/api/nodes/delete",
                Some(json!({ "nodeId": node }))
            ),
        );
        let winner = match (deploy.status, delete.status) {
            (201, 400) => "deploy",
            (400, 201) => "delete",
            other => {
                panic!("round {round}: exactly one must win, got {other:?}: {deploy:?} {delete:?}")
            }
        };
        *outcomes.entry(winner).or_insert(0) += 1;
        if winner == "deploy" {
            let id = deploy.body["Id"].as_str().expect("Id");
            assert_eq!(
                srv.call("DELETE", "/api/instance/delete", Some(json!({ "id": id })))
                    .await
                    .status,
                201
            );
        }
    }
    eprintln!("deploy vs node delete: {outcomes:?}");
    let nodes: BTreeSet<String> = Api::<Node>::namespaced(srv.client.clone(), &srv.ns)
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    let orphans: Vec<String> = Api::<Instance>::namespaced(srv.client.clone(), &srv.ns)
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .iter()
        .filter(|i| !nodes.contains(&i.spec.node))
        .map(|i| i.name_any())
        .collect();
    assert!(
        orphans.is_empty(),
        "instances on deleted nodes: {orphans:?}"
    );

    // Two deletes of one instance: one 201, one 400.
    let node = nodes
        .iter()
        .next()
        .cloned()
        .unwrap_or_else(|| "none".into());
    let node = if node == "none" {
        let a = srv
            .call(
                "POST",
                "/api/nodes/create",
                Some(json!({ "name": "n", "address": "127.0.10.1" })),
            )
            .await;
        a.body["id"].as_str().expect("id").to_owned()
    } else {
        node
    };
    let a = srv
        .call(
            "POST",
            "/api/instances/deploy",
            Some(deploy_body(&node, 31000)),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    let id = a.body["Id"].as_str().expect("Id").to_owned();
    let (x, y) = tokio::join!(
        srv.call("DELETE", "/api/instance/delete", Some(json!({ "id": id }))),
        srv.call("DELETE", "/api/instance/delete", Some(json!({ "id": id }))),
    );
    let mut statuses = [x.status, y.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 400], "{x:?} {y:?}");
    srv.finish().await;
}

#[tokio::test]
async fn a_crash_during_keyed_deploys_loses_and_duplicates_nothing() {
    let srv = TestServer::start_with("rel-crash", &["--api-only"]).await;
    // 500 Pods with fixed host ports: on a node of the test's own.
    let fake = common::FakeNode::create(&srv.client).await;
    srv.user("u1").await;
    let node = srv.node(&fake.ip).await;
    // The controllers in a process of their own, so the crash hits the API mid-flight.
    let controllers = server::spawn_berth(&srv.ns, &server::FAST_ELECTION).await;
    let fake_node = node;
    // A second API process to crash; the test server stays up to read from.
    let victim = server::spawn_berth(&srv.ns, &["--api-only"]).await;
    let port = victim.base.rsplit(':').next().expect("port").to_owned();
    let base = victim.base.clone();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let key = srv.key.clone();
    const DEPLOYS: usize = 500;

    let client_side = {
        let (http, key, base, node) = (http.clone(), key.clone(), base.clone(), fake_node.clone());
        async move {
            futures::future::join_all((0..DEPLOYS).map(|i| {
                let (http, key, base, node) =
                    (http.clone(), key.clone(), base.clone(), node.clone());
                async move {
                    // Retries on connection errors with the same request and key.
                    let body = deploy_body(&node, 20000 + i as i32);
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
                    let mut interrupted = 0;
                    loop {
                        let sent = http
                            .post(format!("{base}/api/instances/deploy"))
                            .header("x-api-key", &key)
                            .header("idempotency-key", format!("crash-{i}"))
                            .json(&body)
                            .send()
                            .await;
                        match sent {
                            // 503: the restarted server is still syncing its caches.
                            Ok(resp)
                                if resp.status() == 503
                                    && tokio::time::Instant::now() < deadline =>
                            {
                                interrupted += 1;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            Ok(resp) => {
                                let status = resp.status().as_u16();
                                let v: Value = resp.json().await.unwrap_or(Value::Null);
                                return (
                                    i,
                                    status,
                                    v["Id"].as_str().map(str::to_owned),
                                    interrupted,
                                );
                            }
                            Err(_) if tokio::time::Instant::now() < deadline => {
                                interrupted += 1;
                                tokio::time::sleep(Duration::from_millis(50)).await
                            }
                            Err(e) => panic!("deploy {i} never answered: {e}"),
                        }
                    }
                }
            }))
            .await
        }
    };
    let killer = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut v = victim;
        // SAFETY: kill(2) with SIGKILL on the child this test started.
        unsafe { libc::kill(v.child.id().expect("pid") as i32, libc::SIGKILL) };
        let _ = v.child.wait().await;
        // Restart on the same port; the clients' retries reach it.
        server::spawn_berth(
            &srv.ns,
            &["--api-only", "--listen", &format!("127.0.0.1:{port}")],
        )
        .await
    };
    let (answers, restarted) = tokio::join!(client_side, killer);
    let created: BTreeMap<usize, String> = answers
        .iter()
        .filter(|(_, s, _, _)| *s == 201)
        .map(|(i, _, id, _)| (*i, id.clone().expect("Id")))
        .collect();
    let failed: Vec<_> = answers.iter().filter(|(_, s, _, _)| *s != 201).collect();
    // The crash must really interrupt requests, which the clients then retried.
    let retried = answers.iter().filter(|(_, _, _, n)| *n > 0).count();
    assert!(retried > 0, "no deploy was interrupted by the crash");
    assert!(failed.is_empty(), "every deploy ends in 201: {failed:?}");
    assert_eq!(created.len(), DEPLOYS);
    let ids: BTreeSet<&String> = created.values().collect();
    assert_eq!(ids.len(), DEPLOYS, "two deploys answered with one instance");

    let api: Api<Instance> = Api::namespaced(srv.client.clone(), &srv.ns);
    let pods: Api<Pod> = Api::namespaced(srv.client.clone(), &srv.ns);
    eventually(
        Duration::from_secs(240),
        "every deployed instance Running",
        || async { common::running_instances(&srv.client, &srv.ns).await == DEPLOYS },
    )
    .await;
    let instances = api.list(&ListParams::default()).await.expect("list").items;
    assert_eq!(
        instances.len(),
        DEPLOYS,
        "an instance was duplicated or lost"
    );
    let names: BTreeSet<String> = instances.iter().map(|i| i.name_any()).collect();
    assert_eq!(
        names.iter().collect::<BTreeSet<_>>(),
        ids,
        "the instances are exactly the ones answered"
    );
    let pod_count = pods
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=berth"))
        .await
        .expect("pods")
        .items
        .len();
    assert_eq!(pod_count, DEPLOYS, "one Pod per instance");
    eprintln!(
        "crash: {DEPLOYS} deploys, {retried} interrupted and retried, {} instances, {pod_count} pods, 0 lost",
        instances.len()
    );
    drop(restarted);
    drop(controllers);
    fake.delete(&srv.client).await;
    srv.finish().await;
}

#[tokio::test]
async fn sigterm_answers_what_it_accepted_then_refuses_new_connections() {
    let srv = TestServer::start_with("rel-drain", &["--api-only"]).await;
    let node = setup(&srv).await;
    const DELAY: Duration = Duration::from_secs(2);
    let victim = server::spawn_berth(&srv.ns, &["--api-only", "--shutdown-delay", "2"]).await;
    let http = reqwest::Client::new();
    let base = victim.base.clone();
    let requests = futures::future::join_all((0..100).map(|i| {
        let (http, key, base, node) = (http.clone(), srv.key.clone(), base.clone(), node.clone());
        async move {
            tokio::time::sleep(Duration::from_millis(i * 3)).await;
            http.post(format!("{base}/api/instances/deploy"))
                .header("x-api-key", key)
                .json(&deploy_body(&node, 40000 + i as i32))
                .send()
                .await
        }
    }));
    // New connections, one every 50 ms from the signal on: what each one met.
    let probes = async {
        tokio::time::sleep(Duration::from_millis(120)).await;
        common::signal(victim.child.id().expect("pid"), libc::SIGTERM);
        let signalled = tokio::time::Instant::now();
        let mut seen = Vec::new();
        loop {
            let fresh = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("client");
            let sent = signalled.elapsed();
            let outcome = match fresh.get(format!("{base}/readyz")).send().await {
                Ok(r) => Ok(r.status().as_u16()),
                Err(e) if e.is_connect() => Err("refused"),
                Err(e) => panic!("a new connection was accepted but not answered: {e:?}"),
            };
            seen.push((sent, signalled.elapsed(), outcome));
            if outcome.is_err() || signalled.elapsed() > Duration::from_secs(20) {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (results, seen) = tokio::join!(requests, probes);
    let mut answered = 0;
    let mut refused = 0;
    for r in results {
        match r {
            Ok(resp) => {
                assert_eq!(resp.status(), 201, "an accepted request must complete");
                answered += 1;
            }
            // Only requests that were never accepted may fail, and only by being refused.
            Err(e) if e.is_connect() => refused += 1,
            Err(e) => panic!("an accepted request saw {e:?}"),
        }
    }
    assert!(answered > 0, "some requests were in flight");
    // In order: unready but answering during the delay, then refusing.
    let (_, last_at, last) = seen.last().copied().expect("probes");
    assert_eq!(
        last,
        Err("refused"),
        "new connections are refused in the end: {seen:?}"
    );
    assert!(
        last_at >= DELAY,
        "refused only after the shutdown delay: {seen:?}"
    );
    // The signal takes a moment to reach the handler (milliseconds, more on a
    // loaded machine): until then /readyz may still say ready; no probe sent a
    // second after the signal may, and from the first "unready" on, every answer
    // says so. Timed by when each probe was sent: on a loaded machine an answer
    // itself can take a second (one CI run's first probe, sent at once, came
    // back 503 after 1.2 s).
    let unready = seen
        .iter()
        .position(|(_, _, o)| *o == Ok(503))
        .unwrap_or_else(|| panic!("never unready: {seen:?}"));
    assert!(
        seen[..unready]
            .iter()
            .all(|(sent, _, _)| *sent < Duration::from_secs(1)),
        "still ready for a probe sent a second after the signal: {seen:?}"
    );
    for (at, _, outcome) in &seen[..unready] {
        assert_eq!(
            *outcome,
            Ok(200),
            "before the handler ran, at {at:?}: {seen:?}"
        );
    }
    for (_, at, outcome) in &seen[unready..seen.len() - 1] {
        assert_eq!(*outcome, Ok(503), "answered, unready, at {at:?}: {seen:?}");
    }
    // Probes are paced by a loaded machine (one CI run got 5 in the 2 s delay):
    // what matters is that several landed inside the delay, in the order above.
    assert!(
        seen.len() >= 4 && seen[seen.len() - 2].1 >= DELAY / 2,
        "probed during the delay: {seen:?}"
    );
    eprintln!(
        "drain: {answered} answered, {refused} refused; new connections answered 503 for {:?}, refused from {last_at:?}",
        seen[seen.len() - 2].1
    );
    srv.finish().await;
}

#[tokio::test]
async fn a_connection_made_before_the_drain_gets_its_answer() {
    let srv = TestServer::start_with("rel-drain-early", &["--api-only"]).await;
    let victim = server::spawn_berth(&srv.ns, &["--api-only", "--shutdown-delay", "1"]).await;
    let addr = victim.base.trim_start_matches("http://").to_owned();
    // Connected, nothing asked yet (a client between its connect and its request).
    let mut early = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    common::signal(victim.child.id().expect("pid"), libc::SIGTERM);
    // The drain has begun once new connections are refused.
    eventually(
        Duration::from_secs(10),
        "new connections refused",
        || async { tokio::net::TcpStream::connect(&addr).await.is_err() },
    )
    .await;
    early
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: berth\r\n\r\n")
        .await
        .expect("send");
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), early.read_to_string(&mut answer)).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "a connection the server had accepted got {answer:?}"
    );
    srv.finish().await;
}

#[tokio::test]
async fn repeated_bad_keys_are_slowed_down() {
    let srv = TestServer::start("rel-ratelimit").await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(
            srv.send(
                srv.raw("GET", "/api/users")
                    .header("x-api-key", "berth_guess"),
            )
            .await
            .status,
        );
    }
    assert_eq!(&statuses[..10], &[401; 10], "{statuses:?}");
    assert_eq!(&statuses[10..], &[429, 429], "{statuses:?}");
    let a = srv.call("GET", "/api/users", None).await;
    assert_eq!(
        a.status, 429,
        "the address is slowed down whatever key it sends next"
    );
    assert!(
        a.body["error"]
            .as_str()
            .is_some_and(|m| m.contains("try again later")),
        "{a:?}"
    );
    srv.finish().await;
}

#[tokio::test]
async fn instance_pods_run_hardened() {
    let srv = TestServer::start("rel-hardened").await;
    let node = setup(&srv).await;
    let a = srv
        .call(
            "POST",
            "/api/instances/deploy",
            Some(deploy_body(&node, common::random_port())),
        )
        .await;
    assert_eq!(a.status, 201);
    let id = a.body["Id"].as_str().expect("Id").to_owned();
    let pods: Api<Pod> = Api::namespaced(srv.client.clone(), &srv.ns);
    eventually(Duration::from_secs(30), "pod", || async {
        pods.get_opt(&id).await.ok().flatten().is_some()
    })
    .await;
    let pod = pods.get(&id).await.expect("pod");
    let spec = pod.spec.expect("spec");
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(
        spec.security_context
            .and_then(|s| s.seccomp_profile)
            .map(|p| p.type_),
        Some("RuntimeDefault".into())
    );
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let sc = c.security_context.clone().expect("security context");
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
        assert_eq!(sc.privileged, Some(false), "{}", c.name);
        assert_eq!(sc.run_as_non_root, Some(true), "{}", c.name);
        assert_eq!(
            sc.capabilities.and_then(|c| c.drop),
            Some(vec!["ALL".to_owned()]),
            "{}",
            c.name
        );
        let res = c.resources.clone().expect("resources");
        assert_eq!(res.requests, res.limits, "{}: requests = limits", c.name);
    }
    srv.finish().await;
}

/// Host ports `first..first+n` as a Skyport port string.
fn port_range(first: i32, n: i32) -> String {
    (first..first + n)
        .map(|p| format!("{p}:{p}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test]
async fn a_deploy_whose_client_leaves_is_made_whole_or_not_at_all() {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    use tokio::io::AsyncWriteExt;

    let srv = TestServer::start("rel-cancel").await;
    let fake = common::FakeNode::create(&srv.client).await;
    srv.user("u1").await;
    let node = srv.node(&fake.ip).await;
    const TRIES: i32 = 50;
    // Many ports: the claims take a while after the Instance exists, and the
    // client leaves in the middle of them.
    const PORTS: i32 = 16;
    // Every fifth deploy also asks for a port that another instance holds; the
    // informer cannot see it (that instance names no node of this machine), so
    // the conflict shows only at its claim, last: those deploys roll back.
    const BLOCKED: i32 = 19999;
    let api: Api<Instance> = Api::namespaced(srv.client.clone(), &srv.ns);
    let holder: Instance = serde_json::from_value(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "Instance", "metadata": { "name": "holder" },
        "spec": { "displayName": "holder", "userId": "u1", "image": "python:3.12", "node": "elsewhere",
                  "memory": 64, "cpu": 0.05, "ports": [{ "containerPort": BLOCKED, "hostPort": BLOCKED }],
                  "primaryPort": BLOCKED }
    }))
    .expect("instance");
    let holder = api
        .create(&Default::default(), &holder)
        .await
        .expect("holder");
    let claim: ConfigMap = serde_json::from_value(json!({
        "metadata": {
            "name": berth::store::claims::claim_name(
                berth::store::claims::ClaimKind::HostPort,
                &berth::store::claims::host_port_key(&fake.name, BLOCKED)),
            "labels": { "app.kubernetes.io/managed-by": "berth", "berth.dev/claim": "hostport" },
            "ownerReferences": [{ "apiVersion": "berth.dev/v1alpha1", "kind": "Instance", "name": "holder",
                                  "uid": holder.uid().expect("uid"), "controller": true }]
        },
        "data": { "holder": "holder" }
    }))
    .expect("claim");
    Api::<ConfigMap>::namespaced(srv.client.clone(), &srv.ns)
        .create(&Default::default(), &claim)
        .await
        .expect("blocking claim");
    let (created_tx, mut created) = tokio::sync::mpsc::unbounded_channel::<String>();
    let watch = tokio::spawn(
        watcher(api.clone(), watcher::Config::default())
            .applied_objects()
            .for_each(move |i| {
                if let Ok(i) = i {
                    let _ = created_tx.send(i.spec.display_name.clone());
                }
                async {}
            }),
    );
    let addr = srv.base.trim_start_matches("http://").to_owned();
    let mut left_early = 0;
    for t in 0..TRIES {
        let first = 20000 + t * PORTS;
        let name = format!("try-{t}");
        let ports = if t % 5 == 4 {
            format!("{},{BLOCKED}:{BLOCKED}", port_range(first, PORTS - 1))
        } else {
            port_range(first, PORTS)
        };
        let body = json!({ "image": "Python", "memory": 64, "cpu": 0.05, "ports": ports,
                           "nodeId": node, "name": name, "user": "u1", "primary": first })
        .to_string();
        let request = format!(
            "POST /api/instances/deploy HTTP/1.1\r\nhost: {addr}\r\nx-api-key: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            srv.key,
            body.len()
        );
        let mut conn = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        conn.write_all(request.as_bytes()).await.expect("send");
        // Leave as soon as the Instance exists (the protocol is half-way), unless
        // the answer comes first.
        let mut answer = [0u8; 512];
        let left = tokio::select! {
            _ = async {
                while let Some(n) = created.recv().await {
                    if n == name {
                        return;
                    }
                }
            } => true,
            read = tokio::io::AsyncReadExt::read(&mut conn, &mut answer) => {
                let n = read.unwrap_or(0);
                eprintln!("{name}: answered first: {}", String::from_utf8_lossy(&answer[..n]).lines().next().unwrap_or_default());
                false
            }
            () = tokio::time::sleep(Duration::from_secs(10)) => panic!("{name}: neither created nor answered"),
        };
        if left {
            left_early += 1;
        }
        drop(conn);
    }
    watch.abort();
    // Every Instance holds all its claims; every claim's holder exists. Nothing
    // in between, however long we look.
    let claims: Api<ConfigMap> = Api::namespaced(srv.client.clone(), &srv.ns);
    let whole = || async {
        let instances = api.list(&ListParams::default()).await.expect("list").items;
        let held = claims
            .list(&ListParams::default().labels("berth.dev/claim=hostport"))
            .await
            .expect("claims")
            .items;
        let instances: Vec<Instance> = instances
            .into_iter()
            .filter(|i| i.name_any() != "holder")
            .collect();
        let names: BTreeSet<String> = instances
            .iter()
            .map(|i| i.name_any())
            .chain(["holder".to_owned()])
            .collect();
        let mut per_holder: BTreeMap<String, usize> = BTreeMap::new();
        let mut orphans = 0;
        for c in &held {
            let holder = c
                .data
                .as_ref()
                .and_then(|d| d.get("holder"))
                .cloned()
                .unwrap_or_default();
            if names.contains(&holder) {
                *per_holder.entry(holder).or_insert(0) += 1;
            } else {
                orphans += 1;
            }
        }
        let half_made = instances
            .iter()
            .filter(|i| per_holder.get(&i.name_any()).copied().unwrap_or(0) != PORTS as usize)
            .count();
        (instances.len(), half_made, orphans)
    };
    eventually(
        Duration::from_secs(60),
        "every instance whole and no claim without its instance",
        || async {
            let (n, half, orphans) = whole().await;
            eprintln!("instances {n}, half-made {half}, orphan claims {orphans}");
            half == 0 && orphans == 0
        },
    )
    .await;
    let (made, half, _) = whole().await;
    eprintln!(
        "client left early in {left_early} of {TRIES} deploys: {made} made whole, {} rolled back, {half} half-made",
        TRIES as usize - made
    );
    assert!(
        left_early > TRIES / 2,
        "the client must leave mid-protocol: {left_early}"
    );
    assert_eq!(
        (made, TRIES as usize - made),
        (40, 10),
        "the deploys without a conflict are made, the others rolled back"
    );
    fake.delete(&srv.client).await;
    srv.finish().await;
}

#[tokio::test]
async fn a_client_trickling_its_headers_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = TestServer::start_with("rel-slowloris", &["--header-read-timeout", "1"]).await;
    let addr = srv.base.trim_start_matches("http://").to_owned();
    // Slowloris: a request line and one header, then silence.
    let mut slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    slow.write_all(b"GET /api/users HTTP/1.1\r\nhost: berth\r\n")
        .await
        .expect("send");
    let started = std::time::Instant::now();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // an error answer before closing is fine
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection is still open after 10 s");
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(5),
        "cut off after {after:?}, not at the 1 s header timeout"
    );
    // Everybody else is served as before.
    assert_eq!(srv.call("GET", "/api/users", None).await.status, 200);
    srv.finish().await;
}
