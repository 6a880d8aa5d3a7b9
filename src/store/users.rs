//! Users, one Secret each, holding an argon2id hash of the password.
//!
//! Uniqueness of userId comes from the Secret's name (derived from the userId);
//! uniqueness of username and email from claims (see [`super::claims`]), which also
//! serve as the lookup indexes. A user is visible only once both of its claims
//! point at its Secret, so a half-created user (a lost race, a crash) is never shown.
//!
//! Case: usernames and emails are unique and looked up case-insensitively (after
//! trimming the email); both are stored and returned as the client sent them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::claims::{ClaimError, ClaimKind, Claims};
use super::informer::Informer;
use crate::names::{LABEL_MANAGED_BY, MANAGED_BY, SECRET_TYPE_USER};

const KEY_USER_ID: &str = "userId";
const KEY_USERNAME: &str = "username";
const KEY_EMAIL: &str = "email";
const KEY_ADMIN: &str = "admin";
const KEY_PASSWORD: &str = "password";

/// A user without a password older than this is a leftover of a crash and may be replaced.
const ABANDONED_AFTER: Duration = Duration::from_secs(30);

/// OWASP's recommended argon2id parameters (19 MiB, 2 passes, 1 lane).
pub fn password_hasher() -> Argon2<'static> {
    // The constants are valid argon2 parameters; Params::new only fails on out-of-range values.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A user as clients see it: never any password material.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct User {
    /// The user's id (chosen by the client, or a UUIDv4).
    #[serde(rename = "userId")]
    pub user_id: String,
    /// Login name.
    pub username: String,
    /// Email address.
    pub email: String,
    /// Whether the user administers the panel.
    pub admin: bool,
}

/// A user to create.
#[derive(Clone, Debug)]
pub struct NewUser {
    /// The user's id.
    pub user_id: String,
    /// Login name.
    pub username: String,
    /// Email address.
    pub email: String,
    /// Plain password; only its hash is stored.
    pub password: String,
    /// Admin flag.
    pub admin: bool,
}

/// Why creating a user failed.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The userId, username or email is taken.
    #[error("user already exists")]
    Exists,
    /// Hashing the password failed.
    #[error("failed to hash password: {0}")]
    Hash(String),
    /// The API server failed.
    #[error("failed to write user: {0}")]
    Api(#[from] kube::Error),
}

/// Name of the Secret of a userId (hashed: a userId may hold any character).
pub fn secret_name(user_id: &str) -> String {
    let digest = Sha256::digest(user_id.as_bytes());
    let hex: String = digest.iter().take(20).map(|b| format!("{b:02x}")).collect();
    format!("berth-user-{hex}")
}

/// The claim key of a username.
pub fn username_key(username: &str) -> String {
    username.to_lowercase()
}

/// The claim key of an email.
pub fn email_key(email: &str) -> String {
    email.trim().to_lowercase()
}

fn field(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn user_of(secret: &Secret) -> Option<User> {
    Some(User {
        user_id: field(secret, KEY_USER_ID)?,
        username: field(secret, KEY_USERNAME)?,
        email: field(secret, KEY_EMAIL)?,
        admin: field(secret, KEY_ADMIN).as_deref() == Some("true"),
    })
}

type HashJob = Box<dyn FnOnce() + Send>;

/// A fixed set of threads that hash and check passwords, off the async runtime.
/// Each argon2 run takes 19 MiB and a core for tens of milliseconds; on the
/// runtime's blocking pool, every one of its many threads would keep its own
/// 19 MiB arena (hundreds of MiB). Few threads, few arenas.
#[derive(Clone)]
struct HashPool {
    jobs: std::sync::mpsc::Sender<HashJob>,
}

impl HashPool {
    fn new(threads: usize) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<HashJob>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    loop {
                        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok(job) = job else { return };
                        job();
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "failed to start a password hashing thread");
            }
        }
        Self { jobs: tx }
    }

    /// Runs `work` on a pool thread.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(work());
            }))
            .map_err(|_| "no hashing thread".to_owned())?;
        rx.await.map_err(|_| "hashing thread gone".to_owned())
    }

    async fn hash(&self, password: String) -> Result<String, String> {
        self.run(move || {
            let salt = SaltString::generate(&mut OsRng);
            password_hasher()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| e.to_string())
        })
        .await?
    }

    /// Whether `password` matches `hash` (a PHC string); a malformed hash matches nothing.
    async fn verify(&self, password: String, hash: String) -> bool {
        use argon2::password_hash::{PasswordHash, PasswordVerifier};
        self.run(move || {
            PasswordHash::new(&hash).is_ok_and(|parsed| {
                let matches = password_hasher()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok();
                crate::metrics::count_password_check();
                matches
            })
        })
        .await
        .unwrap_or(false)
    }
}

