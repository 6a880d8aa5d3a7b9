//! The watch loop that feeds an [`Informer`], and its health.
//!
//! kube-runtime's watcher reports every failure as a recoverable error and keeps
//! going if polled again; nothing but shutdown may end a watch. Like client-go's
//! reflector, a failed watch starts over with a fresh list (so whatever changed
//! meanwhile, deletions included, is found), after a backoff that depends on the
//! failure: an expired resourceVersion (410 Gone) relists at once, an unreachable
//! API server is retried quickly (it is back within seconds after a restart), and
//! an API server that answers with an error (overload, RBAC) is retried slowly.
//!
//! [`WatchHealth`] says since when a watch has been failing: `/readyz` fails while
//! a watch the API depends on has failed for longer than a threshold, because its
//! informer may be serving a stale view.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::Api;
use kube::runtime::watcher::{self, Event, InitialListStrategy, watcher};
use tracing::{info, warn};

use super::informer::{Informer, Watched};

/// How often a watch that keeps failing is logged again.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// Since when a watch has been failing, and how often; logs failures rate-limited.
#[derive(Debug)]
pub struct WatchHealth {
    kind: String,
    state: Mutex<Failing>,
}

#[derive(Debug, Default)]
struct Failing {
    since: Option<Instant>,
    errors: u64,
    logged: Option<Instant>,
}

impl WatchHealth {
    /// A healthy watch of `kind`.
    pub fn new(kind: String) -> Self {
        Self {
            kind,
            state: Mutex::default(),
        }
    }

    /// The kind watched.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Failing> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a failure (counted in `/metrics`, logged at most every 30 s).
    pub fn failed(&self, error: &watcher::Error) {
        crate::metrics::count_watch_error(&self.kind);
        let now = Instant::now();
        let mut s = self.lock();
        s.errors += 1;
        let since = *s.since.get_or_insert(now);
        if s.logged.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
            s.logged = Some(now);
            warn!(
                kind = %self.kind,
                %error,
                errors = s.errors,
                failing_for_s = now.duration_since(since).as_secs(),
                "watch failed; retrying"
            );
        }
    }

    /// Records a complete list after failures: the view is fresh again.
    pub fn recovered(&self) {
        let mut s = self.lock();
        if let Some(since) = s.since.take() {
            info!(kind = %self.kind, errors = s.errors, after_s = since.elapsed().as_secs_f32(), "watch recovered");
        }
        *s = Failing::default();
    }

    /// How long the watch has been failing, if it is.
    pub fn failing_for(&self) -> Option<Duration> {
        self.lock().since.map(|t| t.elapsed())
    }
}

/// How soon a failed watch starts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Now: the resourceVersion expired (410 Gone); only a fresh list helps.
    Relist,
    /// Soon: the API server did not answer (restarting, unreachable).
    Soon,
    /// Slowly: the API server answered with an error (overloaded, forbidden).
    Slowly,
}

/// How to retry after `error` (pure).
pub fn retry_for(error: &watcher::Error) -> Retry {
    let status = match error {
        watcher::Error::WatchError(s) => Some(s.code),
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => match e {
            kube::Error::Api(s) => Some(s.code),
            _ => None,
        },
        watcher::Error::NoResourceVersion => Some(500),
    };
    match status {
        Some(410) => Retry::Relist,
        Some(_) => Retry::Slowly,
        None => Retry::Soon,
    }
}

/// Exponential backoff with jitter, separate paces for [`Retry::Soon`] and
/// [`Retry::Slowly`]; reset by a successful list.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// The delay before the next attempt after a failure of this kind.
    pub fn next(&mut self, retry: Retry) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let (first, cap) = match retry {
            Retry::Relist => return Duration::ZERO,
            Retry::Soon => (Duration::from_millis(200), Duration::from_secs(2)),
            Retry::Slowly => (Duration::from_secs(1), Duration::from_secs(30)),
        };
        let delay = first
            .saturating_mul(1 << self.failures.saturating_sub(1).min(8))
            .min(cap);
        jitter(delay)
    }

    /// A list succeeded.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// `delay` give or take 20 %, so that replicas do not retry in step.
fn jitter(delay: Duration) -> Duration {
    use argon2::password_hash::rand_core::{OsRng, RngCore};
    let spread = OsRng.next_u32() % 401; // 0..=400 → -20 %..+20 %
    delay.mul_f64(0.8 + f64::from(spread) / 1000.0)
}

