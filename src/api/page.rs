//! The console page, `GET /console/:id?token=...`: a small web page (xterm.js,
//! vendored from npm and compiled into the binary: no CDN) with the live
//! console, a command line, power buttons and gauges, talking to the console
//! websocket with the token it was opened with. Panels embed it in an iframe:
//! `Content-Security-Policy: frame-ancestors` says who may
//! (`--console-frame-ancestors`, `*` by default: the page does nothing without a
//! token, which only the panel has).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::AppState;
use super::error::ApiError;

/// The page and its assets, as built into the binary.
const INDEX: &str = include_str!("../console/page/index.html");
const ASSETS: [(&str, &str, &[u8]); 5] = [
    (
        "xterm.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/page/vendor/xterm.js"),
    ),
    (
        "addon-fit.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/page/vendor/addon-fit.js"),
    ),
    (
        "xterm.css",
        "text/css; charset=utf-8",
        include_bytes!("../console/page/vendor/xterm.css"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/page/console.js"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_bytes!("../console/page/console.css"),
    ),
];

/// Routes of the page (no API key: the page authenticates on its socket).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console/{id}", get(page))
        .route("/console/assets/{file}", get(asset))
}

/// Whether `value` can stand in a CSP `frame-ancestors` directive (sources
/// separated by spaces; no other directive smuggled in).
pub fn valid_frame_ancestors(value: &str) -> bool {
    !value.trim().is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_graphic() && c != ';' && c != ',' || c == ' ')
}

/// The page's security policy: its own scripts and styles (xterm.js sets inline
/// styles), its own socket, and the ancestors allowed to frame it.
fn policy(frame_ancestors: &str) -> String {
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
         connect-src 'self'; img-src 'self' data:; font-src 'self'; base-uri 'none'; \
         form-action 'none'; frame-ancestors {frame_ancestors}"
    )
}

async fn page(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    if let Err(e) = super::console::instance(&state, &id) {
        return e.into_response();
    }
    let csp = HeaderValue::from_str(&policy(&state.frame_ancestors))
        .unwrap_or_else(|_| HeaderValue::from_static("frame-ancestors 'none'"));
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            // The URL holds a token: never cached, never sent on as a referrer.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::CONTENT_SECURITY_POLICY, csp),
        ],
        INDEX,
    )
        .into_response()
}

async fn asset(Path(file): Path<String>) -> Response {
    let Some((_, kind, body)) = ASSETS.iter().find(|(name, _, _)| *name == file) else {
        return ApiError::not_found("Not found").into_response();
    };
    (
        [
            (header::CONTENT_TYPE, *kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        *body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_ancestors_take_sources_and_nothing_else() {
        assert!(valid_frame_ancestors("*"));
        assert!(valid_frame_ancestors("'self' https://panel.example.com"));
        assert!(!valid_frame_ancestors(""));
        assert!(!valid_frame_ancestors("*; script-src *"));
        assert!(!valid_frame_ancestors("https://a\r\nx: y"));
        assert!(policy("'self'").ends_with("frame-ancestors 'self'"));
    }

    #[test]
    fn every_asset_the_page_loads_is_built_in() {
        for src in INDEX.split("/console/assets/").skip(1) {
            let name = src.split('"').next().unwrap_or_default();
            assert!(
                ASSETS.iter().any(|(n, _, _)| *n == name),
                "{name} is loaded by the page but not served"
            );
        }
    }
}
