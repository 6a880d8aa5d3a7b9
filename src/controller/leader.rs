//! Leader election with a coordination.k8s.io Lease, with client-go's semantics,
//! so that of several controller replicas at most one reconciles.
//!
//! - Timing: lease duration > renew deadline > retry period. The leader tries to
//!   renew every retry period, each try bounded by what is left of the renew
//!   deadline; a leader that has not renewed within the renew deadline stops
//!   leading, before its Lease can expire for anyone else.
//! - A candidate judges expiry by its own clock: the Lease is free once it has
//!   not *changed* for a lease duration since this candidate last saw it change.
//!   It never compares the holder's `renewTime` with its own clock, so clock skew
//!   between machines cannot make two leaders.
//! - Taking or renewing is a replace carrying the resourceVersion read: a
//!   compare-and-swap, so two candidates cannot both win.
//! - **Fencing**: the controllers write through a client whose [`Gate`] refuses
//!   every write once the renew deadline has passed since the last renewal was
//!   sent. A leader frozen (SIGSTOP, a long GC pause, a suspended VM) and then
//!   thawed cannot write before it notices it lost: the gate judges by the
//!   monotonic clock, which keeps running while the process is frozen.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, Request};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::time::Instant;
use tracing::{info, warn};

/// Name of the Lease the controllers elect their leader with.
pub const LEASE_NAME: &str = "berth-controller";

/// How long a Lease lasts, how long a leader keeps trying to renew, how often it tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a Lease lasts without renewal, as candidates judge it.
    pub lease: Duration,
    /// How long a leader keeps trying to renew before it stops leading.
    pub renew_deadline: Duration,
    /// How often candidates try to take the Lease and the leader renews it.
    pub retry: Duration,
}

impl Default for Timing {
    /// client-go's defaults: 15 s, 10 s, 2 s.
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

impl Timing {
    /// Checked timing: lease > renew deadline > 1.2 × retry period (client-go's rule;
    /// jittered retries must fit in the deadline).
    pub fn new(lease: Duration, renew_deadline: Duration, retry: Duration) -> Result<Self, String> {
        if lease <= renew_deadline {
            return Err(format!(
                "the lease duration ({lease:?}) must be longer than the renew deadline ({renew_deadline:?})"
            ));
        }
        if renew_deadline <= retry.mul_f64(1.2) {
            return Err(format!(
                "the renew deadline ({renew_deadline:?}) must be longer than 1.2 × the retry period ({retry:?})"
            ));
        }
        if retry.is_zero() {
            return Err("the retry period must be positive".into());
        }
        Ok(Self {
            lease,
            renew_deadline,
            retry,
        })
    }
}

/// Until when this process may write as the leader (the fencing clock).
#[derive(Clone, Debug)]
pub struct Gate(Arc<Mutex<Option<Instant>>>);

impl Gate {
    /// A closed gate: no writes until [`Gate::open_until`].
    pub fn closed() -> Self {
        Self(Arc::new(Mutex::new(None)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Allows writes until `until`.
    pub fn open_until(&self, until: Instant) {
        *self.lock() = Some(until);
    }

    /// Refuses writes from now on.
    pub fn close(&self) {
        *self.lock() = None;
    }

    /// Whether writes are allowed now.
    pub fn is_open(&self) -> bool {
        self.is_open_at(Instant::now())
    }

    /// Whether writes are allowed at `now`.
    pub fn is_open_at(&self, now: Instant) -> bool {
        self.lock().is_some_and(|until| now < until)
    }
}

/// Refused because this process does not hold the Lease (within its renew deadline).
#[derive(Debug, thiserror::Error)]
#[error(
    "write refused: this process is not the controller leader (or its Lease is no longer renewed)"
)]
pub struct NotLeading;

impl<S> tower::Layer<S> for Gate {
    type Service = Gated<S>;
    fn layer(&self, inner: S) -> Gated<S> {
        Gated {
            inner,
            gate: self.clone(),
        }
    }
}

/// The client stack behind a [`Gate`]: reads pass, writes need the gate open.
#[derive(Clone, Debug)]
pub struct Gated<S> {
    inner: S,
    gate: Gate,
}

impl<S, B> tower::Service<Request<B>> for Gated<S>
where
    S: tower::Service<Request<B>, Error = tower::BoxError>,
{
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future = futures::future::Either<
        futures::future::Ready<Result<S::Response, tower::BoxError>>,
        S::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let writes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
        if writes && !self.gate.is_open() {
            return futures::future::Either::Left(futures::future::ready(Err(NotLeading.into())));
        }
        futures::future::Either::Right(self.inner.call(req))
    }
}

/// What of a Lease candidates compare to see it change.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    acquired: Option<String>,
    renewed: Option<String>,
    duration: Option<i32>,
    transitions: Option<i32>,
}

