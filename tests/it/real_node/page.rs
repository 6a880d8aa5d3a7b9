//! The console page in headless Chromium against the real node: the stand-in
//! server's start-up in the terminal, a command typed in the page reaching the
//! server, the gauges filled from metrics-server, the stop button stopping it.
//! Screenshots are kept in target/test-artifacts/.

use std::path::Path;
use std::time::Duration;

use berth::crd::PowerState;
use serde_json::json;

use super::*;
use crate::browser::Browser;
use crate::console::console_token;
use crate::power::wait_power;

fn artifact(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-artifacts")
        .join(name)
}

#[tokio::test]
async fn the_console_page_shows_types_and_stops_in_a_browser() {
    let (srv, _ip, node, files) = setup_with("real-page", &["--stop-timeout", "20"]).await;
    let (id, _port) = deploy(&srv, &node, &files, 64, json!({})).await;
    wait_power(&srv, &id, PowerState::Running, true).await;
    let token = console_token(&srv, &id, "u1", None).await;

    // The page may be framed (CSP frame-ancestors, no X-Frame-Options), is never
    // cached and never passes its URL (with the token) on as a referrer.
    let page_url = format!("/console/{id}?token={token}");
    let resp = reqwest::get(format!("{}{page_url}", srv.base))
        .await
        .expect("page");
    assert_eq!(resp.status(), 200);
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(header("content-security-policy").contains("frame-ancestors *"));
    assert!(header("x-frame-options").is_empty());
    assert_eq!(header("cache-control"), "no-store");
    assert_eq!(header("referrer-policy"), "no-referrer");
    let a = srv.call("GET", "/console/no-such-instance", None).await;
    assert_eq!(a.status, 400, "{a:?}");

    let mut browser = Browser::launch().await;
    let page = browser.open(&format!("{}{page_url}", srv.base)).await;
    let text = "window.berthConsole ? berthConsole.text() : document.body.innerText";
    browser
        .wait_for(
            &page,
            "!!window.berthConsole && berthConsole.text().includes('Done (')",
            Duration::from_secs(30),
            "the server's Done line in the terminal",
            text,
        )
        .await;
    assert_eq!(
        browser.eval(&page, "location.search").await,
        json!(""),
        "the token is taken out of the address bar"
    );
    assert_eq!(
        browser
            .eval(&page, "document.querySelector('#status').textContent")
            .await,
        json!("running")
    );

    // A command typed in the page's command line reaches the server.
    browser
        .eval(&page, "document.querySelector('#line').focus()")
        .await;
    browser.type_line(&page, "say hello").await;
    browser
        .wait_for(
            &page,
            "berthConsole.text().split('\\n').some(l => l.includes('[Server] hello'))",
            Duration::from_secs(30),
            "the server's answer to `say hello`",
            text,
        )
        .await;

    // The gauges: memory from metrics-server, against the limit.
    browser
        .wait_for(
            &page,
            "/^[0-9.]+ MiB \\/ 64\\.0 MiB$/.test(document.querySelector('#memory-text').textContent)",
            Duration::from_secs(90),
            "the memory gauge",
            "document.querySelector('#gauges').innerText",
        )
        .await;
    browser
        .screenshot(&page, &artifact("console-page.png"))
        .await;

    // Stop: the StopCommand, and the page says offline.
    browser
        .eval(&page, "document.querySelector('#stop').click()")
        .await;
    browser
        .wait_for(
            &page,
            "document.querySelector('#status').textContent === 'offline'",
            Duration::from_secs(60),
            "offline after the stop button",
            "document.querySelector('header').innerText",
        )
        .await;
    assert!(
        browser
            .eval(&page, "berthConsole.text()")
            .await
            .as_str()
            .is_some_and(|t| t.contains("Saving the game (stop command)")),
        "the stop went through the StopCommand"
    );
    browser
        .screenshot(&page, &artifact("console-page-offline.png"))
        .await;
    wait_power(&srv, &id, PowerState::Offline, false).await;
    srv.log_secret(&token);
    srv.finish().await;
}
