//! The console on kwok nodes: tokens and their scopes, the login, the websocket's
//! protocol (output fanned out to many sockets, expiry and renewal, bad frames,
//! floods, Pod restarts). kwok serves each test Pod's logs from a file the test
//! writes (a `Logs` object); what a real process does with typed commands is in
//! `real_node::console`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use berth::store::tokens::{Claims, KEY_CURRENT, Perm};
use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::common::{self, FakeNode, eventually};
use crate::control_plane::cri_log_line;
use crate::power::{pod_uid, power};
use crate::server::TestServer;

/// One console socket, as a test drives it.
pub struct Socket {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Every frame received so far, as (event, args).
    pub seen: Vec<(String, Vec<Value>)>,
    /// How the socket was closed, if it was.
    pub closed: Option<Option<CloseCode>>,
}

impl Socket {
    /// Opens the console socket of instance `id`.
    pub async fn open(base: &str, id: &str) -> Self {
        let url = format!(
            "{}/api/instances/{id}/ws",
            base.replacen("http://", "ws://", 1)
        );
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket handshake");
        Self {
            ws,
            seen: Vec::new(),
            closed: None,
        }
    }

    /// Sends a frame in Wings' shape.
    pub async fn send(&mut self, event: &str, args: &[&str]) {
        let text = json!({ "event": event, "args": args }).to_string();
        self.ws.send(Message::text(text)).await.expect("send frame");
    }

    /// Sends any message (bad frames too); false when the socket is gone.
    pub async fn send_raw(&mut self, msg: Message) -> bool {
        self.ws.send(msg).await.is_ok()
    }

    /// Receives until `done` holds for a frame (returned), the socket closes or
    /// `timeout` passes (None).
    pub async fn until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&str, &[Value]) -> bool,
    ) -> Option<(String, Vec<Value>)> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.closed.is_none() {
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(msg) => msg,
            };
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("frames are JSON");
                    let event = v["event"].as_str().expect("event").to_owned();
                    let args = v["args"].as_array().cloned().unwrap_or_default();
                    self.seen.push((event.clone(), args.clone()));
                    if done(&event, &args) {
                        return Some((event, args));
                    }
                }
                Some(Ok(Message::Close(frame))) => self.closed = Some(frame.map(|f| f.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => self.closed = Some(None),
            }
        }
        None
    }

    /// Receives until a frame with `event` (and first argument `arg`, when given).
    pub async fn expect(&mut self, event: &str, arg: Option<&str>) -> Vec<Value> {
        let got = self
            .until(Duration::from_secs(30), |e, a| {
                e == event && arg.is_none_or(|want| a.first().and_then(Value::as_str) == Some(want))
            })
            .await;
        match got {
            Some((_, args)) => args,
            None => panic!(
                "no {event:?} {arg:?} frame (closed: {:?}); seen: {:?}",
                self.closed,
                self.tail()
            ),
        }
    }

    /// Receives until the socket is closed; its close code.
    pub async fn expect_close(&mut self) -> Option<CloseCode> {
        let _ = self.until(Duration::from_secs(30), |_, _| false).await;
        self.closed
            .unwrap_or_else(|| panic!("the socket stayed open; seen: {:?}", self.tail()))
    }

    /// Authenticates and waits for the answer.
    pub async fn auth(&mut self, token: &str) {
        self.send("auth", &[token]).await;
        self.expect("auth success", None).await;
    }

    /// How many `console output` frames said `line`.
    pub fn count_output(&self, line: &str) -> usize {
        self.seen
            .iter()
            .filter(|(e, a)| {
                e == "console output" && a.first().and_then(Value::as_str) == Some(line)
            })
            .count()
    }

    /// The last frames, for failure messages.
    pub fn tail(&self) -> &[(String, Vec<Value>)] {
        &self.seen[self.seen.len().saturating_sub(12)..]
    }
}

