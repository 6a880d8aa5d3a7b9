//! Prometheus metrics at `/metrics`, kept with the `prometheus-client` crate (as
//! kube-rs' controller-rs keeps them) in one process-wide registry:
//!
//! | series | labels |
//! | --- | --- |
//! | `berth_kube_requests_total`, `berth_kube_request_duration_seconds` | `verb`, `resource` (watches are counted, not timed: they last until closed) |
//! | `berth_reconciles_total` | `controller`, `result` |
//! | `berth_reconcile_duration_seconds` | `controller` |
//! | `berth_watch_errors_total` | `kind` |
//! | `berth_http_responses_total` | `class` |
//! | `berth_http_request_duration_seconds` | `route` (the route's pattern, `unmatched` for none), `class` |
//! | `berth_password_checks_total` | — (argon2id checks of login passwords, an unknown user's decoy check included) |

pub mod kube;

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use self::kube::{CountKubeRequests, client};

/// Controllers, as labelled.
pub const CONTROLLERS: [&str; 2] = ["instance", "node"];

/// Histogram buckets in seconds, from half a millisecond to ten seconds: a read
/// from Berth's caches takes well under a millisecond, an API-server write a few,
/// a reconcile tens, and anything past seconds is an outage.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Two labels with fixed values.
type Pair = [(&'static str, &'static str); 2];
/// One label with a fixed value.
type One = [(&'static str, &'static str); 1];
/// Two labels, the first's value made at run time.
type Named = [(&'static str, String); 2];
/// A histogram family with Berth's buckets.
type Timings<L> = Family<L, Histogram, fn() -> Histogram>;

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// Every metric, and the registry that renders them.
struct Metrics {
    registry: Registry,
    kube_requests: Family<Pair, Counter>,
    kube_durations: Timings<Pair>,
    reconciles: Family<Pair, Counter>,
    reconcile_durations: Timings<One>,
    watch_errors: Family<[(&'static str, String); 1], Counter>,
    http_responses: Family<One, Counter>,
    http_durations: Timings<Named>,
    password_checks: Counter,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::default();
    let m = Metrics {
        registry: Registry::default(),
        kube_requests: Family::default(),
        kube_durations: Family::new_with_constructor(histogram),
        reconciles: Family::default(),
        reconcile_durations: Family::new_with_constructor(histogram),
        watch_errors: Family::default(),
        http_responses: Family::default(),
        http_durations: Family::new_with_constructor(histogram),
        password_checks: Counter::default(),
    };
    // Counters are registered without `_total`: the encoder adds it.
    registry.register(
        "berth_kube_requests",
        "Requests Berth made to the Kubernetes API server, by verb and resource",
        m.kube_requests.clone(),
    );
    registry.register(
        "berth_kube_request_duration_seconds",
        "Time to the API server's answer (its headers), by verb and resource; watches are not timed",
        m.kube_durations.clone(),
    );
    registry.register(
        "berth_reconciles",
        "Reconciles by controller and result",
        m.reconciles.clone(),
    );
    registry.register(
        "berth_reconcile_duration_seconds",
        "Time one reconcile took, by controller",
        m.reconcile_durations.clone(),
    );
    registry.register(
        "berth_watch_errors",
        "Failures of the watches feeding the informers, by kind (each is retried)",
        m.watch_errors.clone(),
    );
    registry.register(
        "berth_http_responses",
        "HTTP answers by status class",
        m.http_responses.clone(),
    );
    registry.register(
        "berth_http_request_duration_seconds",
        "Time to an HTTP answer's headers, by route and status class",
        m.http_durations.clone(),
    );
    registry.register(
        "berth_password_checks",
        "Argon2id checks of login passwords (an unknown user's decoy check included): a login attempt's cost",
        m.password_checks.clone(),
    );
    // Series known in advance start at zero, so "none yet" reads as 0, not as absent.
    for controller in CONTROLLERS {
        for result in ["ok", "error"] {
            let _ = m
                .reconciles
                .get_or_create(&[("controller", controller), ("result", result)]);
        }
    }
    Metrics { registry, ..m }
});

/// Counts one request to the API server, as it is sent.
pub fn count_kube(verb: &'static str, resource: &'static str) {
    METRICS
        .kube_requests
        .get_or_create(&[("verb", verb), ("resource", resource)])
        .inc();
}

/// Times one answered request to the API server.
pub fn time_kube(verb: &'static str, resource: &'static str, took: Duration) {
    METRICS
        .kube_durations
        .get_or_create(&[("verb", verb), ("resource", resource)])
        .observe(took.as_secs_f64());
}

/// Counts one failure of the watch of `kind`.
pub fn count_watch_error(kind: &str) {
    METRICS
        .watch_errors
        .get_or_create(&[("kind", kind.to_owned())])
        .inc();
}

/// Counts one reconcile of `controller` and how long it took.
pub fn observe_reconcile(controller: &'static str, ok: bool, took: Duration) {
    let result = if ok { "ok" } else { "error" };
    METRICS
        .reconciles
        .get_or_create(&[("controller", controller), ("result", result)])
        .inc();
    METRICS
        .reconcile_durations
        .get_or_create(&[("controller", controller)])
        .observe(took.as_secs_f64());
}

/// Counts one argon2id check of a login password.
pub fn count_password_check() {
    METRICS.password_checks.inc();
}

/// The status class of `status`, as labelled (pure).
pub fn class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

/// Counts one HTTP answer of `route` and how long it took to its headers.
pub fn observe_http(route: &str, status: u16, took: Duration) {
    let class = class(status);
    METRICS
        .http_responses
        .get_or_create(&[("class", class)])
        .inc();
    METRICS
        .http_durations
        .get_or_create(&[("route", route.to_owned()), ("class", class.to_owned())])
        .observe(took.as_secs_f64());
}

/// The metrics in the OpenMetrics text format (which Prometheus reads).
pub fn render() -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &METRICS.registry);
    out
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_timed_and_rendered() {
        count_kube("patch", "pods");
        time_kube("patch", "pods", Duration::from_millis(3));
        count_kube("watch", "pods");
        observe_reconcile("instance", true, Duration::from_millis(12));
        observe_http("/api/instances", 200, Duration::from_micros(700));
        count_watch_error("Pod");
        count_password_check();
        let text = render();
        for series in [
            "berth_kube_requests_total{verb=\"patch\",resource=\"pods\"} ",
            "berth_kube_requests_total{verb=\"watch\",resource=\"pods\"} ",
            // 3 ms falls in the 5 ms bucket, not the 2.5 ms one.
            "berth_kube_request_duration_seconds_bucket{le=\"0.005\",verb=\"patch\",resource=\"pods\"} ",
            "berth_reconciles_total{controller=\"instance\",result=\"ok\"} ",
            "berth_reconcile_duration_seconds_count{controller=\"instance\"} ",
            "berth_http_responses_total{class=\"2xx\"} ",
            "berth_http_request_duration_seconds_bucket{le=\"0.001\",route=\"/api/instances\",class=\"2xx\"} ",
            "berth_watch_errors_total{kind=\"Pod\"} ",
            "berth_password_checks_total ",
        ] {
            let n = text
                .lines()
                .find_map(|l| l.strip_prefix(series))
                .unwrap_or_else(|| panic!("no {series} in\n{text}"));
            assert!(n.parse::<f64>().expect("a number") >= 1.0, "{series}{n}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn status_classes() {
        assert_eq!(class(101), "1xx");
        assert_eq!(class(201), "2xx");
        assert_eq!(class(404), "4xx");
        assert_eq!(class(503), "5xx");
        assert_eq!(class(0), "5xx");
    }
}
