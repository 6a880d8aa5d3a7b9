//! A server's stats as Wings reports them: memory and CPU use from the cluster's
//! resource metrics API (`metrics.k8s.io`, served by metrics-server), the limits
//! from the Instance, the uptime from the server container's start, the state from
//! the Instance's power. Where `metrics.k8s.io` is absent, use is left out and the
//! rest is still there.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::controller::pod::SERVER_CONTAINER;
use crate::crd::Instance;

/// Bytes in a quantity of memory ("1536Ki", "64Mi", "1G", "1e3", "100").
pub fn memory_bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e')
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let factor: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        _ => return None,
    };
    let n: f64 = number.parse().ok()?;
    (n >= 0.0).then(|| (n * factor).round() as u64)
}

/// Cores in a quantity of CPU ("250m", "123456n", "12u", "2").
pub fn cpu_cores(q: &str) -> Option<f64> {
    let q = q.trim();
    let (number, factor) = match q.char_indices().last()? {
        (i, 'n') => (&q[..i], 1e-9),
        (i, 'u') => (&q[..i], 1e-6),
        (i, 'm') => (&q[..i], 1e-3),
        _ => (q, 1.0),
    };
    let n: f64 = number.parse().ok()?;
    (n >= 0.0).then_some(n * factor)
}

/// Use of the server container, from a PodMetrics object: (memory bytes, cores).
pub fn usage_of(metrics: &Value) -> Option<(u64, f64)> {
    let container = metrics
        .get("containers")?
        .as_array()?
        .iter()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(SERVER_CONTAINER))?;
    let usage = container.get("usage")?;
    Some((
        memory_bytes(usage.get("memory")?.as_str()?)?,
        cpu_cores(usage.get("cpu")?.as_str()?)?,
    ))
}

/// How long the server container has run, in milliseconds.
fn uptime_ms(pod: &Pod) -> u64 {
    let started = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == SERVER_CONTAINER))
        .and_then(|c| c.state.as_ref()?.running.as_ref()?.started_at.as_ref())
        .map(|t| t.0);
    started.map_or(0, |t| {
        Timestamp::now()
            .duration_since(t)
            .as_millis()
            .max(0)
            .try_into()
            .unwrap_or(0)
    })
}

/// Wings' stats object for `inst` now. `state` is the power in Wings' words.
pub async fn stats(client: &Client, namespace: &str, inst: &Instance, state: &str) -> Value {
    let name = inst.metadata.name.clone().unwrap_or_default();
    let limit = u64::try_from(inst.spec.memory).unwrap_or(0) * 1024 * 1024;
    let mut out = json!({
        "memory_limit_bytes": limit,
        "cpu_limit": inst.spec.cpu * 100.0,
        "state": state,
        "uptime": 0,
    });
    if state == "offline" {
        out["memory_bytes"] = json!(0);
        out["cpu_absolute"] = json!(0.0);
        return out;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    if let Ok(Some(pod)) = pods.get_opt(&name).await {
        out["uptime"] = json!(uptime_ms(&pod));
    }
    if let Some((memory, cores)) = usage(client, namespace, &name).await {
        out["memory_bytes"] = json!(memory);
        // Wings' cpu_absolute: percent of one core.
        out["cpu_absolute"] = json!((cores * 10_000.0).round() / 100.0);
    }
    out
}

/// The server container's use, when the metrics API serves it.
async fn usage(client: &Client, namespace: &str, name: &str) -> Option<(u64, f64)> {
    let path = format!("/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods/{name}");
    let req = http::Request::get(path).body(Vec::new()).ok()?;
    let metrics: Value = client.request(req).await.ok()?;
    usage_of(&metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_are_read_as_kubernetes_writes_them() {
        assert_eq!(memory_bytes("1536Ki"), Some(1536 * 1024));
        assert_eq!(memory_bytes("64Mi"), Some(64 << 20));
        assert_eq!(memory_bytes("1G"), Some(1_000_000_000));
        assert_eq!(memory_bytes("1e3"), Some(1000));
        assert_eq!(memory_bytes("100"), Some(100));
        assert_eq!(memory_bytes("12Xi"), None);
        assert_eq!(cpu_cores("250m"), Some(0.25));
        assert_eq!(cpu_cores("2"), Some(2.0));
        assert!((cpu_cores("123456789n").unwrap_or_default() - 0.123456789).abs() < 1e-12);
        assert_eq!(cpu_cores("-1"), None);
    }

    #[test]
    fn the_server_containers_use_is_found_in_pod_metrics() {
        let metrics = json!({ "containers": [
            { "name": "install", "usage": { "cpu": "1", "memory": "1Mi" } },
            { "name": "server", "usage": { "cpu": "50m", "memory": "2Mi" } } ] });
        assert_eq!(usage_of(&metrics), Some((2 << 20, 0.05)));
        assert_eq!(usage_of(&json!({ "containers": [] })), None);
    }
}