/// A server, a fake node of the test's own, users `u1` (owner), `u2` and `boss`
/// (an admin), and one instance of `u1` whose console kwok serves from a file.
struct Setup {
    srv: TestServer,
    fake: FakeNode,
    node: String,
    id: String,
    log: LogFile,
}

/// A Pod's console as kwok serves it: a file the test appends to.
struct LogFile {
    path: PathBuf,
}

impl LogFile {
    /// Serves Pod `pod`'s logs in `ns` from a new file starting with `first`.
    async fn serve(ns: &str, pod: &str, first: &[&str]) -> Self {
        let path = std::env::temp_dir().join(format!("berth-{ns}-{pod}.log"));
        let text: String = first.iter().map(|l| cri_log_line(l)).collect();
        std::fs::write(&path, text).expect("log file");
        let manifest = json!({
            "apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Logs",
            "metadata": { "name": pod, "namespace": ns },
            "spec": { "logs": [{ "containers": ["server"], "logsFile": path, "follow": true }] }
        });
        let file = std::env::temp_dir().join(format!("berth-{ns}-{pod}-logs.json"));
        std::fs::write(&file, manifest.to_string()).expect("manifest");
        common::kubectl(&["apply", "-f", file.to_str().expect("path")]).await;
        std::fs::remove_file(&file).ok();
        Self { path }
    }

    /// Appends lines, as the server would print them.
    fn write(&self, lines: &[&str]) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .expect("open log");
        let text: String = lines.iter().map(|l| cri_log_line(l)).collect();
        f.write_all(text.as_bytes()).expect("append");
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        std::fs::remove_file(&self.path).ok();
    }
}

