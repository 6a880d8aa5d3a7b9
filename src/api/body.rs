//! Request bodies: JSON objects or url-encoded forms (old Skyport clients send
//! both), read with a size limit and strictly (duplicated keys are refused), then
//! read field by field with messages that name the field. Numbers may arrive as
//! JSON numbers or numeric strings, as real clients send both.

use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::error::ApiError;

/// Largest body accepted.
pub const MAX_BODY: usize = 1024 * 1024;

/// The fields of a request body.
#[derive(Debug, Default)]
pub struct Fields(Map<String, Value>);

/// A JSON value whose objects may not repeat a key.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            if out.insert(key.clone(), v).is_some() {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
        }
        Ok(Value::Object(out))
    }
}

/// Parses a JSON body strictly; the top level must be an object.
pub fn parse_json(bytes: &[u8]) -> Result<Fields, ApiError> {
    let Strict(value) = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("Malformed JSON body: {e}")))?;
    match value {
        Value::Object(map) => Ok(Fields(map)),
        _ => Err(ApiError::bad_request("Request body must be a JSON object")),
    }
}

/// Parses a url-encoded form body; a repeated field is refused.
pub fn parse_form(bytes: &[u8]) -> Result<Fields, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(bytes)
        .map_err(|e| ApiError::bad_request(format!("Malformed form body: {e}")))?;
    let mut map = Map::new();
    for (k, v) in pairs {
        if map.insert(k.clone(), Value::String(v)).is_some() {
            return Err(ApiError::bad_request(format!("Duplicate field {k:?}")));
        }
    }
    Ok(Fields(map))
}

impl<S: Send + Sync> FromRequest<S> for Fields {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        let mime = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            });
        let json = match mime.as_deref() {
            Some("application/json") => true,
            Some(m) if m.starts_with("application/") && m.ends_with("+json") => true,
            Some("application/x-www-form-urlencoded") => false,
            _ => return Err(ApiError::unsupported_media_type()),
        };
        let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY)
            .await
            .map_err(|_| ApiError::too_large(MAX_BODY))?;
        if json {
            parse_json(&bytes)
        } else {
            parse_form(&bytes)
        }
    }
}

/// Whether a text holds a control character (never valid in names or ids).
pub fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

