//! The API key check, as an extractor: every `/api` route sits behind it, and no
//! handler reads the header itself. A client that keeps presenting bad keys is
//! slowed down: after [`MAX_FAILURES`] wrong keys within [`FAILURE_WINDOW`] from one
//! IP address, every request from it gets 429 until the window passes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
use crate::store::apikeys;

/// Header carrying the API key.
pub const API_KEY_HEADER: &str = "x-api-key";
/// Failed attempts allowed per client address within [`FAILURE_WINDOW`].
pub const MAX_FAILURES: u32 = 10;
/// The window over which failures are counted.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most; older entries are dropped past it.
const MAX_TRACKED: usize = 10_000;

/// Who called: the SHA-256 of the API key used (never the key itself).
#[derive(Clone, Debug)]
pub struct Caller {
    /// SHA-256 (hex) of the API key.
    pub key_digest: String,
}

/// Failed API key attempts per client address.
#[derive(Clone, Default)]
pub struct FailureLimiter {
    failures: Arc<Mutex<HashMap<IpAddr, (Instant, u32)>>>,
}

impl FailureLimiter {
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> bool {
        let map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&ip).is_some_and(|(since, n)| {
            now.duration_since(*since) < FAILURE_WINDOW && *n >= MAX_FAILURES
        })
    }

    pub fn fail(&self, ip: IpAddr, now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_TRACKED {
            map.retain(|_, (since, _)| now.duration_since(*since) < FAILURE_WINDOW);
        }
        let entry = map.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= FAILURE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

/// An attempt from one client address, to count if it fails.
pub struct Attempt<'a> {
    limiter: &'a FailureLimiter,
    ip: Option<IpAddr>,
    at: Instant,
}

impl Attempt<'_> {
    /// Counts the attempt as failed.
    pub fn failed(&self) {
        if let Some(ip) = self.ip {
            self.limiter.fail(ip, self.at);
        }
    }
}

impl FailureLimiter {
    /// Starts an attempt from `ip`; a 429 saying `why` while the address is blocked.
    pub fn attempt(&self, ip: Option<IpAddr>, why: &'static str) -> Result<Attempt<'_>, ApiError> {
        let at = Instant::now();
        if ip.is_some_and(|ip| self.blocked(ip, at)) {
            return Err(ApiError::too_many_requests(why));
        }
        Ok(Attempt {
            limiter: self,
            ip,
            at,
        })
    }
}

/// The client's address, when the server recorded it.
pub fn peer_ip(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let attempt = state.failures.attempt(
            peer_ip(parts),
            "Too many requests with an invalid API key; try again later",
        )?;
        let key = parts
            .headers
            .get(API_KEY_HEADER)
            .map(|v| v.to_str().unwrap_or_default());
        let result = match key {
            // Not a guess: nothing to slow down.
            None => return Err(ApiError::unauthorized("API key is required")),
            // Answers from informers that have not listed everything yet would be
            // wrong (a revoked key let in, a node "not found" that exists): until
            // synced, keyed requests are asked to retry.
            Some(_) if !state.store.is_synced() => {
                return Err(ApiError::unavailable(
                    "Berth is starting; try again in a moment",
                ));
            }
            Some(k) if !k.is_empty() && state.store.keys.verify(k) => Ok(Caller {
                key_digest: apikeys::digest(k),
            }),
            Some(_) => Err(ApiError::unauthorized("Invalid API key")),
        };
        if result.is_err() {
            attempt.failed();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_blocked_after_too_many_failures_within_the_window() {
        let limiter = FailureLimiter::default();
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        let t0 = Instant::now();
        for _ in 0..MAX_FAILURES - 1 {
            limiter.fail(ip, t0);
        }
        assert!(!limiter.blocked(ip, t0));
        limiter.fail(ip, t0);
        assert!(limiter.blocked(ip, t0));
        assert!(!limiter.blocked(other, t0), "only the failing address");
        assert!(
            !limiter.blocked(ip, t0 + FAILURE_WINDOW),
            "the window passes"
        );
    }
}
