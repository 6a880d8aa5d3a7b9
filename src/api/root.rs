//! `GET /` and `GET /docs`, without an API key: what this service is and where its
//! API is described. Skyport clients probe their configured base URL at start-up
//! and give up unless it answers 200.

use axum::response::Html;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::AppState;

/// Routes of the service's front door.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/docs", get(docs))
}

async fn index() -> Json<Value> {
    Json(json!({
        "service": "berth",
        "description": "Game-server instances on Kubernetes behind a Skyport-compatible REST API",
        "version": env!("CARGO_PKG_VERSION"),
        "api": "/api",
        "authentication": "x-api-key header",
        "links": {
            "openapi": "/api/openapi.json",
            "docs": "/docs",
            "health": "/healthz",
            "readiness": "/readyz",
            "metrics": "/metrics"
        }
    }))
}

/// Escapes text for HTML.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Every route of the OpenAPI document with its summary, as a page.
async fn docs() -> Html<String> {
    let doc = super::openapi::document();
    let mut rows = String::new();
    for (path, item) in &doc.paths.paths {
        let ops = [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PATCH", &item.patch),
            ("DELETE", &item.delete),
        ];
        for (method, op) in ops {
            if let Some(op) = op {
                let what = op
                    .summary
                    .as_deref()
                    .or(op.description.as_deref())
                    .unwrap_or_default();
                rows.push_str(&format!(
                    "<tr><td><code>{method}</code></td><td><code>{}</code></td><td>{}</td></tr>\n",
                    escape(path),
                    escape(what)
                ));
            }
        }
    }
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Berth API</title></head><body>\
         <h1>Berth API</h1><p>{}. Every route under <code>/api</code> takes the API key in the \
         <code>x-api-key</code> header. The full description: <a href=\"/api/openapi.json\">/api/openapi.json</a> \
         (OpenAPI 3.1; it needs the key too).</p><table>\n{rows}</table></body></html>",
        escape(doc.info.description.as_deref().unwrap_or("Berth"))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">&</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
    }
}
