//! The Pod of an Instance, as a pure function of the Instance, the Kubernetes node
//! it is pinned to, its catalog image and the operator's settings. Nothing here
//! talks to the cluster; `instance.rs` applies what this builds.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, NodeAffinity,
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod, PodSecurityContext, PodSpec,
    ResourceRequirements, SeccompProfile, SecurityContext, Toleration, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::crd::Instance;
use crate::names::{FIELD_NODE_NAME, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NODE, MANAGED_BY};
use crate::store::catalog::Image;

/// Where the game server's data lives in its containers.
pub const DATA_DIR: &str = "/app/data";
/// Name of the game server's container.
pub const SERVER_CONTAINER: &str = "server";
/// Name of the install init container.
pub const INSTALL_CONTAINER: &str = "install";
/// Annotation on the Pod: a digest of what of the Instance it was built from (see
/// [`pod_hash`]); a Pod whose digest differs from the Instance's is replaced.
pub const ANNOTATION_POD_HASH: &str = "berth.dev/pod-hash";
/// Annotation on the Pod: the restart request (`spec.restartRequestedAt`) it answers.
pub const ANNOTATION_RESTART_OF: &str = "berth.dev/restart-of";
/// Annotation on the Pod: the reinstall request (`spec.reinstall.requestedAt`) it answers.
pub const ANNOTATION_REINSTALL_OF: &str = "berth.dev/reinstall-of";
/// Name of the init container that hands the data folder to the game server's user.
pub const CHOWN_CONTAINER: &str = "chown-data";
const DATA_VOLUME: &str = "data";

/// Operator-wide settings of instance Pods (the chart's values).
#[derive(Clone, Debug, PartialEq)]
pub struct PodSettings {
    /// Image of the init container that fetches install files (needs `sh`, and
    /// `curl` or `wget`).
    pub init_image: String,
    /// Storage class for per-instance volume claims; `None` uses an emptyDir.
    pub storage_class: Option<String>,
    /// Disk of an instance that asked for none, in MiB.
    pub default_disk_mib: i64,
    /// uid (and gid) the game server runs as; `None` keeps the image's user.
    pub run_as_user: Option<i64>,
    /// Capabilities added back after dropping all (e.g. NET_BIND_SERVICE).
    pub add_capabilities: Vec<String>,
    /// Node selector added to every instance Pod.
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations added to every instance Pod.
    pub tolerations: Vec<Toleration>,
    /// Hand the data folder to `run_as_user` in a first init container that runs
    /// as root with only CAP_CHOWN and CAP_FOWNER: for storage that ignores the
    /// Pod's fsGroup (hostPath, many NFS provisioners).
    pub chown_data: bool,
    /// Seconds between SIGTERM and SIGKILL when the Pod is deleted.
    pub termination_grace_seconds: u32,
}

impl Default for PodSettings {
    fn default() -> Self {
        Self {
            init_image: "docker.io/curlimages/curl:8.11.1".to_owned(),
            storage_class: None,
            default_disk_mib: 10 * 1024,
            run_as_user: Some(1000),
            add_capabilities: Vec::new(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            chown_data: false,
            termination_grace_seconds: 30,
        }
    }
}

/// What one Pod of an Instance answers, beyond the Instance itself: the restart
/// and reinstall requests it was made for (recorded on it, so that a request is
/// done once however the status writes go).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Launch {
    /// The restart request (`spec.restartRequestedAt`, RFC 3339) it answers.
    pub restart_of: Option<String>,
    /// The reinstall request it carries out: its time (RFC 3339), and whether it
    /// empties the data folder first.
    pub reinstall: Option<(String, bool)>,
}

/// Why a Pod cannot be built (the Instance must change before it can run).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// A catalog install file would be written outside the data folder.
    #[error("install file path {0:?} must be a relative path inside the data folder")]
    InstallPath(String),
}

