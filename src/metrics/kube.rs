//! What Berth's Kubernetes client asks of the API server, as counted and timed:
//! each request classified by verb and resource (pure functions) by a tower layer
//! around the client's stack.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Method, Request};

/// Resources Berth reads and writes, as labelled (anything else is `other`).
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

/// A tower layer that counts and times every request the Kubernetes client sends.
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
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    // Boxed: one allocation per API request, beside the request's own dozens.
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or_default();
        let (verb, resource) = (verb(req.method(), pq), resource(pq));
        super::count_kube(verb, resource);
        let started = Instant::now();
        let answer = self.0.call(req);
        Box::pin(async move {
            let answer = answer.await;
            // A watch answers at once and streams until closed: counted, not timed.
            if verb != "watch" {
                super::time_kube(verb, resource, started.elapsed());
            }
            answer
        })
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
