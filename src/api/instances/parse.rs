//! Reading instance requests (pure): Skyport's port strings, primary ports and
//! variables as real clients send them, into a [`DeployRequest`].

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::super::body::{Fields, has_control};
use super::super::error::{ApiError, ApiResult};
use crate::crd::PortMapping;
use crate::store::deploy::DeployRequest;
use crate::store::edit::EditRequest;

/// Most ports one instance may have.
pub const MAX_PORTS: usize = 64;
/// Largest memory of one instance, in MiB (1 TiB).
pub const MAX_MEMORY: i64 = 1 << 20;
/// Largest disk of one instance, in MiB (64 TiB).
pub const MAX_DISK: i64 = 1 << 26;
/// Most CPU cores of one instance.
pub const MAX_CPU: f64 = 1024.0;
/// Most variables of one instance.
pub const MAX_VARIABLES: usize = 128;

/// Parses Skyport's port list: comma-separated `container:host` pairs or bare ports
/// (the same port on both sides). Host ports must be unique.
pub fn parse_ports(text: &str) -> Result<Vec<PortMapping>, String> {
    let port = |s: &str| -> Result<i32, String> {
        match s.trim().parse::<u32>() {
            Ok(p @ 1..=65535) => Ok(p as i32),
            _ => Err(format!(
                "ports: {:?} is not a port between 1 and 65535",
                s.trim()
            )),
        }
    };
    let mut mappings = Vec::new();
    let mut hosts = BTreeSet::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (container, host) = match item.split_once(':') {
            Some((c, h)) => (port(c)?, port(h)?),
            None => (port(item)?, port(item)?),
        };
        if !hosts.insert(host) {
            return Err(format!("ports: host port {host} is listed twice"));
        }
        mappings.push(PortMapping {
            container_port: container,
            host_port: host,
        });
    }
    if mappings.is_empty() {
        return Err("ports must list at least one port, e.g. \"25565:25565\"".into());
    }
    if mappings.len() > MAX_PORTS {
        return Err(format!("ports: at most {MAX_PORTS} ports"));
    }
    Ok(mappings)
}

/// Parses the primary port (`25565`, `"25565"` or `"25565:25565"`, whose host side
/// counts) and checks that it is one of the host ports.
pub fn parse_primary(value: &Value, ports: &[PortMapping]) -> Result<i32, String> {
    let port = primary_number(value)?;
    if ports.iter().any(|p| p.host_port == port) {
        Ok(port)
    } else {
        Err(format!(
            "primary port {port} is not one of the instance's ports"
        ))
    }
}

/// The host port a `primary` value names (`25565`, `"25565"`, `"25565:25565"`).
pub fn primary_number(value: &Value) -> Result<i32, String> {
    let text = match value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        _ => return Err("primary must be a port".into()),
    };
    let host = text.rsplit(':').next().unwrap_or_default();
    match host.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(p as i32),
        _ => Err(format!(
            "primary: {text:?} is not a port between 1 and 65535"
        )),
    }
}

/// Whether `name` can be an environment variable name.
pub fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

/// Parses `variables`: an object, or a JSON string holding one. Values become text.
pub fn parse_variables(value: Option<&Value>) -> Result<BTreeMap<String, String>, String> {
    let parsed;
    let object = match value {
        None => return Ok(BTreeMap::new()),
        Some(Value::Object(o)) => o,
        Some(Value::String(s)) if s.trim().is_empty() => return Ok(BTreeMap::new()),
        Some(Value::String(s)) => {
            parsed = serde_json::from_str::<Value>(s)
                .map_err(|_| "variables must be an object or a JSON string of one")?;
            parsed
                .as_object()
                .ok_or("variables must be an object or a JSON string of one")?
        }
        Some(_) => return Err("variables must be an object or a JSON string of one".into()),
    };
    if object.len() > MAX_VARIABLES {
        return Err(format!("variables: at most {MAX_VARIABLES}"));
    }
    let mut out = BTreeMap::new();
    for (k, v) in object {
        if !valid_env_name(k) {
            return Err(format!("variables: {k:?} is not a valid variable name"));
        }
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Null => continue,
            _ => {
                return Err(format!(
                    "variables: {k} must be a string, number or boolean"
                ));
            }
        };
        if text.len() > 4096 || text.contains('\0') {
            return Err(format!(
                "variables: {k} is too long or holds a NUL character"
            ));
        }
        out.insert(k.clone(), text);
    }
    Ok(out)
}

fn bad(message: impl Into<std::borrow::Cow<'static, str>>) -> ApiError {
    ApiError::bad_request(message)
}

fn memory(fields: &Fields) -> ApiResult<Option<i64>> {
    fields.integer("memory", 1, MAX_MEMORY).map_err(|_| {
        bad(format!(
            "memory must be a whole number of MiB between 1 and {MAX_MEMORY}"
        ))
    })
}

fn cpu(fields: &Fields) -> ApiResult<Option<f64>> {
    match fields.number("cpu")? {
        Some(cpu) if !(cpu > 0.0 && cpu <= MAX_CPU) => Err(bad(format!(
            "cpu must be a number of cores greater than 0 and at most {MAX_CPU}"
        ))),
        other => Ok(other),
    }
}

fn disk(fields: &Fields) -> ApiResult<Option<i64>> {
    fields.integer("disk", 1, MAX_DISK).map_err(|_| {
        bad(format!(
            "disk must be a whole number of MiB between 1 and {MAX_DISK}"
        ))
    })
}

