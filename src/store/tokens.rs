//! Signed tokens for end users, so that a panel never hands out its API key:
//! *console tokens* (one instance, some permissions, 10 minutes; asked for by the
//! panel with its API key) and *user tokens* (the user's own instances, 1 hour; from
//! a login). HS256 JWTs signed with the current key of the signing Secret; every key
//! in it verifies, so a rotation (a new `current`, the old one moved to `previous`)
//! needs no restart and breaks no token: the Secret is watched.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::informer::Informer;
use crate::names::{LABEL_MANAGED_BY, MANAGED_BY, SECRET_TYPE_SIGNING_KEY, SIGNING_SECRET};

/// How long a console token lives.
pub const CONSOLE_TTL: Duration = Duration::from_secs(10 * 60);
/// How long a user token (from a login) lives.
pub const USER_TTL: Duration = Duration::from_secs(60 * 60);
/// The signing Secret's key that signs new tokens.
pub const KEY_CURRENT: &str = "current";
/// The signing Secret's key kept for verifying after a rotation.
pub const KEY_PREVIOUS: &str = "previous";
/// Shortest signing key accepted (HS256 wants at least its hash's 32 bytes).
const MIN_KEY_BYTES: usize = 32;

/// What a token lets its holder do with an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Perm {
    /// Read the console and type into it.
    Console,
    /// Start, stop, restart, kill.
    Power,
    /// Memory, CPU, uptime.
    Stats,
}

impl Perm {
    /// Every permission.
    pub const ALL: [Perm; 3] = [Perm::Console, Perm::Power, Perm::Stats];
}

/// What a token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id.
    pub sub: String,
    /// The one instance a console token is for; a user token has none (the
    /// user's own instances).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ins: Option<String>,
    /// What it allows.
    pub prm: Vec<Perm>,
    /// Issued at (seconds since the epoch).
    pub iat: u64,
    /// Expires at (seconds since the epoch).
    pub exp: u64,
}

impl Claims {
    /// Claims for `user` (and `instance`, for a console token) valid for `ttl` from now.
    pub fn new(user: &str, instance: Option<&str>, prm: Vec<Perm>, ttl: Duration) -> Self {
        let now = now_secs();
        Self {
            sub: user.to_owned(),
            ins: instance.map(str::to_owned),
            prm,
            iat: now,
            exp: now + ttl.as_secs(),
        }
    }

    /// Whether these claims allow `perm` on instance `id`, owned by `owner`: a
    /// console token on its one instance (the panel vouched for the user when it
    /// asked for it: an owner, or an admin), a user token on the user's own.
    pub fn allows(&self, id: &str, owner: &str, perm: Perm) -> bool {
        let scoped = match self.ins.as_deref() {
            Some(ins) => ins == id,
            None => self.sub == owner,
        };
        scoped && self.prm.contains(&perm)
    }

    /// Seconds until expiry (0 once expired).
    pub fn expires_in(&self) -> u64 {
        self.exp.saturating_sub(now_secs())
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Why a token is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Well made, but past its expiry.
    #[error("the token has expired")]
    Expired,
    /// Not one of ours: malformed, another signature, an unknown key.
    #[error("the token is not valid")]
    Invalid,
    /// No signing key yet (the Secret is missing or too short).
    #[error("no token signing key is configured")]
    NoKey,
}

/// A key's id: the first 8 bytes of its SHA-256, hex (names the key in a token's
/// header without revealing it).
fn key_id(key: &[u8]) -> String {
    Sha256::digest(key)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Issues and verifies tokens with the keys of the watched signing Secret.
#[derive(Clone)]
pub struct Tokens {
    cache: Informer<Secret>,
}

impl Tokens {
    /// Tokens signed with the keys in `cache` (the signing Secrets).
    pub fn new(cache: Informer<Secret>) -> Self {
        Self { cache }
    }

    /// The usable keys, current first.
    fn keys(&self) -> Vec<Vec<u8>> {
        let Some(secret) = self.cache.get(SIGNING_SECRET) else {
            return Vec::new();
        };
        let data = secret.data.clone().unwrap_or_default();
        [KEY_CURRENT, KEY_PREVIOUS]
            .iter()
            .filter_map(|k| data.get(*k))
            .map(|b| b.0.clone())
            .filter(|k| k.len() >= MIN_KEY_BYTES)
            .collect()
    }

    /// A signed token saying `claims`.
    pub fn issue(&self, claims: &Claims) -> Result<String, TokenError> {
        let key = self.keys().into_iter().next().ok_or(TokenError::NoKey)?;
        sign(&key, claims)
    }

    /// The claims of `token`, if one of the current keys signed it and it has not expired.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        if header.alg != Algorithm::HS256 {
            return Err(TokenError::Invalid);
        }
        let kid = header.kid.ok_or(TokenError::Invalid)?;
        let key = self
            .keys()
            .into_iter()
            .find(|k| key_id(k) == kid)
            .ok_or(TokenError::Invalid)?;
        let mut rules = Validation::new(Algorithm::HS256);
        rules.leeway = 0;
        rules.set_required_spec_claims(&["exp", "sub"]);
        match jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(&key), &rules) {
            Ok(data) => Ok(data.claims),
            Err(e) if *e.kind() == jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                Err(TokenError::Expired)
            }
            Err(_) => Err(TokenError::Invalid),
        }
    }
}