async fn setup(test: &str) -> Setup {
    let srv = TestServer::start_with(test, &["--stop-timeout", "1"]).await;
    let fake = FakeNode::create(&srv.client).await;
    srv.user("u1").await;
    srv.user("u2").await;
    let a = srv
        .call(
            "POST",
            "/api/users/create",
            Some(json!({ "username": "boss", "email": "boss@example.com", "password": "correct horse", "userId": "boss", "admin": true })),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    let node = srv.node(&fake.ip).await;
    let id = deploy(&srv, &node, "u1").await;
    let log = LogFile::serve(&srv.ns, &id, &["[Server] Preparing level", "first line"]).await;
    eventually(
        Duration::from_secs(30),
        "kwok serves the test's log file",
        || async {
            let a = srv
                .call("GET", &format!("/api/instances/{id}/logs"), None)
                .await;
            a.status == 200 && a.body["lines"].to_string().contains("first line")
        },
    )
    .await;
    Setup {
        srv,
        fake,
        node,
        id,
        log,
    }
}

impl Setup {
    async fn finish(self) {
        let Self { srv, fake, log, .. } = self;
        drop(log);
        fake.delete(&srv.client).await;
        srv.finish().await;
    }
}

async fn deploy(srv: &TestServer, node: &str, user: &str) -> String {
    let port = common::random_port();
    let a = srv
        .call(
            "POST",
            "/api/instances/deploy",
            Some(
                json!({ "image": "Python", "memory": 64, "cpu": 0.1, "ports": port.to_string(),
                         "nodeId": node, "name": "app", "user": user, "primary": port }),
            ),
        )
        .await;
    assert_eq!(a.status, 201, "{a:?}");
    a.body["Id"].as_str().expect("Id").to_owned()
}

/// A console token for `user` on `id` (the panel asks with its key).
pub(crate) async fn console_token(
    srv: &TestServer,
    id: &str,
    user: &str,
    perms: Option<&[&str]>,
) -> String {
    let mut body = json!({ "userId": user });
    if let Some(p) = perms {
        body["permissions"] = json!(p);
    }
    let a = srv
        .call(
            "POST",
            &format!("/api/instances/{id}/console-token"),
            Some(body),
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        a.body["socket"]
            .as_str()
            .is_some_and(|s| s.ends_with(&format!("/api/instances/{id}/ws"))),
        "{a:?}"
    );
    let token = a.body["token"].as_str().expect("token").to_owned();
    srv.log_secret(&token);
    token
}

/// A user token from the login.
async fn login(srv: &TestServer, body: Value) -> String {
    let a = srv
        .send(srv.raw("POST", "/api/auth/login").json(&body))
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    let token = a.body["token"].as_str().expect("token").to_owned();
    srv.log_secret(&token);
    token
}

/// The signing key, as the Secret holds it (for tokens a test makes itself).
async fn signing_key(srv: &TestServer) -> Vec<u8> {
    let secret = Api::<Secret>::namespaced(srv.client.clone(), &srv.ns)
        .get(berth::names::SIGNING_SECRET)
        .await
        .expect("signing Secret");
    let data: BTreeMap<_, _> = secret.data.expect("data");
    data[KEY_CURRENT].0.clone()
}

/// A key as a Secret's JSON carries it (what a leak would show).
fn base64_of(key: &[u8]) -> String {
    let quoted = serde_json::to_string(&k8s_openapi::ByteString(key.to_vec())).expect("base64");
    quoted.trim_matches('"').to_owned()
}

#[tokio::test]
async fn a_hundred_sockets_all_receive_a_line_written_once() {
    let s = setup("console-fanout").await;
    let token = console_token(&s.srv, &s.id, "u1", None).await;
    let mut sockets = Vec::new();
    for _ in 0..100 {
        let mut ws = Socket::open(&s.srv.base, &s.id).await;
        ws.auth(&token).await;
        sockets.push(ws);
    }
    // Each got the history first (the last lines, from the one shared stream)...
    for ws in &mut sockets {
        ws.expect("console output", Some("first line")).await;
    }
    // ...and then every socket gets a line written once, once.
    s.log.write(&["written once"]);
    s.log.write(&["and after it"]);
    for (i, ws) in sockets.iter_mut().enumerate() {
        ws.expect("console output", Some("and after it")).await;
        assert_eq!(
            ws.count_output("written once"),
            1,
            "socket {i}: {:?}",
            ws.tail()
        );
        assert_eq!(
            ws.count_output("first line"),
            1,
            "socket {i}: {:?}",
            ws.tail()
        );
    }
    // One log stream served them all: the history came from it once.
    let statuses = sockets[0]
        .seen
        .iter()
        .filter(|(e, _)| e == "status")
        .count();
    assert!(
        statuses >= 1,
        "a status frame on auth: {:?}",
        sockets[0].seen
    );
    s.finish().await;
}

#[tokio::test]
async fn console_tokens_are_for_one_instance_and_its_owner_or_an_admin() {
    let s = setup("console-scope").await;
    let srv = &s.srv;
    let other = deploy(srv, &s.node, "u2").await;
    // The panel may not ask for a token for a user who does not own the instance...
    let path = format!("/api/instances/{}/console-token", s.id);
    let a = srv
        .call("POST", &path, Some(json!({ "userId": "u2" })))
        .await;
    assert_eq!(a.status, 403, "{a:?}");
    assert!(a.body["error"].as_str().is_some(), "{a:?}");
    let a = srv
        .call("POST", &path, Some(json!({ "userId": "nobody" })))
        .await;
    assert_eq!(a.status, 400, "{a:?}");
    let a = srv
        .call(
            "POST",
            &path,
            Some(json!({ "userId": "u1", "permissions": ["root"] })),
        )
        .await;
    assert_eq!(a.status, 400, "{a:?}");
    let a = srv.call("POST", &path, Some(json!({}))).await;
    assert_eq!(a.status, 400, "{a:?}");
    let a = srv
        .send(srv.raw("POST", &path).json(&json!({ "userId": "u1" })))
        .await;
    assert_eq!(a.status, 401, "no API key: {a:?}");
    // ...but for its owner, or an admin.
    let owner = console_token(srv, &s.id, "u1", None).await;
    let admin = console_token(srv, &s.id, "boss", None).await;

    // A token for one instance is refused on another, on the socket and over HTTP.
    let mut ws = Socket::open(&srv.base, &other).await;
    ws.send("auth", &[&owner]).await;
    ws.expect("jwt error", None).await;
    ws.send("send command", &["say hi"]).await;
    ws.expect("jwt error", None).await;
    let a = srv
        .as_user("GET", &format!("/api/instances/{other}/logs"), &owner)
        .await;
    assert_eq!(a.status, 403, "{a:?}");
    let a = srv
        .send(
            srv.raw("POST", &format!("/api/instances/{other}/power"))
                .bearer_auth(&admin)
                .json(&json!({ "action": "stop" })),
        )
        .await;
    assert_eq!(
        a.status, 403,
        "an admin's console token is for one instance: {a:?}"
    );
    // On its own instance it works.
    let a = srv
        .as_user(
            "GET",
            &format!("/api/instances/{}/logs?tail=1", s.id),
            &admin,
        )
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["lines"], json!(["first line"]), "{a:?}");

    // A user token (the login) reaches the user's own instances only.
    let u2 = login(
        srv,
        json!({ "username": "u2", "password": "correct horse" }),
    )
    .await;
    let a = srv
        .as_user("GET", &format!("/api/instances/{}/stats", s.id), &u2)
        .await;
    assert_eq!(a.status, 403, "{a:?}");
    let a = srv
        .as_user("GET", &format!("/api/instances/{other}/stats"), &u2)
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.body["memory_limit_bytes"], json!(64 << 20), "{a:?}");
    let mut ws = Socket::open(&srv.base, &s.id).await;
    ws.send("auth", &[&u2]).await;
    ws.expect("jwt error", None).await;
    // A user token is no API key: the panel's routes refuse it.
    let a = srv.as_user("GET", "/api/instances", &u2).await;
    assert_eq!(a.status, 401, "{a:?}");

    // A token with fewer permissions allows only those.
    let stats_only = console_token(srv, &s.id, "u1", Some(&["stats"])).await;
    let a = srv
        .as_user("GET", &format!("/api/instances/{}/logs", s.id), &stats_only)
        .await;
    assert_eq!(a.status, 403, "{a:?}");
    let mut ws = Socket::open(&srv.base, &s.id).await;
    ws.auth(&stats_only).await;
    ws.send("set state", &["stop"]).await;
    let err = ws.expect("daemon error", None).await;
    assert!(
        err[0].as_str().is_some_and(|e| e.contains("power")),
        "{err:?}"
    );
    ws.send("send stats", &[]).await;
    ws.expect("stats", None).await;
    assert_eq!(
        ws.count_output("first line"),
        0,
        "no console permission, no output"
    );

    // A deleted user's tokens stop working at once, not when they expire.
    Api::<Secret>::namespaced(srv.client.clone(), &srv.ns)
        .delete(&berth::store::users::secret_name("u2"), &Default::default())
        .await
        .expect("delete u2");
    let stats = format!("/api/instances/{other}/stats");
    eventually(Duration::from_secs(10), "u2's token refused", || async {
        let a = srv.as_user("GET", &stats, &u2).await;
        a.status == 401
    })
    .await;
    let mut ws = Socket::open(&srv.base, &other).await;
    ws.send("auth", &[&u2]).await;
    let why = ws.expect("jwt error", None).await;
    assert!(
        why[0]
            .as_str()
            .is_some_and(|w| w.contains("no longer exists")),
        "{why:?}"
    );
    s.finish().await;
}