/// Users in one namespace, read from caches.
#[derive(Clone)]
pub struct Users {
    api: Api<Secret>,
    cache: Informer<Secret>,
    claims: Claims,
    hashing: HashPool,
    /// A hash of no one's password, checked when the user is unknown so that an
    /// unknown user costs a login what a wrong password costs.
    decoy: Arc<tokio::sync::OnceCell<String>>,
}

/// How a login names its user.
#[derive(Clone, Debug)]
pub enum LoginName {
    /// By username (case-insensitive).
    Username(String),
    /// By email (case-insensitive).
    Email(String),
}

impl Users {
    /// Users stored through `api`, read from `cache` (user Secrets) and `claims`.
    pub fn new(api: Api<Secret>, cache: Informer<Secret>, claims: Claims) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            api,
            cache,
            claims,
            hashing: HashPool::new(cores),
            decoy: Arc::default(),
        }
    }

    /// Prepares what a login needs (the decoy hash), so the first login of an
    /// unknown user takes no longer than any other.
    pub async fn warm(&self) {
        self.decoy().await;
    }

    async fn decoy(&self) -> String {
        self.decoy
            .get_or_init(|| async {
                let mut random = [0u8; 32];
                argon2::password_hash::rand_core::RngCore::fill_bytes(&mut OsRng, &mut random);
                let password: String = random.iter().map(|b| format!("{b:02x}")).collect();
                self.hashing.hash(password).await.unwrap_or_default()
            })
            .await
            .clone()
    }

    /// The user `name` names, if `password` is theirs. An unknown user and a wrong
    /// password take the same work (one argon2id check) and give the same `None`.
    pub async fn login(&self, name: &LoginName, password: &str) -> Option<User> {
        let user = match name {
            LoginName::Username(u) => self.by_username(u),
            LoginName::Email(e) => self.by_email(e),
        };
        let stored = user.as_ref().and_then(|u| {
            let secret = self.cache.get(&secret_name(&u.user_id))?;
            field(&secret, KEY_PASSWORD)
        });
        let hash = match stored {
            Some(h) => h,
            None => self.decoy().await,
        };
        let matches = self.hashing.verify(password.to_owned(), hash).await;
        user.filter(|_| matches)
    }

    /// The user Secret's user, if both claims point at this very Secret.
    fn complete(&self, secret: &Secret) -> Option<User> {
        let user = user_of(secret)?;
        let uid = secret.metadata.uid.as_deref()?;
        let holds = |kind, key: &str| {
            self.claims.holder(kind, key).as_deref() == Some(user.user_id.as_str())
                && self.claims.owner_uid(kind, key).as_deref() == Some(uid)
        };
        (holds(ClaimKind::Username, &username_key(&user.username))
            && holds(ClaimKind::Email, &email_key(&user.email)))
        .then_some(user)
    }

    /// Every user, in a stable order.
    pub fn list(&self) -> Vec<User> {
        self.cache
            .list()
            .iter()
            .filter_map(|s| self.complete(s))
            .collect()
    }

    /// Versions of the caches users are read from (see `api::ListCache`).
    pub fn versions(&self) -> Vec<u64> {
        vec![self.cache.version(), self.claims.version()]
    }

    /// Number of users.
    pub fn count(&self) -> usize {
        self.cache.len()
    }

    /// The user with this userId.
    pub fn by_id(&self, user_id: &str) -> Option<User> {
        self.complete(self.cache.get(&secret_name(user_id))?.as_ref())
    }

    /// The user with this username (case-insensitive).
    pub fn by_username(&self, username: &str) -> Option<User> {
        self.by_id(
            &self
                .claims
                .holder(ClaimKind::Username, &username_key(username))?,
        )
    }

    /// The user with this email (case-insensitive).
    pub fn by_email(&self, email: &str) -> Option<User> {
        self.by_id(&self.claims.holder(ClaimKind::Email, &email_key(email))?)
    }

    /// Creates a user. Fails with [`UserError::Exists`] when the userId, username or
    /// email is taken, as decided by the API server.
    pub async fn create(&self, new: NewUser) -> Result<User, UserError> {
        // Cheap early answer; the claims below decide for real.
        if self.by_id(&new.user_id).is_some()
            || self.by_username(&new.username).is_some()
            || self.by_email(&new.email).is_some()
        {
            return Err(UserError::Exists);
        }
        let hash = self.hash(new.password.clone()).await?;
        let secret = self.create_secret(&new, hash).await?;
        let owner = owner_ref(&secret);
        let uid = owner.uid.clone();
        let claims = [
            (ClaimKind::Username, username_key(&new.username)),
            (ClaimKind::Email, email_key(&new.email)),
        ];
        for (i, (kind, key)) in claims.iter().enumerate() {
            let made = self
                .claims
                .create(*kind, key, &new.user_id, owner.clone(), |o| {
                    self.secret_alive(o)
                })
                .await;
            if let Err(e) = made {
                // Roll back: what we claimed so far, then the Secret (the garbage
                // collector would free the claims too, but slower).
                for (kind, key) in &claims[..i] {
                    self.claims.release(*kind, key, &uid).await;
                }
                self.delete_secret(&secret).await;
                return Err(match e {
                    ClaimError::Taken { .. } => UserError::Exists,
                    ClaimError::Api(e) => UserError::Api(e),
                });
            }
        }
        self.cache.upsert(secret);
        Ok(User {
            user_id: new.user_id,
            username: new.username,
            email: new.email,
            admin: new.admin,
        })
    }

    async fn hash(&self, password: String) -> Result<String, UserError> {
        self.hashing.hash(password).await.map_err(UserError::Hash)
    }

    async fn create_secret(&self, new: &NewUser, hash: String) -> Result<Secret, UserError> {
        let data = BTreeMap::from([
            (KEY_USER_ID, new.user_id.clone()),
            (KEY_USERNAME, new.username.clone()),
            (KEY_EMAIL, new.email.clone()),
            (KEY_ADMIN, new.admin.to_string()),
            (KEY_PASSWORD, hash),
        ]);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(secret_name(&new.user_id)),
                labels: Some(BTreeMap::from([(
                    LABEL_MANAGED_BY.to_owned(),
                    MANAGED_BY.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some(SECRET_TYPE_USER.to_owned()),
            data: Some(
                data.into_iter()
                    .map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes())))
                    .collect(),
            ),
            ..Secret::default()
        };
        for _ in 0..2 {
            match self.api.create(&PostParams::default(), &secret).await {
                Ok(created) => return Ok(created),
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            // The userId is taken, unless by a crash's leftover that never got its claims.
            let Some(existing) = self.api.get_opt(&secret.name_any()).await? else {
                continue;
            };
            let abandoned = self.complete(&existing).is_none()
                && existing.creation_timestamp().is_some_and(|t| {
                    let age = k8s_openapi::jiff::Timestamp::now().duration_since(t.0);
                    age.as_secs() >= ABANDONED_AFTER.as_secs() as i64
                });
            if !abandoned {
                return Err(UserError::Exists);
            }
            self.delete_secret(&existing).await;
        }
        Err(UserError::Exists)
    }

    async fn delete_secret(&self, secret: &Secret) {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: secret.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        if let Err(e) = self.api.delete(&secret.name_any(), &params).await {
            tracing::warn!(error = %e, "failed to roll back a user Secret; the next create of this userId replaces it");
        }
        self.cache.remove(secret);
    }

    /// Whether the user Secret `owner` names still exists (asked of the API server).
    async fn secret_alive(&self, owner: OwnerReference) -> Result<bool, kube::Error> {
        Ok(self
            .api
            .get_opt(&owner.name)
            .await?
            .is_some_and(|s| s.metadata.uid.as_deref() == Some(owner.uid.as_str())))
    }
}

/// An owner reference to `obj` (which the API server returned, so it has a uid).
pub fn owner_ref<K: Resource<DynamicType = ()>>(obj: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: obj.meta().name.clone().unwrap_or_default(),
        uid: obj.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHash, PasswordVerifier};

    #[test]
    fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let salt = SaltString::generate(&mut OsRng);
        let hash = password_hasher()
            .hash_password(b"correct horse", &salt)
            .expect("hash")
            .to_string();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        let parsed = PasswordHash::new(&hash).expect("PHC string");
        assert!(
            password_hasher()
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );
        assert!(
            password_hasher()
                .verify_password(b"wrong", &parsed)
                .is_err()
        );
    }

    #[test]
    fn keys_ignore_case_and_email_whitespace() {
        assert_eq!(username_key("Steve"), username_key("steve"));
        assert_eq!(email_key(" Steve@Example.COM "), "steve@example.com");
        assert_ne!(
            secret_name("1163853373418598482"),
            secret_name("1163853373418598483")
        );
        assert!(secret_name("ü 🎮 / x").starts_with("berth-user-"));
    }
}