/// Fills `{{NAME}}` placeholders from `vars`; unknown placeholders stay as they are.
pub fn fill_placeholders(template: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                let key = after[..end].trim();
                match vars.get(key) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&rest[start..start + 2 + end + 2]),
                }
                rest = &after[end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn safe_relative_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\0')
        && path
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

/// Whether `value` may be a label value.
pub fn label_safe(value: &str) -> bool {
    value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && value
            .chars()
            .next()
            .is_none_or(|c| c.is_ascii_alphanumeric())
        && value
            .chars()
            .last()
            .is_none_or(|c| c.is_ascii_alphanumeric())
}

/// CPU cores as a Kubernetes quantity, in millicores (at least 1m).
pub fn cpu_quantity(cores: f64) -> Quantity {
    Quantity(format!("{}m", ((cores * 1000.0).round() as i64).max(1)))
}

/// The variables the game server and its install step see: the deploy's, plus
/// PRIMARY_PORT (the container side of the primary port) and SERVER_MEMORY (MiB).
pub fn variables(inst: &Instance) -> BTreeMap<String, String> {
    let mut vars = inst.spec.variables.clone();
    let primary = inst.spec.primary_container_port();
    vars.insert("PRIMARY_PORT".into(), primary.to_string());
    vars.insert("SERVER_MEMORY".into(), inst.spec.memory.to_string());
    vars
}

/// Name of the per-instance volume claim.
pub fn claim_name(inst: &Instance) -> String {
    format!("{}-data", inst.name_any())
}

fn owner(inst: &Instance) -> OwnerReference {
    OwnerReference {
        api_version: Instance::api_version(&()).into_owned(),
        kind: Instance::kind(&()).into_owned(),
        name: inst.name_any(),
        uid: inst.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn labels(inst: &Instance) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        (LABEL_INSTANCE.to_owned(), inst.name_any()),
    ]);
    if label_safe(&inst.spec.node) {
        labels.insert(LABEL_NODE.to_owned(), inst.spec.node.clone());
    }
    labels
}

fn disk_mib(inst: &Instance, settings: &PodSettings) -> i64 {
    inst.spec.disk.unwrap_or(settings.default_disk_mib)
}

/// The per-instance volume claim, when a storage class is configured.
pub fn build_claim(inst: &Instance, settings: &PodSettings) -> Option<PersistentVolumeClaim> {
    let class = settings.storage_class.clone()?;
    Some(PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(claim_name(inst)),
            namespace: inst.namespace(),
            labels: Some(labels(inst)),
            owner_references: Some(vec![owner(inst)]),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: Some(class),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(format!("{}Mi", disk_mib(inst, settings))),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    })
}

fn security_context(settings: &PodSettings) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: (!settings.add_capabilities.is_empty()).then(|| settings.add_capabilities.clone()),
        }),
        run_as_non_root: settings.run_as_user.map(|uid| uid != 0),
        run_as_user: settings.run_as_user,
        run_as_group: settings.run_as_user,
        ..SecurityContext::default()
    }
}

/// Requests equal to limits: the Pod gets exactly what it may use.
fn guaranteed(amounts: BTreeMap<String, Quantity>) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(amounts.clone()),
        limits: Some(amounts),
        ..ResourceRequirements::default()
    }
}

/// The data volume at DATA_DIR.
fn data_mount() -> Vec<VolumeMount> {
    vec![VolumeMount {
        name: DATA_VOLUME.into(),
        mount_path: DATA_DIR.into(),
        ..VolumeMount::default()
    }]
}

fn env(pairs: impl IntoIterator<Item = (String, String)>) -> Vec<EnvVar> {
    pairs
        .into_iter()
        .map(|(name, value)| EnvVar {
            name,
            value: Some(value),
            value_from: None,
        })
        .collect()
}