#[tokio::test]
async fn the_login_does_not_tell_unknown_users_from_wrong_passwords() {
    let s = setup("console-login").await;
    let srv = &s.srv;
    srv.secret("correct horse");
    // Right: by username or by email.
    let t = login(
        srv,
        json!({ "username": "u1", "password": "correct horse" }),
    )
    .await;
    login(
        srv,
        json!({ "email": "u1@example.com", "password": "correct horse" }),
    )
    .await;
    let a = srv
        .as_user("GET", &format!("/api/instances/{}/logs?tail=1", s.id), &t)
        .await;
    assert_eq!(a.status, 200, "{a:?}");
    // Bad requests: 400, and they count for nothing.
    for body in [
        json!({ "password": "x" }),
        json!({ "username": "u1" }),
        json!([1]),
    ] {
        let a = srv
            .send(srv.raw("POST", "/api/auth/login").json(&body))
            .await;
        assert_eq!(a.status, 400, "{body}: {a:?}");
    }
    // Wrong: the same answer and the same work, one argon2id check, whether the
    // user exists (skipping the check for unknown users would tell them apart by
    // time: it takes tens of milliseconds). Counted, not timed: wall time on a
    // shared machine is noise.
    let attempt = |body: Value| async move {
        srv.send(srv.raw("POST", "/api/auth/login").json(&body))
            .await
    };
    let checks = || crate::server::metric(&srv.base, "berth_password_checks_total");
    let mut answers = Vec::new();
    for _ in 0..3 {
        for body in [
            json!({ "username": "nobody", "password": "guess" }),
            json!({ "username": "u1", "password": "guess" }),
        ] {
            let before = checks().await;
            let a = attempt(body.clone()).await;
            assert_eq!(a.status, 401, "{a:?}");
            assert_eq!(checks().await - before, 1, "{body}: one password check");
            answers.push(a.body);
        }
    }
    assert_eq!(answers[0], answers[1], "one error for both");
    // Ten failures from an address: refused for a while, even the right password.
    for _ in 0..4 {
        let a = attempt(json!({ "email": "u1@example.com", "password": "guess" })).await;
        assert_eq!(a.status, 401, "{a:?}");
    }
    let a = attempt(json!({ "username": "u1", "password": "correct horse" })).await;
    assert_eq!(a.status, 429, "{a:?}");
    // The API key's own limiter is apart: the panel still works from here.
    let a = srv.call("GET", "/api/instances", None).await;
    assert_eq!(a.status, 200, "{a:?}");
    s.finish().await;
}

