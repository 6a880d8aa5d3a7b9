//! API keys: Secrets holding only the SHA-256 of each key. The key itself is shown
//! once, when it is made. Requests are checked against an in-memory cache, in
//! constant time, with no API server call; a revoked key's Secret disappears from
//! the cache within the watch's latency (well under a second).

use std::collections::BTreeMap;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::informer::Informer;
use crate::names::{LABEL_MANAGED_BY, MANAGED_BY, SECRET_TYPE_API_KEY};

/// Data key of the key's SHA-256 (hex) in its Secret.
pub const KEY_SHA256: &str = "sha256";
/// Prefix of every key, so secret scanners and people recognise one.
pub const KEY_PREFIX: &str = "berth_";
const SECRET_PREFIX: &str = "berth-apikey-";

/// SHA-256 of a key, hex-encoded.
pub fn digest(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new random key: the prefix and 256 bits from the OS, hex-encoded.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{KEY_PREFIX}{hex}")
}

/// Whether a key name is usable in a Secret name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 40
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// The Secret holding a key named `name`.
pub fn secret(name: &str, key: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(format!("{SECRET_PREFIX}{name}")),
            labels: Some(BTreeMap::from([(
                LABEL_MANAGED_BY.to_owned(),
                MANAGED_BY.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some(SECRET_TYPE_API_KEY.to_owned()),
        data: Some(BTreeMap::from([(
            KEY_SHA256.to_owned(),
            ByteString(digest(key).into_bytes()),
        )])),
        ..Secret::default()
    }
}

/// Checks presented keys against the cached key Secrets.
#[derive(Clone)]
pub struct KeyChecker {
    cache: Informer<Secret>,
}

impl KeyChecker {
    /// A checker reading `cache` (the API key Secrets).
    pub fn new(cache: Informer<Secret>) -> Self {
        Self { cache }
    }

    /// Whether `key` is a current API key. Every stored digest is compared in
    /// constant time, with no early exit, so timing tells nothing about which
    /// bytes matched.
    pub fn verify(&self, key: &str) -> bool {
        let presented = digest(key);
        let mut found = subtle::Choice::from(0);
        for secret in self.cache.state() {
            if let Some(stored) = secret.data.as_ref().and_then(|d| d.get(KEY_SHA256)) {
                found |= stored.0.as_slice().ct_eq(presented.as_bytes());
            }
        }
        found.into()
    }
}

/// One key as `berth apikey list` shows it (never the digest).
#[derive(Debug)]
pub struct KeyInfo {
    /// The key's name.
    pub name: String,
    /// When it was made (RFC 3339).
    pub created: String,
}

/// Why an API key operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The name is not usable.
    #[error("invalid key name {0:?}: use 1-40 lowercase letters, digits and '-'")]
    InvalidName(String),
    /// A key with this name exists.
    #[error("an API key named {0:?} already exists")]
    Exists(String),
    /// No key has this name.
    #[error("no API key named {0:?}")]
    NotFound(String),
    /// The API server failed.
    #[error("API server request failed: {0}")]
    Api(#[from] kube::Error),
}

/// Makes a key named `name` (random when `None`) and returns (name, key).
pub async fn create(api: &Api<Secret>, name: Option<String>) -> Result<(String, String), KeyError> {
    let name =
        name.unwrap_or_else(|| format!("key-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    if !valid_name(&name) {
        return Err(KeyError::InvalidName(name));
    }
    let key = generate();
    match api
        .create(&PostParams::default(), &secret(&name, &key))
        .await
    {
        Ok(_) => Ok((name, key)),
        Err(kube::Error::Api(e)) if e.code == 409 => Err(KeyError::Exists(name)),
        Err(e) => Err(e.into()),
    }
}

/// Every key, by name.
pub async fn list(api: &Api<Secret>) -> Result<Vec<KeyInfo>, KeyError> {
    let params = ListParams::default().fields(&format!("type={SECRET_TYPE_API_KEY}"));
    Ok(api
        .list(&params)
        .await?
        .items
        .iter()
        .map(|s| KeyInfo {
            name: s.name_any().trim_start_matches(SECRET_PREFIX).to_owned(),
            created: s
                .creation_timestamp()
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
        })
        .collect())
}

/// Deletes the key named `name`.
pub async fn revoke(api: &Api<Secret>, name: &str) -> Result<(), KeyError> {
    match api
        .delete(&format!("{SECRET_PREFIX}{name}"), &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Err(KeyError::NotFound(name.to_owned())),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher::Event;

    #[test]
    fn generated_keys_are_long_random_and_prefixed() {
        let (a, b) = (generate(), generate());
        assert_ne!(a, b);
        assert!(a.starts_with(KEY_PREFIX) && a.len() == KEY_PREFIX.len() + 64);
        assert_eq!(
            digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn verify_accepts_stored_keys_only() {
        let cache: Informer<Secret> = Informer::new(None);
        let checker = KeyChecker::new(cache.clone());
        let key = generate();
        assert!(!checker.verify(&key));
        let mut s = secret("ci", &key);
        s.metadata.uid = Some("u1".into());
        cache.apply(Event::Apply(s.clone()));
        assert!(checker.verify(&key));
        assert!(!checker.verify(&generate()));
        assert!(!checker.verify(""));
        cache.apply(Event::Delete(s));
        assert!(!checker.verify(&key), "a revoked key stops working");
    }

    #[test]
    fn names_must_fit_in_a_secret_name() {
        assert!(valid_name("ci-1"));
        for bad in ["", "-x", "x-", "UPPER", "a/b", &"x".repeat(41)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