/// `claims` signed with `key` (HS256), the key named by its id.
pub fn sign(key: &[u8], claims: &Claims) -> Result<String, TokenError> {
    let header = Header {
        kid: Some(key_id(key)),
        ..Header::new(Algorithm::HS256)
    };
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(key))
        .map_err(|_| TokenError::Invalid)
}

/// A new random signing key (256 bits).
pub fn generate_key() -> Vec<u8> {
    let mut key = vec![0u8; 32];
    OsRng.fill_bytes(&mut key);
    key
}

/// The signing Secret with `current` as its key.
pub fn signing_secret(current: Vec<u8>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(SIGNING_SECRET.to_owned()),
            labels: Some(BTreeMap::from([(
                LABEL_MANAGED_BY.to_owned(),
                MANAGED_BY.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some(SECRET_TYPE_SIGNING_KEY.to_owned()),
        data: Some(BTreeMap::from([(
            KEY_CURRENT.to_owned(),
            ByteString(current),
        )])),
        ..Secret::default()
    }
}

/// Makes the signing Secret when there is none (the chart makes it; a Berth run
/// without the chart makes its own). An existing one is left as it is.
pub async fn ensure_signing_key(api: &Api<Secret>) -> Result<(), kube::Error> {
    match api
        .create(&PostParams::default(), &signing_secret(generate_key()))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher::Event;

    fn tokens_with(keys: &[(&str, &[u8])]) -> Tokens {
        let cache: Informer<Secret> = Informer::new(Some("ns"));
        let mut secret = signing_secret(Vec::new());
        secret.metadata.namespace = Some("ns".into());
        secret.data = Some(
            keys.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                .collect(),
        );
        cache.apply(Event::Apply(secret));
        Tokens::new(cache)
    }

    const A: &[u8] = b"0123456789abcdef0123456789abcdef";
    const B: &[u8] = b"fedcba9876543210fedcba9876543210";

    #[test]
    fn a_token_says_what_it_was_issued_with_and_nothing_else_verifies() {
        let t = tokens_with(&[(KEY_CURRENT, A)]);
        let claims = Claims::new("u1", Some("i1"), vec![Perm::Console], CONSOLE_TTL);
        let token = t.issue(&claims).expect("issue");
        assert_eq!(t.verify(&token), Ok(claims.clone()));
        let mut forged = token.clone();
        forged.pop();
        assert_eq!(t.verify(&forged), Err(TokenError::Invalid));
        assert_eq!(t.verify("not.a.token"), Err(TokenError::Invalid));
        let other = tokens_with(&[(KEY_CURRENT, B)]);
        assert_eq!(other.verify(&token), Err(TokenError::Invalid));
    }

    #[test]
    fn a_rotation_keeps_old_tokens_valid_while_the_old_key_is_kept() {
        let before = tokens_with(&[(KEY_CURRENT, A)]);
        let token = before
            .issue(&Claims::new("u1", None, Perm::ALL.to_vec(), USER_TTL))
            .expect("issue");
        let rotated = tokens_with(&[(KEY_CURRENT, B), (KEY_PREVIOUS, A)]);
        assert!(rotated.verify(&token).is_ok());
        let dropped = tokens_with(&[(KEY_CURRENT, B)]);
        assert_eq!(dropped.verify(&token), Err(TokenError::Invalid));
    }

    #[test]
    fn expired_tokens_and_short_keys_are_refused() {
        let t = tokens_with(&[(KEY_CURRENT, A)]);
        let mut claims = Claims::new("u1", None, vec![Perm::Stats], USER_TTL);
        claims.exp = now_secs() - 1;
        let token = t.issue(&claims).expect("issue");
        assert_eq!(t.verify(&token), Err(TokenError::Expired));
        let short = tokens_with(&[(KEY_CURRENT, b"short")]);
        assert_eq!(short.issue(&claims), Err(TokenError::NoKey));
    }

    #[test]
    fn a_console_token_is_for_its_instance_its_owner_and_its_permissions() {
        let c = Claims::new("u1", Some("i1"), vec![Perm::Console], CONSOLE_TTL);
        assert!(c.allows("i1", "u1", Perm::Console));
        assert!(!c.allows("i2", "u1", Perm::Console), "another instance");
        assert!(
            c.allows("i1", "admin", Perm::Console),
            "issued to an admin for another's instance"
        );
        assert!(!c.allows("i1", "u1", Perm::Power), "not granted");
        let user = Claims::new("u1", None, Perm::ALL.to_vec(), USER_TTL);
        assert!(user.allows("any", "u1", Perm::Power));
        assert!(!user.allows("any", "u2", Perm::Power));
    }
}
