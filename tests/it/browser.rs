//! Headless Chromium (Debian's `chromium`, installed by `make test`) driven over
//! the DevTools protocol on a websocket: open a page, evaluate JavaScript in it,
//! type, take screenshots. What the console page test needs, and no more.

use std::path::PathBuf;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A running headless browser and its DevTools connection.
pub struct Browser {
    _child: Child,
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    profile: PathBuf,
}

/// A page (tab) of the browser, by its DevTools session.
pub struct Page(String);

impl Browser {
    /// Starts Chromium headless with a fresh profile.
    pub async fn launch() -> Self {
        let bin = std::env::var("BERTH_CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let profile =
            std::env::temp_dir().join(format!("berth-chromium-{}", uuid::Uuid::new_v4().simple()));
        let child = Command::new(&bin)
            .args([
                "--headless=new",
                "--no-sandbox", // tests run as root
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
                "--window-size=1100,700",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {bin} (`make test` installs Debian's chromium): {e}")
            });
        // Chromium writes the port and path of its DevTools socket here.
        let active = profile.join("DevToolsActivePort");
        let mut found = None;
        for _ in 0..300 {
            if let Ok(text) = std::fs::read_to_string(&active) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    found = Some(format!("ws://127.0.0.1:{port}{path}"));
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let url = found.expect("Chromium never opened its DevTools port");
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("DevTools websocket");
        Self {
            _child: child,
            ws,
            next_id: 0,
            profile,
        }
    }

    /// Calls a DevTools method (on a page's session, when given) and returns its result.
    pub async fn call(&mut self, page: Option<&Page>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(Page(session)) = page {
            msg["sessionId"] = json!(session);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("send to DevTools");
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(Ok(m)) = self.ws.next().await {
                let Message::Text(text) = m else { continue };
                let v: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
                if v["id"] == json!(id) {
                    return v;
                }
            }
            panic!("DevTools connection closed");
        })
        .await
        .unwrap_or_else(|_| panic!("DevTools {method} timed out"));
        assert!(answer.get("error").is_none(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// Opens `url` in a new page.
    pub async fn open(&mut self, url: &str) -> Page {
        let target = self
            .call(None, "Target.createTarget", json!({ "url": url }))
            .await;
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        Page(attached["sessionId"].as_str().expect("session").to_owned())
    }

    /// Evaluates `expr` in the page; its value.
    pub async fn eval(&mut self, page: &Page, expr: &str) -> Value {
        let r = self
            .call(
                Some(page),
                "Runtime.evaluate",
                json!({ "expression": expr, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Evaluates `expr` until it is `true`, or panics after `timeout` saying `what`
    /// and what `show` evaluates to.
    pub async fn wait_for(
        &mut self,
        page: &Page,
        expr: &str,
        timeout: Duration,
        what: &str,
        show: &str,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.eval(page, expr).await == json!(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let shown = self.eval(page, show).await;
        panic!("{what}: not within {timeout:?}; the page shows: {shown}");
    }

    /// Types `text` into the focused element, then presses Enter.
    pub async fn type_line(&mut self, page: &Page, text: &str) {
        self.call(Some(page), "Input.insertText", json!({ "text": text }))
            .await;
        for kind in ["keyDown", "keyUp"] {
            self.call(
                Some(page),
                "Input.dispatchKeyEvent",
                json!({ "type": kind, "key": "Enter", "code": "Enter",
                        "windowsVirtualKeyCode": 13, "text": "\r" }),
            )
            .await;
        }
    }

    /// Saves a PNG screenshot of the page to `path`.
    pub async fn screenshot(&mut self, page: &Page, path: &std::path::Path) {
        let shot = self
            .call(
                Some(page),
                "Page.captureScreenshot",
                json!({ "format": "png" }),
            )
            .await;
        // Base64, decoded the way Kubernetes decodes a Secret's data.
        let png: k8s_openapi::ByteString =
            serde_json::from_value(shot["data"].clone()).expect("base64 PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("artifact dir");
        }
        std::fs::write(path, png.0).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.profile).ok();
    }
}