impl Record {
    fn of(spec: &LeaseSpec) -> Self {
        Self {
            holder: spec.holder_identity.clone().filter(|h| !h.is_empty()),
            acquired: spec.acquire_time.as_ref().map(|t| t.0.to_string()),
            renewed: spec.renew_time.as_ref().map(|t| t.0.to_string()),
            duration: spec.lease_duration_seconds,
            transitions: spec.lease_transitions,
        }
    }
}

/// A record as this candidate last saw it change, and when (by its own clock).
#[derive(Clone, Debug)]
struct Observed {
    record: Record,
    at: Instant,
}

/// Whether a Lease held by someone else may be taken at `now` (pure): it has no
/// holder, or it has not changed for its duration since it was last seen changing.
fn is_free(observed: &Observed, now: Instant, default_lease: Duration) -> bool {
    let Some(_) = &observed.record.holder else {
        return true;
    };
    let lease = observed
        .record
        .duration
        .and_then(|s| u64::try_from(s).ok())
        .map_or(default_lease, Duration::from_secs);
    now.duration_since(observed.at) > lease
}

/// How a candidate takes part.
#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    /// This process's identity in the Lease.
    pub identity: String,
    /// Its timing.
    pub timing: Timing,
    /// The fence of the controllers' writes.
    pub gate: Gate,
    observed: Mutex<Option<Observed>>,
}

impl Elector {
    /// A candidate for the Lease in `api`'s namespace.
    pub fn new(api: Api<Lease>, identity: String, timing: Timing) -> Self {
        Self {
            api,
            identity,
            timing,
            gate: Gate::closed(),
            observed: Mutex::new(None),
        }
    }

