//! `Idempotency-Key`: a client that retries a deploy (after a timeout or a lost
//! connection) with the same key gets the instance of its first attempt, never a
//! second one. The key decides the instance id, so the API server's create
//! conflict, not a lookup, is what detects the retry.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// Header carrying the key.
pub const HEADER: &str = "idempotency-key";
/// Longest key accepted.
pub const MAX_LEN: usize = 255;

/// The request's idempotency key, if it has one.
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(HEADER) else {
            return Ok(Self(None));
        };
        match value.to_str() {
            Ok(v) if !v.trim().is_empty() && v.len() <= MAX_LEN => {
                Ok(Self(Some(v.trim().to_owned())))
            }
            _ => Err(ApiError::bad_request(format!(
                "Idempotency-Key must be 1 to {MAX_LEN} visible ASCII characters"
            ))),
        }
    }
}

/// The digest that identifies a keyed request of one caller (hex SHA-256).
pub fn digest(caller_key_digest: &str, key: &str) -> String {
    Sha256::digest(format!("{caller_key_digest}:{key}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_depend_on_caller_and_key() {
        let a = digest("caller-a", "k1");
        assert_eq!(a, digest("caller-a", "k1"));
        assert_ne!(a, digest("caller-b", "k1"));
        assert_ne!(a, digest("caller-a", "k2"));
        assert_eq!(a.len(), 64);
    }
}
