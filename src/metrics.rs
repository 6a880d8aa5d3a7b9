//! Prometheus metrics, kept in process-wide atomics and rendered as text at
//! `/metrics`: the Kubernetes API requests Berth makes (by verb, so idle writes can
//! be counted), reconciles by controller and outcome, watch failures by kind, and
//! HTTP answers by class.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::{Method, Request};

/// Kinds of Kubernetes API request, as counted.
const VERBS: [&str; 7] = [
    "get", "list", "watch", "create", "update", "patch", "delete",
];
/// Resources Berth reads and writes, as counted (anything else is `other`).
const RESOURCES: [&str; 9] = [
    "instances",
    "nodes",
    "pods",
    "persistentvolumeclaims",
    "secrets",
    "configmaps",
    "events",
    "leases",
    "other",
];
/// Controllers, as counted.
pub const CONTROLLERS: [&str; 2] = ["instance", "node"];

/// Watch failures by kind (a handful of kinds: a small map).
static WATCH_ERRORS: std::sync::Mutex<std::collections::BTreeMap<String, u64>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Counts one failure of the watch of `kind`.
pub fn count_watch_error(kind: &str) {
    let mut m = WATCH_ERRORS.lock().unwrap_or_else(|e| e.into_inner());
    *m.entry(kind.to_owned()).or_insert(0) += 1;
}

struct Metrics {
    kube_requests: [[AtomicU64; RESOURCES.len()]; VERBS.len()],
    reconciles: [[AtomicU64; 2]; CONTROLLERS.len()],
    http_responses: [AtomicU64; 5],
}

static METRICS: Metrics = Metrics {
    kube_requests: [const { [const { AtomicU64::new(0) }; RESOURCES.len()] }; VERBS.len()],
    reconciles: [const { [const { AtomicU64::new(0) }; 2] }; CONTROLLERS.len()],
    http_responses: [const { AtomicU64::new(0) }; 5],
};

/// Classifies a request to the API server by verb.
pub fn verb(method: &Method, path_and_query: &str) -> &'static str {
    let watch = path_and_query.contains("watch=true") || path_and_query.contains("watch=1");
    match *method {
        Method::GET if watch => "watch",
        // A collection path ends in the plural; a named object has one more segment.
        // Without discovery we cannot tell for sure, so `list` is what has a query
        // with list options or none at all on a collection-looking path.
        Method::GET
            if path_and_query.contains("limit=") || path_and_query.contains("labelSelector=") =>
        {
            "list"
        }
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "get",
    }
}

/// The resource a request is for (pure): the segment after the namespace, or
/// after the version for cluster-scoped paths, as counted.
pub fn resource(path: &str) -> &'static str {
    let segments: Vec<&str> = path
        .split('?')
        .next()
        .unwrap_or_default()
        .split('/')
        .collect();
    let after_version = match segments.get(1) {
        Some(&"api") => 3,
        Some(&"apis") => 4,
        _ => return "other",
    };
    let plural = match segments.get(after_version) {
        Some(&"namespaces") if segments.len() > after_version + 2 => segments[after_version + 2],
        Some(p) => p,
        None => return "other",
    };
    RESOURCES
        .iter()
        .find(|r| **r == plural)
        .copied()
        .unwrap_or("other")
}

fn count_kube(verb: &str, resource: &str) {
    if let (Some(v), Some(r)) = (
        VERBS.iter().position(|x| *x == verb),
        RESOURCES.iter().position(|x| *x == resource),
    ) {
        METRICS.kube_requests[v][r].fetch_add(1, Ordering::Relaxed);
    }
}

/// Number of write requests (create, update, patch, delete) made so far.
pub fn kube_writes() -> u64 {
    ["create", "update", "patch", "delete"]
        .iter()
        .filter_map(|v| VERBS.iter().position(|x| x == v))
        .flat_map(|v| METRICS.kube_requests[v].iter())
        .map(|n| n.load(Ordering::Relaxed))
        .sum()
}

