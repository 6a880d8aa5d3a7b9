//! Leader election with a coordination.k8s.io Lease, so that of several controller
//! replicas exactly one reconciles. The holder renews every `renew` interval; a
//! candidate takes the Lease only once it has expired, and the take-over is a
//! replace carrying the resourceVersion it read, so two candidates cannot both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use tracing::{info, warn};

/// Name of the Lease the controllers elect their leader with.
pub const LEASE_NAME: &str = "berth-controller";

/// How a candidate takes part.
#[derive(Clone, Debug)]
pub struct Elector {
    api: Api<Lease>,
    /// This process's identity in the Lease.
    pub identity: String,
    /// How long a Lease lasts without renewal.
    pub duration: Duration,
    /// How often the holder renews (well under `duration`).
    pub renew: Duration,
}

/// Whether a Lease held by someone else may be taken now (pure).
pub fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(holder) = spec.holder_identity.as_deref() else {
        return true;
    };
    if holder.is_empty() {
        return true;
    }
    let Some(renewed) = spec.renew_time.as_ref() else {
        return true;
    };
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    renewed
        .0
        .checked_add(duration)
        .is_ok_and(|until| until < now)
}

impl Elector {
    /// A candidate for the Lease in `api`'s namespace.
    pub fn new(api: Api<Lease>, identity: String, duration: Duration) -> Self {
        Self {
            api,
            identity,
            duration,
            renew: duration / 3,
        }
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.duration.as_secs())
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
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(LEASE_NAME).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.into()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        if !ours && !expired(&spec, now) {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours {
            spec.acquire_time.clone()
        } else {
            None
        };
        lease.spec = Some(self.spec(now, acquired, transitions));
        // The resourceVersion read above makes this a compare-and-swap.
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this candidate holds the Lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire().await {
                Ok(true) => {
                    info!(identity = %self.identity, "became the controller leader");
                    return;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election: failed to read or take the Lease"),
            }
            tokio::time::sleep(self.renew).await;
        }
    }

    /// Renews the Lease until renewal fails for longer than the Lease lasts; returns
    /// then, when another replica may already have taken over.
    pub async fn hold(&self) {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.renew).await;
            match self.try_acquire().await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!("leader election: the Lease was taken by another replica");
                    return;
                }
                Err(e) => warn!(error = %e, "leader election: failed to renew the Lease"),
            }
            if last_renewed.elapsed() >= self.duration {
                return;
            }
        }
    }

    /// Gives the Lease up (on shutdown) so another replica takes over at once.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(LEASE_NAME).await {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() == Some(self.identity.as_str()) {
                spec.holder_identity = None;
                spec.renew_time = None;
                if let Err(e) = self
                    .api
                    .replace(LEASE_NAME, &PostParams::default(), &lease)
                    .await
                {
                    warn!(error = %e, "leader election: failed to release the Lease");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed_secs_ago: i64) -> LeaseSpec {
        let now = Timestamp::from_second(2_000_000_000).expect("ts");
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(now - SignedDuration::from_secs(renewed_secs_ago))),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_lease_expires_after_its_duration_without_renewal() {
        let now = Timestamp::from_second(2_000_000_000).expect("ts");
        assert!(!expired(&spec(Some("a"), 5), now));
        assert!(expired(&spec(Some("a"), 16), now));
        assert!(expired(&spec(None, 1), now));
        assert!(expired(&spec(Some(""), 1), now));
    }
}
