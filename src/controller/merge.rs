//! JSON merge patches (RFC 7386) computed from two versions of a document: what
//! the controller sends to move an Instance's status from what it read to what it
//! derived. Only what changed is sent, and a field that went away is sent as
//! `null` (a merge patch removes a field only when told so). Pure.

use serde_json::{Map, Value};

/// The merge patch that turns `old` into `new`, or `None` when they are equal.
/// Objects are diffed key by key, recursively; anything else (arrays, scalars,
/// a change of type) is replaced whole, as a merge patch can only do.
pub fn diff(old: &Value, new: &Value) -> Option<Value> {
    if old == new {
        return None;
    }
    let (Value::Object(old), Value::Object(new)) = (old, new) else {
        return Some(new.clone());
    };
    let mut patch = Map::new();
    for (key, value) in new {
        let change = match old.get(key) {
            Some(before) => diff(before, value),
            None => Some(value.clone()),
        };
        if let Some(change) = change {
            patch.insert(key.clone(), change);
        }
    }
    for key in old.keys().filter(|k| !new.contains_key(*k)) {
        patch.insert(key.clone(), Value::Null);
    }
    Some(Value::Object(patch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// RFC 7386's apply, to check that a diff does what it says.
    fn apply(target: &Value, patch: &Value) -> Value {
        let Value::Object(patch) = patch else {
            return patch.clone();
        };
        let mut out = match target {
            Value::Object(t) => t.clone(),
            _ => Map::new(),
        };
        for (k, v) in patch {
            if v.is_null() {
                out.remove(k);
            } else {
                let merged = apply(out.get(k).unwrap_or(&Value::Null), v);
                out.insert(k.clone(), merged);
            }
        }
        Value::Object(out)
    }

    #[test]
    fn only_changes_are_sent_and_removed_fields_are_nulled() {
        let old = json!({ "state": "Installing", "podName": "a", "power": "Starting",
                          "conditions": [{ "type": "Ready", "status": "False" }],
                          "nested": { "keep": 1, "drop": 2 } });
        let new = json!({ "state": "Running", "podName": "a",
                          "conditions": [{ "type": "Ready", "status": "True" }],
                          "nested": { "keep": 1 } });
        let patch = diff(&old, &new).expect("a change");
        assert_eq!(
            patch,
            json!({ "state": "Running", "power": null,
                    "conditions": [{ "type": "Ready", "status": "True" }],
                    "nested": { "drop": null } })
        );
        assert_eq!(apply(&old, &patch), new);
    }

    #[test]
    fn equal_documents_need_no_patch_and_any_pair_round_trips() {
        let docs = [
            json!({}),
            json!({ "a": 1 }),
            json!({ "a": { "b": [1, 2], "c": "x" } }),
            json!({ "a": { "b": [2], "d": true }, "e": null }),
            json!({ "a": "scalar now" }),
        ];
        for old in &docs {
            assert_eq!(diff(old, old), None);
            for new in &docs {
                // Merge patches cannot carry a null value: none of ours has one.
                let new = apply(&json!({}), new);
                if let Some(p) = diff(old, &new) {
                    assert_eq!(apply(old, &p), new, "{old} -> {new} by {p}");
                }
            }
        }
    }
}