/// Whether an API server of this version streams its lists (pure): Kubernetes
/// 1.32 turned the WatchList feature on. A streaming list sends every object as a
/// watch event on one connection, from the watch cache, instead of pages of 500
/// each a request: Berth holds one object at a time rather than a page while it
/// fills its caches. (Ready after a restart about as soon either way: at 10,000
/// Instances with status, alternating six rounds each, each was faster in three;
/// both are bound by the API server's CPU, 0.8-1.9 s of it per full list here.)
pub fn streams_lists(version: &k8s_openapi::apimachinery::pkg::version::Info) -> bool {
    let minor: u32 = version
        .minor
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or(0);
    version.major == "1" && minor >= 32
}

/// Whether `error` is an API server refusing a streaming list (the WatchList
/// feature turned off): 422 Invalid for `sendInitialEvents`.
fn refuses_streaming(error: &watcher::Error) -> bool {
    let code = match error {
        watcher::Error::WatchError(s) => Some(s.code),
        watcher::Error::WatchStartFailed(kube::Error::Api(s)) => Some(s.code),
        _ => None,
    };
    code == Some(422)
}

/// Feeds `informer` from a watch of `api` until the process ends. Never returns.
pub async fn run<K: Watched>(informer: Informer<K>, api: Api<K>, mut config: watcher::Config) {
    let mut backoff = Backoff::default();
    loop {
        let mut stream = std::pin::pin!(watcher(api.clone(), config.clone()));
        let retry = loop {
            match stream.next().await {
                Some(Ok(event)) => {
                    let listed = matches!(event, Event::InitDone);
                    informer.apply(event);
                    if listed {
                        informer.health().recovered();
                        backoff.reset();
                    }
                }
                Some(Err(e)) => {
                    if config.initial_list_strategy == InitialListStrategy::StreamingList
                        && refuses_streaming(&e)
                    {
                        warn!(kind = %informer.health().kind(), error = %e, "the API server does not stream lists; listing in pages");
                        config.initial_list_strategy = InitialListStrategy::ListWatch;
                        break Retry::Relist;
                    }
                    informer.health().failed(&e);
                    break retry_for(&e);
                }
                // The watcher never ends; if it did, start over like after a failure.
                None => break Retry::Soon,
            }
        };
        tokio::time::sleep(backoff.next(retry)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(Status::failure("x", "y").with_code(code)))
    }

    #[test]
    fn expired_versions_relist_at_once_and_errors_set_the_pace() {
        assert_eq!(
            retry_for(&watcher::Error::WatchError(Box::new(
                Status::failure("too old", "Expired").with_code(410)
            ))),
            Retry::Relist
        );
        assert_eq!(
            retry_for(&watcher::Error::InitialListFailed(api_error(429))),
            Retry::Slowly
        );
        assert_eq!(
            retry_for(&watcher::Error::WatchStartFailed(api_error(403))),
            Retry::Slowly
        );
        let refused = kube::Error::Service("connection refused".into());
        assert_eq!(
            retry_for(&watcher::Error::WatchFailed(refused)),
            Retry::Soon
        );
    }

    #[test]
    fn lists_stream_from_kubernetes_1_32() {
        let v = |major: &str, minor: &str| k8s_openapi::apimachinery::pkg::version::Info {
            major: major.into(),
            minor: minor.into(),
            ..Default::default()
        };
        assert!(streams_lists(&v("1", "36")));
        assert!(streams_lists(&v("1", "32+")));
        assert!(!streams_lists(&v("1", "31")));
        assert!(!streams_lists(&v("1", "")));
        assert!(!streams_lists(&v("2", "0")));
        let refused = watcher::Error::WatchError(Box::new(
            Status::failure("sendInitialEvents is forbidden", "Invalid").with_code(422),
        ));
        assert!(refuses_streaming(&refused));
        assert!(!refuses_streaming(&watcher::Error::WatchStartFailed(
            api_error(403)
        )));
    }

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut b = Backoff::default();
        assert_eq!(b.next(Retry::Relist), Duration::ZERO);
        let mut last = Duration::ZERO;
        for _ in 0..12 {
            last = b.next(Retry::Soon);
            assert!(last <= Duration::from_millis(2400), "{last:?}");
        }
        assert!(
            last >= Duration::from_millis(1600),
            "capped at 2 s ± 20 %: {last:?}"
        );
        for _ in 0..12 {
            last = b.next(Retry::Slowly);
        }
        assert!(
            last >= Duration::from_secs(24) && last <= Duration::from_secs(36),
            "{last:?}"
        );
        b.reset();
        assert!(b.next(Retry::Soon) <= Duration::from_millis(240));
    }

    #[test]
    fn health_says_since_when_a_watch_fails() {
        let h = WatchHealth::new("Secret".into());
        assert!(h.failing_for().is_none());
        h.failed(&watcher::Error::NoResourceVersion);
        assert!(h.failing_for().is_some());
        h.recovered();
        assert!(h.failing_for().is_none());
    }
}