/// Counts one reconcile of `controller`.
pub fn count_reconcile(controller: &str, ok: bool) {
    if let Some(i) = CONTROLLERS.iter().position(|c| *c == controller) {
        METRICS.reconciles[i][usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts one HTTP answer by status class.
pub fn count_http(status: u16) {
    let class = usize::from(status / 100).clamp(1, 5) - 1;
    METRICS.http_responses[class].fetch_add(1, Ordering::Relaxed);
}

/// The metrics in Prometheus' text format.
pub fn render() -> String {
    let mut out = String::new();
    out.push_str("# HELP berth_kube_requests_total Requests Berth made to the Kubernetes API server, by verb and resource.\n");
    out.push_str("# TYPE berth_kube_requests_total counter\n");
    for (v, verb) in VERBS.iter().enumerate() {
        for (r, resource) in RESOURCES.iter().enumerate() {
            let n = METRICS.kube_requests[v][r].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "berth_kube_requests_total{{verb=\"{verb}\",resource=\"{resource}\"}} {n}"
            );
        }
    }
    out.push_str("# HELP berth_reconciles_total Reconciles by controller and result.\n");
    out.push_str("# TYPE berth_reconciles_total counter\n");
    for (i, c) in CONTROLLERS.iter().enumerate() {
        for (j, result) in ["ok", "error"].iter().enumerate() {
            let n = METRICS.reconciles[i][j].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "berth_reconciles_total{{controller=\"{c}\",result=\"{result}\"}} {n}"
            );
        }
    }
    out.push_str("# HELP berth_watch_errors_total Failures of the watches feeding the informers, by kind (each is retried).\n");
    out.push_str("# TYPE berth_watch_errors_total counter\n");
    for (kind, n) in WATCH_ERRORS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        let _ = writeln!(out, "berth_watch_errors_total{{kind=\"{kind}\"}} {n}");
    }
    out.push_str("# HELP berth_http_responses_total HTTP answers by status class.\n");
    out.push_str("# TYPE berth_http_responses_total counter\n");
    for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
        let n = METRICS.http_responses[i].load(Ordering::Relaxed);
        let _ = writeln!(out, "berth_http_responses_total{{class=\"{class}\"}} {n}");
    }
    out
}

/// A tower layer that counts every request the Kubernetes client sends.
#[derive(Clone, Copy, Debug, Default)]
pub struct CountKubeRequests;

impl<S> tower::Layer<S> for CountKubeRequests {
    type Service = Counted<S>;
    fn layer(&self, inner: S) -> Counted<S> {
        Counted(inner)
    }
}

/// The service [`CountKubeRequests`] wraps around the client's stack.
#[derive(Clone, Debug)]
pub struct Counted<S>(S);

impl<S, B> tower::Service<Request<B>> for Counted<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or_default();
        count_kube(verb(req.method(), pq), resource(pq));
        self.0.call(req)
    }
}

/// A Kubernetes client counting its requests; behind `gate` (the controllers'
/// client under leader election) its writes need the gate open.
pub fn client(
    config: kube::Config,
    gate: Option<crate::controller::leader::Gate>,
) -> Result<kube::Client, kube::Error> {
    let counted = kube::client::ClientBuilder::try_from(config)?.with_layer(&CountKubeRequests);
    Ok(match gate {
        // Outermost, so refused writes are never counted as made.
        Some(gate) => counted.with_layer(&gate).build(),
        None => counted.build(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_classified() {
        assert_eq!(
            verb(&Method::GET, "/api/v1/pods?watch=true&resourceVersion=1"),
            "watch"
        );
        assert_eq!(
            verb(&Method::GET, "/api/v1/namespaces/a/pods?limit=500"),
            "list"
        );
        assert_eq!(verb(&Method::GET, "/api/v1/namespaces/a/pods/x"), "get");
        assert_eq!(verb(&Method::PATCH, "/x"), "patch");
        assert_eq!(verb(&Method::POST, "/x"), "create");
    }

    #[test]
    fn writes_are_counted_and_rendered() {
        let before = kube_writes();
        count_kube("patch", "pods");
        count_kube("get", "pods");
        assert_eq!(kube_writes(), before + 1);
        assert!(render().contains("berth_kube_requests_total{verb=\"patch\",resource=\"pods\"}"));
    }

    #[test]
    fn resources_are_read_from_the_path() {
        assert_eq!(resource("/api/v1/namespaces/a/pods/x"), "pods");
        assert_eq!(resource("/api/v1/namespaces/a/pods?watch=true"), "pods");
        assert_eq!(resource("/api/v1/nodes?limit=500"), "nodes");
        assert_eq!(
            resource("/apis/berth.dev/v1alpha1/namespaces/a/instances/i/status"),
            "instances"
        );
        assert_eq!(
            resource("/apis/coordination.k8s.io/v1/namespaces/a/leases/berth-controller"),
            "leases"
        );
        assert_eq!(
            resource("/apis/events.k8s.io/v1/namespaces/a/events"),
            "events"
        );
        assert_eq!(resource("/version"), "other");
    }
}