#[tokio::test]
async fn tokens_expire_on_the_socket_and_a_fresh_auth_renews_them() {
    let s = setup("console-expiry").await;
    let key = signing_key(&s.srv).await;
    s.srv.secret(&base64_of(&key));
    let mint = |ttl: i64| {
        let mut claims = Claims::new("u1", Some(&s.id), Perm::ALL.to_vec(), Duration::ZERO);
        claims.exp = claims.exp.saturating_add_signed(ttl);
        let t = berth::store::tokens::sign(&key, &claims).expect("sign");
        s.srv.log_secret(&t);
        t
    };
    let mut ws = Socket::open(&s.srv.base, &s.id).await;
    ws.auth(&mint(4)).await;
    // Less than a minute left: warned at once (before or after the history),
    // then expired, and output stops.
    ws.expect("token expired", None).await;
    let events: Vec<&str> = ws.seen.iter().map(|(e, _)| e.as_str()).collect();
    let warned = events.iter().position(|e| *e == "token expiring");
    let ended = events.iter().position(|e| *e == "token expired");
    assert!(warned.is_some() && warned < ended, "{events:?}");
    s.log.write(&["while expired"]);
    ws.send("send command", &["say hi"]).await;
    ws.expect("token expired", None).await;
    assert_eq!(ws.count_output("while expired"), 0, "{:?}", ws.tail());
    // An expired token is refused with a reason; a fresh one renews the socket.
    ws.send("auth", &[&mint(-5)]).await;
    let why = ws.expect("jwt error", None).await;
    assert!(
        why[0].as_str().is_some_and(|w| w.contains("expired")),
        "{why:?}"
    );
    ws.auth(&mint(600)).await;
    s.log.write(&["after renewal"]);
    ws.expect("console output", Some("after renewal")).await;
    // A renewal on a live socket keeps streaming without replaying the history.
    let before = ws.count_output("first line");
    ws.auth(&mint(600)).await;
    s.log.write(&["still streaming"]);
    ws.expect("console output", Some("still streaming")).await;
    assert_eq!(ws.count_output("first line"), before, "{:?}", ws.tail());
    // Tokens signed with another key, or tampered with, are refused.
    let forged = berth::store::tokens::sign(
        &[7u8; 32],
        &Claims::new(
            "u1",
            Some(&s.id),
            Perm::ALL.to_vec(),
            Duration::from_secs(600),
        ),
    )
    .expect("sign");
    let mut ws = Socket::open(&s.srv.base, &s.id).await;
    ws.send("auth", &[&forged]).await;
    ws.expect("jwt error", None).await;
    ws.send("auth", &["not.a.token"]).await;
    ws.expect("jwt error", None).await;
    ws.send("auth", &[""]).await;
    assert_eq!(
        ws.expect_close().await,
        Some(CloseCode::Policy),
        "three bad tokens"
    );
    s.finish().await;
}