/// The install init container: fetches each catalog install file into the data
/// folder once. URIs (which hold client-supplied variables) are passed as
/// arguments, never spliced into the script, so they cannot inject commands.
fn install_container(
    image: Option<&Image>,
    vars: &BTreeMap<String, String>,
    settings: &PodSettings,
    reinstall: Option<bool>,
) -> Result<Option<Container>, BuildError> {
    let files = image.map(|i| i.install.as_slice()).unwrap_or_default();
    if files.is_empty() && reinstall != Some(true) {
        return Ok(None);
    }
    let mode = match reinstall {
        None => "install",
        Some(false) => "reinstall",
        Some(true) => "wipe",
    };
    let mut args = vec![
        "-c".to_owned(),
        concat!(
            "set -eu\n",
            // A reinstall fetches every file anew; a wipe first empties the folder.
            "if [ \"$INSTALL_MODE\" = wipe ]; then\n",
            "  echo \"wiping the data folder\"\n",
            "  find \"$DATA_DIR\" -mindepth 1 -maxdepth 1 -exec rm -rf {} +\n",
            "fi\n",
            "while [ $# -gt 1 ]; do\n",
            "  dest=\"$DATA_DIR/$2\"\n",
            "  if [ \"$INSTALL_MODE\" = reinstall ]; then rm -f \"$dest\"; fi\n",
            "  if [ ! -e \"$dest\" ]; then\n",
            "    mkdir -p \"$(dirname \"$dest\")\"\n",
            "    echo \"fetching $2\"\n",
            // curl where the image has it, else wget (busybox images have only
            // that). Not `wget -T`: busybox 1.35's (Debian 12) crashes with it.
            "    if command -v curl >/dev/null; then\n",
            "      curl -fsSL --retry 3 --max-time 600 -o \"$dest.part\" \"$1\"\n",
            "    elif command -v timeout >/dev/null; then\n",
            "      timeout 600 wget -q -O \"$dest.part\" \"$1\"\n",
            "    else\n",
            "      wget -q -O \"$dest.part\" \"$1\"\n",
            "    fi\n",
            "    mv \"$dest.part\" \"$dest\"\n",
            "  fi\n",
            "  shift 2\n",
            "done\n"
        )
        .to_owned(),
        INSTALL_CONTAINER.to_owned(),
    ];
    for file in files {
        if !safe_relative_path(&file.path) {
            return Err(BuildError::InstallPath(file.path.clone()));
        }
        args.push(fill_placeholders(&file.uri, vars));
        args.push(file.path.clone());
    }
    let limits = BTreeMap::from([
        ("cpu".to_owned(), Quantity("500m".into())),
        ("memory".to_owned(), Quantity("128Mi".into())),
    ]);
    Ok(Some(Container {
        name: INSTALL_CONTAINER.into(),
        image: Some(settings.init_image.clone()),
        command: Some(vec!["sh".into()]),
        args: Some(args),
        env: Some(env([
            ("DATA_DIR".to_owned(), DATA_DIR.to_owned()),
            ("INSTALL_MODE".to_owned(), mode.to_owned()),
        ])),
        resources: Some(guaranteed(limits)),
        security_context: Some(security_context(settings)),
        volume_mounts: Some(data_mount()),
        ..Container::default()
    }))
}

/// The init container that hands the data folder to the game server's user, for
/// storage that ignores fsGroup. Root, but with CAP_CHOWN and CAP_FOWNER only.
fn chown_container(settings: &PodSettings) -> Option<Container> {
    let uid = settings.run_as_user.filter(|_| settings.chown_data)?;
    let limits = BTreeMap::from([
        ("cpu".to_owned(), Quantity("100m".into())),
        ("memory".to_owned(), Quantity("32Mi".into())),
    ]);
    Some(Container {
        name: CHOWN_CONTAINER.into(),
        image: Some(settings.init_image.clone()),
        command: Some(vec!["sh".into()]),
        args: Some(vec![
            "-c".into(),
            format!("chown -R {uid}:{uid} \"$DATA_DIR\" && chmod u+rwx \"$DATA_DIR\""),
        ]),
        env: Some(env([("DATA_DIR".to_owned(), DATA_DIR.to_owned())])),
        resources: Some(guaranteed(limits)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: Some(vec!["CHOWN".into(), "FOWNER".into()]),
            }),
            run_as_non_root: Some(false),
            run_as_user: Some(0),
            run_as_group: Some(0),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(data_mount()),
        ..Container::default()
    })
}

