//! The image catalog: Skyport-format image documents kept in ConfigMaps labelled
//! `berth.dev/catalog`, one document per key (Skyport admins' JSON files, unchanged).
//! Documents are parsed when the ConfigMaps change, not per request; a malformed
//! one is logged and skipped.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use serde_json::Value;
use tracing::warn;

use super::informer::Informer;

/// One file the install step fetches into the data folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallFile {
    /// Where to fetch it from; may hold `{{Variable}}` placeholders.
    pub uri: String,
    /// Path under the data folder.
    pub path: String,
}

/// A variable of an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variable {
    /// Value used when the deploy does not give one.
    pub default: Option<String>,
    /// Whether a deploy must give it (when it has no default).
    pub required: bool,
}

/// A parsed catalog entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    /// The document as the admin wrote it; what `GET /api/images` returns.
    pub document: Value,
    /// `Id`.
    pub id: Option<String>,
    /// `Name`.
    pub name: String,
    /// `Image`: the container image reference.
    pub image: String,
    /// `AltImages`: other references a deploy may pick.
    pub alt_images: Vec<String>,
    /// `Env`: `KEY=value` entries.
    pub env: Vec<(String, String)>,
    /// `Variables`.
    pub variables: BTreeMap<String, Variable>,
    /// `Scripts.Install`.
    pub install: Vec<InstallFile>,
    /// `StopCommand`: typed into the console to stop the server (`^C`: Ctrl-C).
    pub stop_command: Option<String>,
    /// `StopTimeout` (seconds; Berth's addition): how long a server may take to stop
    /// by itself before its Pod is deleted.
    pub stop_timeout: Option<std::time::Duration>,
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Parses one Skyport image document. `Name` and `Image` are required.
pub fn parse(document: Value) -> Result<Image, String> {
    let obj = document.as_object().ok_or("not a JSON object")?;
    let required = |key: &str| {
        obj.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .map(str::to_owned)
            .ok_or(format!("missing string field {key:?}"))
    };
    let name = required("Name")?;
    let image = required("Image")?;
    let strings = |key: &str| -> Vec<String> {
        obj.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let env = strings("Env")
        .into_iter()
        .filter_map(|e| e.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let variables = obj
        .get("Variables")
        .and_then(Value::as_object)
        .map(|vars| {
            vars.iter()
                .map(|(k, v)| {
                    let default = v.get("default").and_then(text);
                    let required = v.get("required").and_then(Value::as_bool).unwrap_or(false);
                    (k.clone(), Variable { default, required })
                })
                .collect()
        })
        .unwrap_or_default();
    let install = obj
        .get("Scripts")
        .and_then(|s| s.get("Install"))
        .and_then(Value::as_array)
        .map(|files| {
            files
                .iter()
                .filter_map(|f| {
                    Some(InstallFile {
                        uri: f.get("Uri")?.as_str()?.to_owned(),
                        path: f.get("Path")?.as_str()?.to_owned(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Image {
        stop_command: obj
            .get("StopCommand")
            .and_then(Value::as_str)
            .filter(|c| !c.trim().is_empty())
            .map(str::to_owned),
        stop_timeout: obj
            .get("StopTimeout")
            .and_then(|t| t.as_u64().or_else(|| t.as_str()?.trim().parse().ok()))
            .map(std::time::Duration::from_secs),
        id: obj.get("Id").and_then(text),
        alt_images: strings("AltImages"),
        name,
        image,
        env,
        variables,
        install,
        document,
    })
}

/// The parsed catalog, rebuilt whenever its ConfigMaps change.
#[derive(Clone, Default)]
pub struct Catalog {
    images: Arc<RwLock<Arc<Vec<Arc<Image>>>>>,
}

impl Catalog {
    /// Every image, ordered by ConfigMap and key.
    pub fn list(&self) -> Arc<Vec<Arc<Image>>> {
        self.images
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The image a deploy names, matched by `Image`, `Id`, `Name` or one of its
    /// `AltImages`; with the container image reference to run.
    pub fn find(&self, reference: &str) -> Option<(Arc<Image>, String)> {
        let images = self.list();
        let by = |f: &dyn Fn(&Image) -> bool| images.iter().find(|i| f(i)).cloned();
        if let Some(i) = by(&|i| {
            i.image == reference || i.id.as_deref() == Some(reference) || i.name == reference
        }) {
            let image = i.image.clone();
            return Some((i, image));
        }
        by(&|i| i.alt_images.iter().any(|a| a == reference)).map(|i| (i, reference.to_owned()))
    }

    /// Rebuilds from the catalog ConfigMaps.
    pub fn rebuild(&self, configmaps: &[Arc<ConfigMap>]) {
        let mut images = Vec::new();
        for cm in configmaps {
            for (key, raw) in cm.data.iter().flatten() {
                let parsed = serde_json::from_str::<Value>(raw)
                    .map_err(|e| e.to_string())
                    .and_then(parse);
                match parsed {
                    Ok(image) => images.push(Arc::new(image)),
                    Err(e) => {
                        warn!(configmap = %cm.name_any(), %key, error = %e, "skipping malformed catalog image")
                    }
                }
            }
        }
        *self.images.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(images);
    }

    /// Keeps the catalog in step with `cache` until the process ends.
    pub async fn follow(self, cache: Informer<ConfigMap>) {
        let mut changes = cache.changes();
        loop {
            self.rebuild(&cache.list());
            if changes.changed().await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paper() -> Value {
        json!({
            "Id": "2a1b3c", "Name": "Minecraft: Paper", "Image": "ghcr.io/skyport/java:21",
            "AltImages": ["ghcr.io/skyport/java:17"],
            "Env": ["EULA=true", "SERVER_JAR=server.jar"],
            "Scripts": { "Install": [{ "Uri": "https://example.invalid/paper-{{VERSION}}.jar", "Path": "server.jar" }] },
            "Variables": { "VERSION": { "type": "text", "default": "1.21", "required": true } }
        })
    }

    #[test]
    fn parses_a_skyport_document() {
        let image = parse(paper()).expect("valid");
        assert_eq!(image.name, "Minecraft: Paper");
        assert_eq!(
            image.env,
            [
                ("EULA".into(), "true".into()),
                ("SERVER_JAR".into(), "server.jar".into())
            ]
        );
        assert_eq!(image.install[0].path, "server.jar");
        assert_eq!(
            image.variables["VERSION"],
            Variable {
                default: Some("1.21".into()),
                required: true
            }
        );
    }

    #[test]
    fn malformed_documents_are_refused_with_a_reason() {
        assert!(parse(json!([1, 2])).is_err());
        assert!(parse(json!({ "Name": "x" })).unwrap_err().contains("Image"));
        assert!(
            parse(json!({ "Name": "", "Image": "y" }))
                .unwrap_err()
                .contains("Name")
        );
    }

    #[test]
    fn find_matches_image_id_name_and_alt_images_and_skips_bad_documents() {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": { "name": "catalog" },
            "data": { "paper.json": paper().to_string(), "broken.json": "{not json", "empty.json": "{}" }
        }))
        .expect("cm");
        let catalog = Catalog::default();
        catalog.rebuild(&[Arc::new(cm)]);
        assert_eq!(catalog.list().len(), 1);
        for reference in ["ghcr.io/skyport/java:21", "2a1b3c", "Minecraft: Paper"] {
            assert_eq!(
                catalog.find(reference).map(|(_, r)| r).as_deref(),
                Some("ghcr.io/skyport/java:21")
            );
        }
        assert_eq!(
            catalog
                .find("ghcr.io/skyport/java:17")
                .map(|(_, r)| r)
                .as_deref(),
            Some("ghcr.io/skyport/java:17")
        );
        assert!(catalog.find("nginx").is_none());
    }
}