impl Fields {
    /// SHA-256 (hex) of the fields, keys in order: equal bodies have equal digests
    /// however their keys were ordered.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let sorted: std::collections::BTreeMap<&String, &Value> = self.0.iter().collect();
        let bytes = serde_json::to_vec(&sorted).unwrap_or_default();
        Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The names of the fields sent.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.keys()
    }

    /// The raw value of a field; `null` counts as absent.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    /// Names of the `keys` that are absent, null or blank.
    pub fn missing<'a>(&self, keys: &[&'a str]) -> Vec<&'a str> {
        keys.iter()
            .copied()
            .filter(|k| match self.get(k) {
                None => true,
                Some(Value::String(s)) => s.trim().is_empty(),
                Some(_) => false,
            })
            .collect()
    }

    /// Fails with one message naming every missing field.
    pub fn require(&self, keys: &[&str]) -> Result<(), ApiError> {
        let missing = self.missing(keys);
        match missing.len() {
            0 => Ok(()),
            1 => Err(ApiError::bad_request(format!(
                "Missing required field: {}",
                missing[0]
            ))),
            _ => Err(ApiError::bad_request(format!(
                "Missing required fields: {}",
                missing.join(", ")
            ))),
        }
    }

    /// A text field (a JSON string, or a number given for an id), at most `max` characters,
    /// without control characters. Blank counts as absent.
    pub fn text(&self, key: &str, max: usize) -> Result<Option<String>, ApiError> {
        let s = match self.get(key) {
            None => return Ok(None),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(_) => return Err(ApiError::bad_request(format!("{key} must be a string"))),
        };
        if s.trim().is_empty() {
            return Ok(None);
        }
        if s.chars().count() > max {
            return Err(ApiError::bad_request(format!(
                "{key} must be at most {max} characters"
            )));
        }
        if has_control(&s) {
            return Err(ApiError::bad_request(format!(
                "{key} must not contain control characters"
            )));
        }
        Ok(Some(s))
    }

    /// A required text field.
    pub fn required_text(&self, key: &str, max: usize) -> Result<String, ApiError> {
        self.text(key, max)?
            .ok_or_else(|| ApiError::bad_request(format!("Missing required field: {key}")))
    }

    /// A number given as a JSON number or a numeric string; must be finite.
    pub fn number(&self, key: &str) -> Result<Option<f64>, ApiError> {
        let n = match self.get(key) {
            None => return Ok(None),
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) if s.trim().is_empty() => return Ok(None),
            Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
            Some(_) => None,
        };
        match n {
            Some(n) if n.is_finite() => Ok(Some(n)),
            _ => Err(ApiError::bad_request(format!("{key} must be a number"))),
        }
    }

    /// A whole number in `min..=max`, as a JSON number or a numeric string.
    pub fn integer(&self, key: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        let Some(n) = self.number(key)? else {
            return Ok(None);
        };
        if n.fract() != 0.0 {
            return Err(ApiError::bad_request(format!(
                "{key} must be a whole number"
            )));
        }
        if n < min as f64 || n > max as f64 {
            return Err(ApiError::bad_request(format!(
                "{key} must be between {min} and {max}"
            )));
        }
        Ok(Some(n as i64))
    }

    /// A boolean, as a JSON boolean or the strings "true"/"false" (forms).
    pub fn boolean(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) if s == "true" => Ok(Some(true)),
            Some(Value::String(s)) if s == "false" => Ok(Some(false)),
            Some(_) => Err(ApiError::bad_request(format!(
                "{key} must be true or false"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(r: Result<impl std::fmt::Debug, ApiError>) -> u16 {
        r.expect_err("an error").status().as_u16()
    }

    #[test]
    fn json_bodies_are_objects_without_duplicate_keys() {
        assert!(parse_json(br#"{"a": 1, "b": {"c": [1, "x", null]}}"#).is_ok());
        assert_eq!(status(parse_json(br#"{"a": 1, "a": 2}"#)), 400);
        assert_eq!(status(parse_json(br#"{"a": {"b": 1, "b": 1}}"#)), 400);
        assert_eq!(status(parse_json(b"[1]")), 400);
        assert_eq!(status(parse_json(b"{")), 400);
        assert_eq!(status(parse_json(b"")), 400);
        assert_eq!(status(parse_form(b"a=1&a=2")), 400);
        assert_eq!(
            parse_form(b"memory=1024&admin=true")
                .expect("form")
                .integer("memory", 1, 10_000)
                .ok(),
            Some(Some(1024))
        );
    }

    #[test]
    fn numbers_come_as_numbers_or_numeric_strings() {
        let f = parse_json(br#"{"a": 1024, "b": "1024", "c": "1.5", "d": "NaN", "e": "12abc", "f": true, "g": 1e400}"#);
        // 1e400 overflows f64: serde_json refuses it as malformed.
        assert!(f.is_err());
        let f = parse_json(br#"{"a": 1024, "b": "1024", "c": "1.5", "d": "NaN", "e": "12abc", "f": true, "h": "inf"}"#).expect("json");
        assert_eq!(f.integer("a", 1, 2048).ok(), Some(Some(1024)));
        assert_eq!(f.integer("b", 1, 2048).ok(), Some(Some(1024)));
        assert_eq!(f.number("c").ok(), Some(Some(1.5)));
        assert_eq!(status(f.integer("c", 1, 10)), 400);
        assert_eq!(status(f.number("d")), 400);
        assert_eq!(status(f.number("e")), 400);
        assert_eq!(status(f.number("f")), 400);
        assert_eq!(status(f.number("h")), 400);
        assert_eq!(status(f.integer("a", 1, 100)), 400);
        assert_eq!(f.number("absent").ok(), Some(None));
    }

    #[test]
    fn digests_ignore_key_order_but_not_values() {
        let a = parse_json(br#"{"a": 1, "b": "x"}"#).expect("json");
        let b = parse_json(br#"{"b": "x", "a": 1}"#).expect("json");
        let c = parse_json(br#"{"a": 2, "b": "x"}"#).expect("json");
        assert_eq!(a.digest(), b.digest());
        assert_ne!(a.digest(), c.digest());
    }

    #[test]
    fn text_fields_refuse_control_characters_and_overlong_values() {
        let f = parse_json(br#"{"a": "ok \u00e9 \ud83c\udfae", "b": "bad\u0000", "c": "  ", "d": 12, "e": [1], "f": null}"#).expect("json");
        assert_eq!(f.text("a", 10).ok().flatten().as_deref(), Some("ok é 🎮"));
        assert_eq!(status(f.text("a", 3)), 400);
        assert_eq!(status(f.text("b", 10)), 400);
        assert_eq!(f.text("c", 10).ok(), Some(None));
        assert_eq!(f.text("d", 10).ok().flatten().as_deref(), Some("12"));
        assert_eq!(status(f.text("e", 10)), 400);
        assert_eq!(f.missing(&["a", "c", "f", "z"]), ["c", "f", "z"]);
    }
}
