//! Claims: uniqueness decided by the API server. A claim is a ConfigMap whose name
//! is derived from the unique value (a username, an email, a host port on a node);
//! creating it either succeeds or fails with AlreadyExists, atomically, however
//! many Berth replicas race. Each claim has an owner reference to what holds it
//! (a user Secret, an Instance), so the garbage collector frees it when the holder
//! goes, and a claim whose holder is gone may be taken over.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use sha2::{Digest, Sha256};

use super::informer::Informer;
use crate::names::{LABEL_CLAIM, LABEL_MANAGED_BY, MANAGED_BY};

/// Data key holding the id of the claim's holder (a userId or an instance id).
pub const HOLDER_KEY: &str = "holder";

/// What a claim makes unique.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimKind {
    /// A username, compared case-insensitively.
    Username,
    /// An email address, compared case-insensitively.
    Email,
    /// A host port on one Berth Node.
    HostPort,
}

impl ClaimKind {
    /// Whether claims of this kind are watched and cached. Username and email
    /// claims are read on every user lookup; host-port claims are only ever
    /// created (the API server decides) and freed by the garbage collector, so
    /// caching one per instance port would cost memory for nothing.
    pub fn is_cached(self) -> bool {
        !matches!(self, Self::HostPort)
    }

    /// The label selector of the claims that are cached.
    pub fn cached_selector() -> String {
        let kinds: Vec<&str> = [Self::Username, Self::Email, Self::HostPort]
            .into_iter()
            .filter(|k| k.is_cached())
            .map(Self::as_str)
            .collect();
        format!("{LABEL_CLAIM} in ({})", kinds.join(","))
    }

    /// The label value and name part of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Username => "username",
            Self::Email => "email",
            Self::HostPort => "hostport",
        }
    }
}

/// The claim's object name for `key` (already normalised by the caller). Hashed:
/// the key may hold any character, and the name must be a DNS subdomain.
pub fn claim_name(kind: ClaimKind, key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().take(20).map(|b| format!("{b:02x}")).collect();
    format!("berth-claim-{}-{hex}", kind.as_str())
}

/// The claim key of a host port on a node.
pub fn host_port_key(node: &str, port: i32) -> String {
    format!("{node}/{port}")
}

/// Why a claim was not made.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Someone else holds it.
    #[error("already claimed by {holder}")]
    Taken {
        /// Id of the current holder.
        holder: String,
    },
    /// The API server failed.
    #[error("failed to create claim: {0}")]
    Api(#[from] kube::Error),
}

/// Creates and inspects claims in one namespace.
#[derive(Clone)]
pub struct Claims {
    api: Api<ConfigMap>,
    cache: Informer<ConfigMap>,
}

impl Claims {
    /// Claims in `api`'s namespace, read through `cache`.
    pub fn new(api: Api<ConfigMap>, cache: Informer<ConfigMap>) -> Self {
        Self { api, cache }
    }

    /// The version of the claims cache (changes with every claim).
    pub fn version(&self) -> u64 {
        self.cache.version()
    }

    /// The holder of a claim, as far as the cache knows.
    pub fn holder(&self, kind: ClaimKind, key: &str) -> Option<String> {
        let cm = self.cache.get(&claim_name(kind, key))?;
        cm.data.as_ref()?.get(HOLDER_KEY).cloned()
    }

    /// The uid of the object the cached claim belongs to.
    pub fn owner_uid(&self, kind: ClaimKind, key: &str) -> Option<String> {
        let cm = self.cache.get(&claim_name(kind, key))?;
        cm.metadata
            .owner_references
            .as_ref()?
            .first()
            .map(|o| o.uid.clone())
    }