    fn observe(&self, record: Record, now: Instant) -> Observed {
        let mut o = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        match o.as_ref() {
            Some(seen) if seen.record == record => seen.clone(),
            _ => {
                let fresh = Observed { record, at: now };
                *o = Some(fresh.clone());
                fresh
            }
        }
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.timing.lease.as_secs())
                    .unwrap_or(i32::MAX)
                    .max(1),
            ),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One attempt to take or renew the Lease; true when we hold it afterwards.
    /// On success the gate opens until the renew deadline, counted from when the
    /// attempt began (the Lease was renewed no earlier than that).
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let began = Instant::now();
        let wall = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(LEASE_NAME).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.into()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(wall, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(made) => Ok(self.won(&made, began)),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let seen = self.observe(Record::of(&spec), Instant::now());
        let ours = seen.record.holder.as_deref() == Some(self.identity.as_str());
        if !ours && !is_free(&seen, Instant::now(), self.timing.lease) {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours {
            spec.acquire_time.clone()
        } else {
            None
        };
        lease.spec = Some(self.spec(wall, acquired, transitions));
        // The resourceVersion read above makes this a compare-and-swap.
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(made) => Ok(self.won(&made, began)),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn won(&self, lease: &Lease, began: Instant) -> bool {
        if let Some(spec) = &lease.spec {
            self.observe(Record::of(spec), Instant::now());
        }
        self.gate.open_until(began + self.timing.renew_deadline);
        true
    }

    /// Waits until this candidate holds the Lease.
    pub async fn acquire(&self) {
        loop {
            let bound = self.timing.renew_deadline;
            match tokio::time::timeout(bound, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => {
                    info!(identity = %self.identity, "became the controller leader");
                    return;
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    warn!(error = %e, "leader election: failed to read or take the Lease")
                }
                Err(_) => warn!("leader election: reading or taking the Lease timed out"),
            }
            tokio::time::sleep(jittered(self.timing.retry)).await;
        }
    }

    /// Renews the Lease every retry period while it can; returns when this process
    /// stopped leading: another candidate holds the Lease, or no renewal succeeded
    /// within the renew deadline. The gate is closed by then.
    pub async fn hold(&self) {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.timing.retry).await;
            let deadline = renewed + self.timing.renew_deadline;
            let now = Instant::now();
            if now >= deadline {
                warn!(identity = %self.identity, "leader election: no renewal within the renew deadline; stopping");
                break;
            }
            match tokio::time::timeout(deadline - now, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => renewed = now,
                Ok(Ok(false)) => {
                    warn!(identity = %self.identity, "leader election: the Lease was taken by another candidate");
                    break;
                }
                Ok(Err(e)) => warn!(error = %e, "leader election: failed to renew the Lease"),
                Err(_) => warn!("leader election: renewing the Lease timed out"),
            }
        }
        self.gate.close();
    }

    /// Gives the Lease up (on shutdown) so another candidate takes over at once.
    pub async fn release(&self) {
        self.gate.close();
        let Ok(Some(mut lease)) = self.api.get_opt(LEASE_NAME).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        if let Err(e) = self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            warn!(error = %e, "leader election: failed to release the Lease");
        }
    }
}

/// `d` plus up to 20 %, so candidates do not try in step.
fn jittered(d: Duration) -> Duration {
    use argon2::password_hash::rand_core::{OsRng, RngCore};
    d.mul_f64(1.0 + f64::from(OsRng.next_u32() % 201) / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: Option<&str>, renewed: &str) -> Record {
        Record {
            holder: holder.map(str::to_owned),
            acquired: None,
            renewed: Some(renewed.to_owned()),
            duration: Some(15),
            transitions: Some(0),
        }
    }

    #[test]
    fn timing_follows_client_go_rules() {
        let s = Duration::from_secs;
        assert!(Timing::new(s(15), s(10), s(2)).is_ok());
        assert!(Timing::new(s(10), s(10), s(2)).is_err(), "lease > deadline");
        assert!(
            Timing::new(s(15), s(2), s(2)).is_err(),
            "deadline > 1.2 × retry"
        );
        assert_eq!(
            Timing::default(),
            Timing::new(s(15), s(10), s(2)).expect("valid")
        );
    }

    #[test]
    fn expiry_is_judged_by_the_local_clock_from_the_last_change_seen() {
        let t0 = Instant::now();
        let seen = Observed {
            record: record(Some("a"), "2020-01-01T00:00:00Z"),
            at: t0,
        };
        // The holder's renewTime says 2020: a skewed clock must not matter.
        assert!(!is_free(
            &seen,
            t0 + Duration::from_secs(5),
            Duration::from_secs(15)
        ));
        assert!(is_free(
            &seen,
            t0 + Duration::from_secs(16),
            Duration::from_secs(15)
        ));
        let released = Observed {
            record: record(None, "2020-01-01T00:00:00Z"),
            at: t0,
        };
        assert!(
            is_free(&released, t0, Duration::from_secs(15)),
            "no holder: free at once"
        );
    }

    #[test]
    fn the_gate_closes_at_its_deadline() {
        let gate = Gate::closed();
        let t0 = Instant::now();
        assert!(!gate.is_open_at(t0));
        gate.open_until(t0 + Duration::from_secs(10));
        assert!(gate.is_open_at(t0 + Duration::from_secs(9)));
        assert!(
            !gate.is_open_at(t0 + Duration::from_secs(11)),
            "no renewal within the deadline: writes are refused"
        );
        gate.close();
        assert!(!gate.is_open_at(t0));
    }
}