fn ports(fields: &Fields) -> ApiResult<Option<Vec<PortMapping>>> {
    let text = match fields.get("ports") {
        None => return Ok(None),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => {
            return Err(bad(
                "ports must be a string such as \"25565:25565,25566:25566\"",
            ));
        }
    };
    if has_control(&text) || text.len() > 4096 {
        return Err(bad(
            "ports must be a string such as \"25565:25565,25566:25566\"",
        ));
    }
    parse_ports(&text).map(Some).map_err(bad)
}

/// Reads a deploy body (everything that needs no cluster to check).
pub fn deploy_request(fields: &Fields) -> ApiResult<DeployRequest> {
    fields.require(&[
        "image", "memory", "cpu", "ports", "nodeId", "name", "user", "primary",
    ])?;
    let name = fields.required_text("name", 256)?;
    let memory = memory(fields)?.ok_or_else(|| bad("Missing required field: memory"))?;
    let cpu = cpu(fields)?.ok_or_else(|| bad("Missing required field: cpu"))?;
    let disk = disk(fields)?;
    let ports = ports(fields)?
        .ok_or_else(|| bad("ports must be a string such as \"25565:25565,25566:25566\""))?;
    let primary_port =
        parse_primary(fields.get("primary").unwrap_or(&Value::Null), &ports).map_err(bad)?;
    let variables = parse_variables(fields.get("variables")).map_err(bad)?;
    Ok(DeployRequest {
        name,
        user_id: fields.required_text("user", 256)?,
        node_id: fields.required_text("nodeId", 253)?,
        image: fields.required_text("image", 1024)?,
        image_name: fields.text("imagename", 256)?,
        memory,
        cpu,
        disk,
        ports,
        primary_port,
        variables,
    })
}

/// Fields an edit may change; anything else in the body is refused (an owner or
/// a node is not changed by an edit).
const EDITABLE: [&str; 9] = [
    "name",
    "memory",
    "cpu",
    "disk",
    "image",
    "imagename",
    "ports",
    "primary",
    "variables",
];

/// Reads an edit body: any of the deploy fields, each checked as a deploy checks it.
pub fn edit_request(fields: &Fields) -> ApiResult<EditRequest> {
    if let Some(other) = fields.keys().find(|k| !EDITABLE.contains(&k.as_str())) {
        return Err(bad(format!(
            "{other} cannot be edited; editable fields: {}",
            EDITABLE.join(", ")
        )));
    }
    let req = EditRequest {
        name: fields.text("name", 256)?,
        memory: memory(fields)?,
        cpu: cpu(fields)?,
        disk: disk(fields)?,
        image: fields.text("image", 1024)?,
        image_name: fields.text("imagename", 256)?,
        ports: ports(fields)?,
        primary_port: fields
            .get("primary")
            .map(primary_number)
            .transpose()
            .map_err(bad)?,
        variables: fields
            .get("variables")
            .map(|v| parse_variables(Some(v)))
            .transpose()
            .map_err(bad)?,
    };
    if req.is_empty() {
        return Err(bad(format!(
            "Nothing to change: send any of {}",
            EDITABLE.join(", ")
        )));
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pm(c: i32, h: i32) -> PortMapping {
        PortMapping {
            container_port: c,
            host_port: h,
        }
    }

    #[test]
    fn ports_parse_pairs_and_bare_ports() {
        assert_eq!(
            parse_ports("25565:25565,25566:25567").expect("ok"),
            [pm(25565, 25565), pm(25566, 25567)]
        );
        assert_eq!(parse_ports(" 25565 ").expect("ok"), [pm(25565, 25565)]);
        assert_eq!(
            parse_ports("7777, 27015:27016").expect("ok"),
            [pm(7777, 7777), pm(27015, 27016)]
        );
        for bad in [
            "",
            ",",
            "0",
            "70000",
            "a:b",
            "1:2:3",
            "25565:25565,1:25565",
            "-1",
            "1.5",
        ] {
            assert!(parse_ports(bad).is_err(), "{bad:?}");
        }
        let many = (1..=65)
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert!(parse_ports(&many).is_err());
    }

    #[test]
    fn primary_is_one_of_the_host_ports() {
        let ports = [pm(25565, 25565), pm(8080, 30080)];
        assert_eq!(parse_primary(&json!(25565), &ports), Ok(25565));
        assert_eq!(parse_primary(&json!("25565"), &ports), Ok(25565));
        assert_eq!(parse_primary(&json!("8080:30080"), &ports), Ok(30080));
        assert!(parse_primary(&json!(8080), &ports).is_err());
        assert!(parse_primary(&json!("x"), &ports).is_err());
        assert!(parse_primary(&json!(null), &ports).is_err());
    }

    #[test]
    fn variables_come_as_objects_or_json_strings() {
        let expected = BTreeMap::from([
            ("VERSION".to_owned(), "1.21".to_owned()),
            ("EULA".to_owned(), "true".to_owned()),
        ]);
        assert_eq!(
            parse_variables(Some(&json!({ "VERSION": "1.21", "EULA": true }))),
            Ok(expected.clone())
        );
        assert_eq!(
            parse_variables(Some(&json!(r#"{"VERSION":"1.21","EULA":true}"#))),
            Ok(expected)
        );
        assert_eq!(parse_variables(None), Ok(BTreeMap::new()));
        assert!(parse_variables(Some(&json!("[1]"))).is_err());
        assert!(parse_variables(Some(&json!({ "BAD NAME": "x" }))).is_err());
        assert!(parse_variables(Some(&json!({ "A": { "nested": 1 } }))).is_err());
        assert!(parse_variables(Some(&json!(5))).is_err());
    }
}