/// A digest of what of the Instance a running Pod is built from, CPU aside (it is
/// resized in place): image, memory, disk, ports, variables, and the Kubernetes
/// node. A Pod whose digest differs is replaced, gracefully. Operator settings and
/// catalog changes are not in it: they reach new Pods without restarting servers.
pub fn pod_hash(inst: &Instance, kube_node: &str) -> String {
    use sha2::{Digest, Sha256};
    let spec = &inst.spec;
    let basis = serde_json::json!({
        "image": spec.image, "imageName": spec.image_name, "memory": spec.memory,
        "disk": spec.disk, "ports": spec.ports, "primaryPort": spec.primary_port,
        "variables": spec.variables, "node": spec.node, "kubeNode": kube_node,
    });
    Sha256::digest(basis.to_string().as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The Pod of `inst`, pinned to Kubernetes node `kube_node`, for `launch`.
pub fn build_pod(
    inst: &Instance,
    kube_node: &str,
    image: Option<&Image>,
    settings: &PodSettings,
    launch: &Launch,
) -> Result<Pod, BuildError> {
    let vars = variables(inst);
    // Environment: the image's Env (placeholders filled), then the variables.
    let mut environment: BTreeMap<String, String> = image
        .map(|i| {
            i.env
                .iter()
                .map(|(k, v)| (k.clone(), fill_placeholders(v, &vars)))
                .collect()
        })
        .unwrap_or_default();
    environment.extend(vars.clone());
    if let Some(cmd) = image
        .and_then(|i| i.document.get("Cmd"))
        .and_then(|c| c.as_str())
    {
        // The startup command, for images that read it (the Pterodactyl/Skyport convention).
        environment.insert("STARTUP".into(), fill_placeholders(cmd, &vars));
    }
    let install = install_container(
        image,
        &vars,
        settings,
        launch.reinstall.as_ref().map(|r| r.1),
    )?;
    let init: Vec<Container> = chown_container(settings)
        .into_iter()
        .chain(install)
        .collect();

    let mut ports = Vec::with_capacity(inst.spec.ports.len() * 2);
    for p in &inst.spec.ports {
        for protocol in ["TCP", "UDP"] {
            ports.push(ContainerPort {
                container_port: p.container_port,
                host_port: Some(p.host_port),
                protocol: Some(protocol.into()),
                ..ContainerPort::default()
            });
        }
    }
    let resources = BTreeMap::from([
        ("cpu".to_owned(), cpu_quantity(inst.spec.cpu)),
        (
            "memory".to_owned(),
            Quantity(format!("{}Mi", inst.spec.memory)),
        ),
    ]);
    let data = match build_claim(inst, settings) {
        Some(claim) => Volume {
            name: DATA_VOLUME.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.metadata.name.unwrap_or_default(),
                read_only: None,
            }),
            ..Volume::default()
        },
        None => Volume {
            name: DATA_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity(format!("{}Mi", disk_mib(inst, settings)))),
                medium: None,
            }),
            ..Volume::default()
        },
    };
    let server = Container {
        name: SERVER_CONTAINER.into(),
        image: Some(inst.spec.image.clone()),
        env: Some(env(environment)),
        ports: Some(ports),
        resources: Some(guaranteed(resources)),
        security_context: Some(security_context(settings)),
        volume_mounts: Some(data_mount()),
        working_dir: Some(DATA_DIR.into()),
        // A console to attach to, as game servers expect.
        stdin: Some(true),
        tty: Some(true),
        ..Container::default()
    };
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(inst.name_any()),
            namespace: inst.namespace(),
            labels: Some(labels(inst)),
            annotations: Some(
                [
                    Some((ANNOTATION_POD_HASH.to_owned(), pod_hash(inst, kube_node))),
                    launch
                        .restart_of
                        .clone()
                        .map(|t| (ANNOTATION_RESTART_OF.to_owned(), t)),
                    launch
                        .reinstall
                        .clone()
                        .map(|(t, _)| (ANNOTATION_REINSTALL_OF.to_owned(), t)),
                ]
                .into_iter()
                .flatten()
                .collect(),
            ),
            owner_references: Some(vec![owner(inst)]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            affinity: Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        // By name, as the DaemonSet controller pins: the hostname
                        // label need not equal the node's name.
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: None,
                            match_fields: Some(vec![NodeSelectorRequirement {
                                key: FIELD_NODE_NAME.into(),
                                operator: "In".into(),
                                values: Some(vec![kube_node.to_owned()]),
                            }]),
                        }],
                    }),
                    preferred_during_scheduling_ignored_during_execution: None,
                }),
                ..Affinity::default()
            }),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            // A server that exits 0 (after its StopCommand) stays stopped; one that
            // fails is restarted in place. One that exits 0 while it is meant to
            // run is a crash the controller answers with a new Pod.
            restart_policy: Some("OnFailure".into()),
            termination_grace_period_seconds: Some(settings.termination_grace_seconds.into()),
            security_context: Some(PodSecurityContext {
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    localhost_profile: None,
                }),
                fs_group: settings.run_as_user,
                ..PodSecurityContext::default()
            }),
            node_selector: (!settings.node_selector.is_empty())
                .then(|| settings.node_selector.clone()),
            tolerations: (!settings.tolerations.is_empty()).then(|| settings.tolerations.clone()),
            init_containers: (!init.is_empty()).then_some(init),
            containers: vec![server],
            volumes: Some(vec![data]),
            ..PodSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::catalog;
    use serde_json::json;

    fn instance() -> Instance {
        serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Instance",
            "metadata": { "name": "a1b2c3d4", "namespace": "games", "uid": "uid-1", "generation": 3 },
            "spec": {
                "displayName": "Survival", "userId": "1163853373418598482", "image": "ghcr.io/skyportlabs/images:java21",
                "imageName": "Paper", "node": "5f0c7d2e-0000-4000-8000-000000000001",
                "memory": 2048, "cpu": 1.5, "disk": 4096,
                "ports": [{ "containerPort": 25565, "hostPort": 25565 }, { "containerPort": 25575, "hostPort": 30075 }],
                "primaryPort": 25565,
                "variables": { "MINECRAFT_VERSION": "1.21.1", "BUILD_NUMBER": "130" }
            }
        }))
        .expect("instance fixture")
    }

    fn paper() -> catalog::Image {
        catalog::parse(json!({
            "Id": "paper", "Name": "Paper", "Image": "ghcr.io/skyportlabs/images:java21",
            "Cmd": "java -Xmx{{SERVER_MEMORY}}M -jar server.jar --port {{PRIMARY_PORT}}",
            "Env": ["EULA=true", "JAR={{MINECRAFT_VERSION}}.jar"],
            "Scripts": { "Install": [{ "Uri": "https://example.invalid/paper-{{MINECRAFT_VERSION}}-{{BUILD_NUMBER}}.jar", "Path": "server.jar" }] }
        }))
        .expect("image fixture")
    }

    #[test]
    fn the_pod_matches_its_snapshot() {
        let pod = build_pod(
            &instance(),
            "kwok-node-2",
            Some(&paper()),
            &PodSettings::default(),
            &Launch::default(),
        )
        .expect("pod");
        let yaml = serde_yaml::to_string(&pod).expect("yaml");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/controller/snapshots/pod.yaml");
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            std::fs::write(&path, &yaml).expect("write snapshot");
        }
        let expected =
            std::fs::read_to_string(&path).expect("snapshot exists (UPDATE_SNAPSHOTS=1 writes it)");
        assert_eq!(
            yaml, expected,
            "Pod differs from src/controller/snapshots/pod.yaml; UPDATE_SNAPSHOTS=1 after checking"
        );
    }

    #[test]
    fn the_pod_is_pinned_limited_and_hardened() {
        let pod = build_pod(
            &instance(),
            "kwok-node-2",
            Some(&paper()),
            &PodSettings::default(),
            &Launch::default(),
        )
        .expect("pod");
        let pinned_to = pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref()?.node_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .and_then(|r| r.node_selector_terms.first()?.match_fields.as_ref())
            .and_then(|f| f.iter().find(|e| e.key == FIELD_NODE_NAME)?.values.clone());
        assert_eq!(pinned_to, Some(vec!["kwok-node-2".to_owned()]));
        let spec = pod.spec.as_ref().expect("spec");
        let server = &spec.containers[0];
        let res = server.resources.as_ref().expect("resources");
        assert_eq!(res.requests, res.limits, "requests = limits");
        assert_eq!(res.limits.as_ref().expect("limits")["cpu"].0, "1500m");
        assert_eq!(res.limits.as_ref().expect("limits")["memory"].0, "2048Mi");
        let ports: Vec<(i32, Option<i32>, Option<&str>)> = server
            .ports
            .iter()
            .flatten()
            .map(|p| (p.container_port, p.host_port, p.protocol.as_deref()))
            .collect();
        assert_eq!(
            ports,
            [
                (25565, Some(25565), Some("TCP")),
                (25565, Some(25565), Some("UDP")),
                (25575, Some(30075), Some("TCP")),
                (25575, Some(30075), Some("UDP"))
            ]
        );
        let env: BTreeMap<&str, &str> = server
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or_default()))
            .collect();
        assert_eq!(env["PRIMARY_PORT"], "25565");
        assert_eq!(env["EULA"], "true");
        assert_eq!(env["JAR"], "1.21.1.jar");
        assert_eq!(
            env["STARTUP"],
            "java -Xmx2048M -jar server.jar --port 25565"
        );
        let sc = server.security_context.as_ref().expect("security context");
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_owned()])
        );
        assert_eq!(
            spec.security_context
                .as_ref()
                .and_then(|s| s.seccomp_profile.as_ref())
                .map(|p| p.type_.as_str()),
            Some("RuntimeDefault")
        );
        let init = &spec.init_containers.as_ref().expect("init")[0];
        let args = init.args.as_ref().expect("args");
        assert_eq!(
            &args[args.len() - 2..],
            ["https://example.invalid/paper-1.21.1-130.jar", "server.jar"]
        );
        assert_eq!(
            pod.metadata.owner_references.as_ref().expect("owner")[0].uid,
            "uid-1"
        );
        let volume = &spec.volumes.as_ref().expect("volumes")[0];
        assert_eq!(
            volume.empty_dir.as_ref().and_then(|e| e.size_limit.clone()),
            Some(Quantity("4096Mi".into()))
        );
    }

    #[test]
    fn a_storage_class_gives_a_claim_sized_by_disk() {
        let settings = PodSettings {
            storage_class: Some("fast".into()),
            ..PodSettings::default()
        };
        let inst = instance();
        let claim = build_claim(&inst, &settings).expect("claim");
        assert_eq!(claim.metadata.name.as_deref(), Some("a1b2c3d4-data"));
        let requests = claim
            .spec
            .and_then(|s| s.resources)
            .and_then(|r| r.requests)
            .expect("requests");
        assert_eq!(requests["storage"].0, "4096Mi");
        let pod = build_pod(&inst, "n", None, &settings, &Launch::default()).expect("pod");
        let volume = &pod.spec.expect("spec").volumes.expect("volumes")[0];
        assert_eq!(
            volume
                .persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.as_str()),
            Some("a1b2c3d4-data")
        );
    }

    #[test]
    fn install_paths_may_not_leave_the_data_folder() {
        for bad in ["../etc/passwd", "/etc/passwd", "a/../../b", ""] {
            let mut image = paper();
            image.install[0].path = bad.into();
            assert_eq!(
                build_pod(
                    &instance(),
                    "n",
                    Some(&image),
                    &PodSettings::default(),
                    &Launch::default()
                )
                .err(),
                Some(BuildError::InstallPath(bad.into()))
            );
        }
    }

    #[test]
    fn placeholders_are_filled_and_unknown_ones_kept() {
        let vars = BTreeMap::from([
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "x y".to_owned()),
        ]);
        assert_eq!(
            fill_placeholders("{{A}}-{{ B }}-{{C}}-{{", &vars),
            "1-x y-{{C}}-{{"
        );
        assert_eq!(fill_placeholders("none", &vars), "none");
    }

    #[test]
    fn label_values() {
        assert!(label_safe("5f0c7d2e-0000-4000-8000-000000000001"));
        assert!(!label_safe("has space"));
        assert!(!label_safe(&"x".repeat(64)));
    }
}