    /// Claims `key` for `holder`, owned by `owner`. When the claim exists,
    /// `owner_alive` is asked (with the API server, not a cache) whether its owner
    /// still exists: a claim whose owner is gone is taken over.
    pub async fn create<F, Fut>(
        &self,
        kind: ClaimKind,
        key: &str,
        holder: &str,
        owner: OwnerReference,
        owner_alive: F,
    ) -> Result<(), ClaimError>
    where
        F: Fn(OwnerReference) -> Fut,
        Fut: Future<Output = Result<bool, kube::Error>>,
    {
        let name = claim_name(kind, key);
        let claim_owner_uid = owner.uid.clone();
        let claim = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([
                    (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
                    (LABEL_CLAIM.to_owned(), kind.as_str().to_owned()),
                ])),
                owner_references: Some(vec![owner]),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(HOLDER_KEY.to_owned(), holder.to_owned())])),
            ..ConfigMap::default()
        };
        // Two rounds: the second after taking over a claim whose owner is gone.
        let mut last_holder = String::new();
        for _ in 0..2 {
            match self.api.create(&PostParams::default(), &claim).await {
                Ok(created) => {
                    self.remember(kind, created);
                    return Ok(());
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            let Some(existing) = self.api.get_opt(&name).await? else {
                continue; // freed meanwhile
            };
            last_holder = existing
                .data
                .as_ref()
                .and_then(|d| d.get(HOLDER_KEY))
                .cloned()
                .unwrap_or_default();
            let existing_owner = existing
                .metadata
                .owner_references
                .as_ref()
                .and_then(|o| o.first())
                .cloned();
            // Ours already (a retried request): nothing to do.
            if last_holder == holder
                && existing_owner
                    .as_ref()
                    .is_some_and(|o| o.uid == claim_owner_uid)
            {
                self.remember(kind, existing);
                return Ok(());
            }
            let alive = match existing_owner {
                Some(o) => owner_alive(o).await?,
                None => false,
            };
            if alive {
                return Err(ClaimError::Taken {
                    holder: last_holder,
                });
            }
            match self.delete_exactly(&existing).await {
                Ok(()) => self.forget(kind, &existing),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(ClaimError::Taken {
            holder: last_holder,
        })
    }

    /// Releases a claim we hold (when a write is rolled back); the garbage collector
    /// does the same once the owner is deleted, so failures here are harmless.
    pub async fn release(&self, kind: ClaimKind, key: &str, owner_uid: &str) {
        let name = claim_name(kind, key);
        // Uncached kinds are read from the API server: a rollback is rare.
        let existing = if kind.is_cached() {
            self.cache.get(&name).map(|c| c.as_ref().clone())
        } else {
            self.api.get_opt(&name).await.ok().flatten()
        };
        let Some(existing) = existing else { return };
        let ours = existing
            .metadata
            .owner_references
            .as_ref()
            .is_some_and(|o| o.iter().any(|r| r.uid == owner_uid));
        if ours && self.delete_exactly(&existing).await.is_ok() {
            self.forget(kind, &existing);
        }
    }

    /// Deletes `claim` and no newer claim of the same name (uid precondition).
    async fn delete_exactly(&self, claim: &ConfigMap) -> Result<(), kube::Error> {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: claim.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        self.api
            .delete(&claim.name_any(), &params)
            .await
            .map(|_| ())
    }

    /// Makes a claim of ours visible in the cache now, if its kind is cached.
    fn remember(&self, kind: ClaimKind, claim: ConfigMap) {
        if kind.is_cached() {
            self.cache.upsert(claim);
        }
    }

    /// Makes a deletion of ours visible in the cache now, if its kind is cached.
    fn forget(&self, kind: ClaimKind, claim: &ConfigMap) {
        if kind.is_cached() {
            self.cache.remove(claim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_names_are_valid_and_distinct() {
        let a = claim_name(ClaimKind::Email, "a@example.com");
        let b = claim_name(ClaimKind::Username, "a@example.com");
        assert_ne!(a, b);
        assert!(
            a.len() <= 63
                && a.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "{a}"
        );
        assert_eq!(a, claim_name(ClaimKind::Email, "a@example.com"), "stable");
        assert_eq!(claim_name(ClaimKind::HostPort, "ü/🎮").len(), a.len() + 3);
    }

    #[test]
    fn only_user_claims_are_cached() {
        assert_eq!(
            ClaimKind::cached_selector(),
            "berth.dev/claim in (username,email)"
        );
    }
}