#[tokio::test]
async fn a_rotated_signing_key_keeps_tokens_of_the_previous_one() {
    let s = setup("console-rotate").await;
    let old = console_token(&s.srv, &s.id, "u1", None).await;
    // Rotate: a new current key, the old one kept as previous (no restart).
    let key = signing_key(&s.srv).await;
    let secrets: Api<Secret> = Api::namespaced(s.srv.client.clone(), &s.srv.ns);
    let fresh: Vec<u8> = (0..32u8)
        .map(|b| b.wrapping_mul(31).wrapping_add(7))
        .collect();
    let patch = json!({ "data": {
        "current": k8s_openapi::ByteString(fresh.clone()),
        "previous": k8s_openapi::ByteString(key.clone()) } });
    secrets
        .patch(
            berth::names::SIGNING_SECRET,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("rotate");
    // New tokens are signed with the new key (told apart by a token made with it)...
    let by_new = berth::store::tokens::sign(
        &fresh,
        &Claims::new(
            "u1",
            Some(&s.id),
            Perm::ALL.to_vec(),
            Duration::from_secs(600),
        ),
    )
    .expect("sign");
    s.srv.log_secret(&by_new);
    let logs = format!("/api/instances/{}/logs?tail=1", s.id);
    eventually(Duration::from_secs(10), "the new key in use", || async {
        let a = s.srv.as_user("GET", &logs, &by_new).await;
        a.status == 200
    })
    .await;
    // ...the old key's tokens still pass, until the previous key is dropped.
    let a = s.srv.as_user("GET", &logs, &old).await;
    assert_eq!(a.status, 200, "{a:?}");
    let patch = json!({ "data": { "previous": null } });
    secrets
        .patch(
            berth::names::SIGNING_SECRET,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("drop previous");
    eventually(
        Duration::from_secs(10),
        "the old key's tokens refused",
        || async {
            let a = s.srv.as_user("GET", &logs, &old).await;
            a.status == 401
        },
    )
    .await;
    s.srv.secret(&base64_of(&fresh));
    s.finish().await;
}

#[tokio::test]
async fn bad_frames_get_an_error_and_floods_a_close_never_a_crash() {
    let s = setup("console-frames").await;
    let token = console_token(&s.srv, &s.id, "u1", None).await;
    let mut ws = Socket::open(&s.srv.base, &s.id).await;
    // Before auth: nothing but auth.
    ws.send("send logs", &[]).await;
    ws.expect("jwt error", None).await;
    ws.auth(&token).await;
    // Not JSON, not the shape, unknown events, binary: an error frame each.
    for bad in [
        Message::text("not json"),
        Message::text("{\"event\": 7}"),
        Message::text("{\"event\": \"format disk\", \"args\": []}"),
        Message::text("{\"event\": \"set state\", \"args\": [\"explode\"]}"),
        Message::text("{\"event\": \"send command\", \"args\": []}"),
        Message::binary(vec![0u8, 1, 2]),
    ] {
        let label = format!("{bad:?}");
        assert!(ws.send_raw(bad).await, "socket open for {label}");
        ws.expect("daemon error", None).await;
    }
    // The socket still works after them.
    ws.send("send logs", &[]).await;
    ws.expect("console output", Some("first line")).await;
    // A flood: past 100 commands a second, an error frame; past 200, a close.
    // (kwok drops what is typed: the input goes nowhere, and is answered at once.)
    let mut flood = Socket::open(&s.srv.base, &s.id).await;
    flood.auth(&token).await;
    for i in 0..250 {
        if !flood
            .send_raw(Message::text(
                json!({ "event": "send command", "args": [format!("say {i}")] }).to_string(),
            ))
            .await
        {
            break;
        }
    }
    assert_eq!(
        flood.expect_close().await,
        Some(CloseCode::Policy),
        "{:?}",
        flood.tail()
    );
    assert!(
        flood
            .seen
            .iter()
            .any(|(e, a)| e == "daemon error"
                && a[0].as_str().is_some_and(|m| m.contains("too many"))),
        "an error frame before the close: {:?}",
        flood.tail()
    );
    // Oversized: a frame over 64 KiB closes the socket with 1009.
    let mut big = Socket::open(&s.srv.base, &s.id).await;
    big.auth(&token).await;
    let huge = json!({ "event": "send command", "args": ["x".repeat(70 * 1024)] }).to_string();
    big.send_raw(Message::text(huge)).await;
    assert_eq!(big.expect_close().await, Some(CloseCode::Size));
    // A socket that never authenticates is closed; a plain GET gets JSON.
    let a = s
        .srv
        .send(s.srv.raw("GET", &format!("/api/instances/{}/ws", s.id)))
        .await;
    assert_eq!(a.status, 400, "{a:?}");
    assert!(a.body["error"].as_str().is_some(), "{a:?}");
    // Nothing broke: the first socket still streams, the server is ready.
    s.log.write(&["still alive"]);
    ws.expect("console output", Some("still alive")).await;
    let a = s.srv.send(s.srv.raw("GET", "/readyz")).await;
    assert_eq!(a.status, 200, "{a:?}");
    s.finish().await;
}

#[tokio::test]
async fn a_socket_follows_its_server_across_a_pod_restart() {
    let s = setup("console-restart").await;
    let token = console_token(&s.srv, &s.id, "u1", None).await;
    let mut ws = Socket::open(&s.srv.base, &s.id).await;
    ws.auth(&token).await;
    ws.expect("status", Some("running")).await;
    ws.expect("console output", Some("first line")).await;
    let before = pod_uid(&s.srv, &s.id).await.expect("a Pod");
    // A restart through the socket itself (the power feature): a new Pod.
    ws.send("set state", &["restart"]).await;
    ws.expect("status", Some("stopping")).await;
    ws.expect("status", Some("running")).await;
    eventually(Duration::from_secs(30), "a new Pod", || async {
        pod_uid(&s.srv, &s.id).await.is_some_and(|u| u != before)
    })
    .await;
    // The new Pod's output reaches the same socket, and nothing twice.
    s.log.write(&["after the restart"]);
    ws.expect("console output", Some("after the restart")).await;
    assert_eq!(ws.count_output("first line"), 1, "{:?}", ws.tail());
    // Stop and start by the REST API: the socket sees the states.
    let a = power(&s.srv, &s.id, "stop").await;
    assert_eq!(a.status, 202, "{a:?}");
    ws.expect("status", Some("offline")).await;
    let a = power(&s.srv, &s.id, "start").await;
    assert_eq!(a.status, 202, "{a:?}");
    ws.expect("status", Some("running")).await;
    s.log.write(&["after the start"]);
    ws.expect("console output", Some("after the start")).await;
    s.finish().await;
}
