//! Power: what to do with an Instance's Pod, given what its spec asks (run, stop,
//! kill, restart, reinstall, a changed shape, a changed CPU) and how its Pod is
//! ([`step`], pure), and the graceful stop, which runs as a task of its own
//! ([`Stopper`]): the image's StopCommand typed into the server's console, its
//! stop timeout to exit by itself, then the Pod deleted (SIGTERM, then its grace
//! period). Data and host-port claims belong to the Instance, so they stay while
//! it is stopped and a start finds them again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, AttachParams, DeleteParams, Preconditions};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::events::{EventType, Events, Happening};
use super::observed::ObservedPod;
use super::pod::{
    ANNOTATION_POD_HASH, ANNOTATION_REINSTALL_OF, ANNOTATION_RESTART_OF, Launch, SERVER_CONTAINER,
};
use crate::crd::{Instance, Power};
use crate::store::Informer;

/// How long typing into a console waits for the console's answer (its echo).
const ECHO_WAIT: Duration = Duration::from_secs(2);

/// Why a running server is stopped gracefully.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// `spec.power` says Stopped.
    Stop,
    /// A restart was requested: a new Pod follows.
    Restart,
    /// A reinstall was requested: a new Pod with the install step follows.
    Reinstall,
    /// The Pod's shape changed (image, memory, ports, ...): a new Pod follows.
    Change,
}

impl Why {
    /// For Events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Restart => "restart",
            Self::Reinstall => "reinstall",
            Self::Change => "change",
        }
    }
}

/// What to do with the Pod now.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Nothing.
    Keep,
    /// Make the Pod, answering these requests.
    Create(Launch),
    /// Stop the server gracefully; what follows comes from the spec.
    Stop(Why),
    /// Delete the Pod at once (`spec.power` Killed).
    Kill,
    /// Delete the Pod with its grace period (it ended, or the instance is suspended).
    Remove(&'static str),
    /// Change the game server's CPU in place (the Pod `resize` subresource).
    Resize(f64),
}

/// What [`step`] decides from.
#[derive(Debug)]
pub struct Facts<'a> {
    /// The Instance.
    pub inst: &'a Instance,
    /// Its Pod, if any.
    pub pod: Option<&'a ObservedPod>,
    /// The Kubernetes node to pin to, when known.
    pub kube_node: Option<&'a str>,
    /// Whether a graceful stop of this Instance is under way.
    pub stopping: bool,
}

fn parse(t: &str) -> Option<Timestamp> {
    t.parse().ok()
}

/// The later of a status acknowledgement and a Pod's annotation.
fn acknowledged(status: Option<&Time>, pod: Option<&str>) -> Option<Timestamp> {
    let from_pod = pod.and_then(parse);
    match (status.map(|t| t.0), from_pod) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The restart request not yet answered, if any.
pub fn restart_pending(inst: &Instance, pod: Option<&ObservedPod>) -> Option<Timestamp> {
    let wanted = inst.spec.restart_requested_at.as_ref()?.0;
    let done = acknowledged(
        inst.status.as_ref().and_then(|s| s.restarted_at.as_ref()),
        pod.and_then(|p| p.annotation(ANNOTATION_RESTART_OF)),
    );
    (done.is_none_or(|d| wanted > d)).then_some(wanted)
}

/// The reinstall request not yet carried out, if any, and whether it wipes.
pub fn reinstall_pending(inst: &Instance, pod: Option<&ObservedPod>) -> Option<(Timestamp, bool)> {
    let wanted = inst.spec.reinstall.as_ref()?;
    let done = acknowledged(
        inst.status.as_ref().and_then(|s| s.reinstalled_at.as_ref()),
        pod.and_then(|p| p.annotation(ANNOTATION_REINSTALL_OF)),
    );
    (done.is_none_or(|d| wanted.requested_at.0 > d)).then_some((wanted.requested_at.0, wanted.wipe))
}

/// The requests a new Pod answers: the latest restart request (so it counts as
/// done), and a pending reinstall.
fn launch(inst: &Instance) -> Launch {
    Launch {
        restart_of: inst
            .spec
            .restart_requested_at
            .as_ref()
            .map(|t| t.0.to_string()),
        reinstall: reinstall_pending(inst, None).map(|(t, wipe)| (t.to_string(), wipe)),
    }
}

/// What to do with the Pod (pure).
pub fn step(f: &Facts) -> Step {
    let inst = f.inst;
    let Some(pod) = f.pod else {
        let runs = !inst.spec.suspended && inst.spec.power == Power::Running;
        return match (runs, f.kube_node) {
            (true, Some(_)) => Step::Create(launch(inst)),
            _ => Step::Keep,
        };
    };
    if pod.metadata.deletion_timestamp.is_some() {
        // Going already; what follows comes once it is gone. A kill cuts a
        // graceful deletion short (a second delete may shorten the grace).
        let graceful = pod.metadata.deletion_grace_period_seconds != Some(0);
        return if inst.spec.power == Power::Killed && graceful {
            Step::Kill
        } else {
            Step::Keep
        };
    }
    if inst.spec.suspended {
        return Step::Remove("Suspended");
    }
    match inst.spec.power {
        Power::Killed => return Step::Kill,
        Power::Stopped if pod.ended() => return Step::Remove("Stopped"),
        Power::Stopped if f.stopping => return Step::Keep,
        Power::Stopped => return Step::Stop(Why::Stop),
        Power::Running => {}
    }
    if pod.ended() {
        // Asked to stop on the way to a new Pod, it did; else it crashed.
        return Step::Remove(if f.stopping { "Stopped" } else { "PodEnded" });
    }
    if f.stopping {
        return Step::Keep;
    }
    if restart_pending(inst, Some(pod)).is_some() {
        return Step::Stop(Why::Restart);
    }
    if reinstall_pending(inst, Some(pod)).is_some() {
        return Step::Stop(Why::Reinstall);
    }
    let desired = f.kube_node.map(|n| super::pod::pod_hash(inst, n));
    if desired.is_some() && pod.annotation(ANNOTATION_POD_HASH) != desired.as_deref() {
        return Step::Stop(Why::Change);
    }
    match pod.server_cpu() {
        Some(cpu) if (cpu - inst.spec.cpu).abs() >= 0.0005 => Step::Resize(inst.spec.cpu),
        _ => Step::Keep,
    }
}

/// The text typed into the console to stop a server: Skyport's `^C` means Ctrl-C
/// (the TTY turns it into SIGINT); anything else is a command line.
pub fn stop_input(command: &str) -> Option<String> {
    match command.trim() {
        "" => None,
        "^C" | "^c" => Some("\u{3}".to_owned()),
        other => Some(format!("{other}\n")),
    }
}

/// Reads the console until it shows `input` echoed (a TTY shows Ctrl-C as `^C`).
async fn echoed(out: &mut (impl tokio::io::AsyncRead + Unpin), input: &str) {
    let echo = if input == "\u{3}" {
        "^C"
    } else {
        input.trim_end()
    };
    if echo.is_empty() {
        return;
    }
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while let Ok(n) = out.read(&mut buf).await {
        if n == 0 {
            return;
        }
        seen.extend_from_slice(&buf[..n]);
        if seen.windows(echo.len()).any(|w| w == echo.as_bytes()) {
            return;
        }
        // Only the tail can still hold the start of the echo.
        let keep = seen.len().saturating_sub(echo.len());
        seen.drain(..keep);
    }
}

/// A graceful stop under way.
struct Running {
    handle: tokio::task::JoinHandle<()>,
}

/// Graceful stops: one task per Instance at most; the tasks end with the
/// controllers (aborted when the Stopper is dropped with them, as when this
/// process stops leading).
pub struct Stopper {
    job: Job,
    timeout: Duration,
    tasks: Mutex<HashMap<String, Running>>,
}

/// What a stop task works with (cheap clones: a task must not keep the Stopper
/// alive, or dropping it could not abort the task).
#[derive(Clone)]
struct Job {
    client: Client,
    namespace: String,
    pods: Informer<ObservedPod>,
    events: Events,
    /// Wakes the Instance once its stop is over.
    done: mpsc::UnboundedSender<ObjectRef<Instance>>,
}

impl Drop for Stopper {
    fn drop(&mut self) {
        for (_, t) in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            t.handle.abort();
        }
    }
}

impl Stopper {
    /// Stops through `client`, waiting `timeout` (unless the catalog says otherwise),
    /// and tells `done` when a stop is over.
    pub fn new(
        client: Client,
        namespace: &str,
        pods: Informer<ObservedPod>,
        events: Events,
        timeout: Duration,
        done: mpsc::UnboundedSender<ObjectRef<Instance>>,
    ) -> Self {
        Self {
            job: Job {
                client,
                namespace: namespace.to_owned(),
                pods,
                events,
                done,
            },
            timeout,
            tasks: Mutex::default(),
        }
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a graceful stop of Instance `name` is under way.
    pub fn is_stopping(&self, name: &str) -> bool {
        let mut tasks = self.tasks();
        match tasks.get(name) {
            Some(t) if t.handle.is_finished() => {
                tasks.remove(name);
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Starts a graceful stop of `inst`'s Pod `pod` (unless one is under way):
    /// `command` typed into its console, then up to `timeout` (or the default).
    pub fn start(
        &self,
        inst: &Instance,
        pod: &ObservedPod,
        command: Option<String>,
        timeout: Option<Duration>,
        why: Why,
    ) {
        let name = inst.name_any();
        if self.is_stopping(&name) {
            return;
        }
        let job = self.job.clone();
        let regarding = inst.object_ref(&());
        let instance = ObjectRef::from_obj(inst);
        let uid = pod.uid();
        let timeout = timeout.unwrap_or(self.timeout);
        let task_name = name.clone();
        let handle = tokio::spawn(async move {
            job.stop(&task_name, uid, command, timeout, why, regarding)
                .await;
            let _ = job.done.send(instance);
        });
        self.tasks().insert(name, Running { handle });
    }

    /// Ends a graceful stop of Instance `name`, if one is under way (a kill
    /// does not wait for it).
    pub fn cancel(&self, name: &str) {
        if let Some(t) = self.tasks().remove(name) {
            t.handle.abort();
        }
    }

    /// Deletes this very Pod (uid precondition), with `grace` seconds or its own.
    pub async fn delete(&self, name: &str, uid: Option<String>, grace: Option<u32>) {
        self.job.delete(name, uid, grace).await;
    }
}

impl Job {
    async fn stop(
        &self,
        name: &str,
        uid: Option<String>,
        command: Option<String>,
        timeout: Duration,
        why: Why,
        regarding: k8s_openapi::api::core::v1::ObjectReference,
    ) {
        let started = Instant::now();
        let say = |type_, reason: &str, note: String| {
            self.events
                .publish(regarding.clone(), Happening::new(type_, reason, note))
        };
        let typed = match &command {
            Some(input) => self.type_into(name, input).await,
            None => Err("the image has no StopCommand".to_owned()),
        };
        match (&command, &typed) {
            (Some(input), Ok(())) => say(
                EventType::Normal,
                "Stopping",
                format!(
                    "{}: sent `{}` to the server",
                    why.as_str(),
                    input.trim_end().escape_default()
                ),
            ),
            (None, Ok(())) => {}
            (_, Err(e)) => say(
                EventType::Normal,
                "Stopping",
                format!("{}: {e}; asking the Pod to stop (SIGTERM)", why.as_str()),
            ),
        }
        let exited = typed.is_ok() && self.wait_exit(name, uid.as_deref(), timeout).await;
        if exited {
            say(
                EventType::Normal,
                "Stopped",
                format!("Stopped after {:.1} s", started.elapsed().as_secs_f32()),
            );
        } else if typed.is_ok() {
            say(
                EventType::Warning,
                "StopTimedOut",
                format!(
                    "Stop timed out after {} s: asking the Pod to stop (SIGTERM, then SIGKILL after its grace period)",
                    timeout.as_secs()
                ),
            );
        }
        self.delete(name, uid, None).await;
    }

    /// Types `input` into the game server's console (an attach with a TTY, as
    /// the container has one).
    async fn type_into(&self, name: &str, input: &str) -> Result<(), String> {
        let pods: Api<k8s_openapi::api::core::v1::Pod> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let params = AttachParams::interactive_tty().container(SERVER_CONTAINER);
        let mut attached =
            tokio::time::timeout(Duration::from_secs(10), pods.attach(name, &params))
                .await
                .map_err(|_| "attaching to the console timed out".to_owned())?
                .map_err(|e| format!("attaching to the console failed ({e})"))?;
        let mut stdin = attached
            .stdin()
            .ok_or_else(|| "the console has no stdin".to_owned())?;
        let mut stdout = attached.stdout();
        let written = async {
            stdin.write_all(input.as_bytes()).await?;
            stdin.flush().await
        };
        let result = tokio::time::timeout(Duration::from_secs(10), written).await;
        // Written to the attach is not yet delivered: the attach's own task sends
        // it, and ending the attach now could drop it. The TTY's echo of the input
        // says it arrived; a console that does not echo gets a moment.
        if let (Ok(Ok(())), Some(out)) = (&result, stdout.as_mut()) {
            let _ = tokio::time::timeout(ECHO_WAIT, echoed(out, input)).await;
        }
        drop(stdin);
        attached.abort();
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("typing into the console failed ({e})")),
            Err(_) => Err("typing into the console timed out".to_owned()),
        }
    }

    /// Waits until the server's container has exited (or its Pod is gone), up to
    /// `timeout`; true when it did.
    async fn wait_exit(&self, name: &str, uid: Option<&str>, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let restarts_before = self.restarts(name);
        loop {
            let exited = match self.pods.get(name) {
                None => true,
                Some(p) if p.uid().as_deref() != uid => true,
                Some(p) => {
                    p.ended()
                        || p.container(SERVER_CONTAINER).is_some_and(|c| {
                            c.restart_count > restarts_before.unwrap_or(0)
                                || c.terminated().is_some()
                        })
                }
            };
            if exited {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn restarts(&self, name: &str) -> Option<i32> {
        self.pods
            .get(name)
            .and_then(|p| p.container(SERVER_CONTAINER).map(|c| c.restart_count))
    }

    /// Deletes this very Pod (uid precondition), with `grace` seconds or its own.
    pub async fn delete(&self, name: &str, uid: Option<String>, grace: Option<u32>) {
        let pods: Api<ObservedPod> = Api::namespaced(self.client.clone(), &self.namespace);
        let params = DeleteParams {
            grace_period_seconds: grace,
            preconditions: Some(Preconditions {
                uid,
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        if let Err(e) = pods.delete(name, &params).await {
            tracing::debug!(instance = %name, error = %e, "deleting a stopped Pod");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn instance(spec: serde_json::Value, status: serde_json::Value) -> Instance {
        let mut base = json!({ "displayName": "x", "userId": "u", "image": "i", "node": "n", "memory": 64, "cpu": 0.5,
                               "ports": [{ "containerPort": 1, "hostPort": 1 }], "primaryPort": 1 });
        if let (Some(b), Some(extra)) = (base.as_object_mut(), spec.as_object()) {
            b.extend(extra.clone());
        }
        serde_json::from_value(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Instance",
            "metadata": { "name": "i", "generation": 1 }, "spec": base, "status": status
        }))
        .expect("instance")
    }

    /// The Pod Berth would build for `inst` now, in `phase`, as the watch reads it.
    fn pod_of(inst: &Instance, launch: &Launch, phase: &str) -> ObservedPod {
        let mut pod = super::super::pod::build_pod(inst, "n1", None, &Default::default(), launch)
            .expect("pod");
        pod.status = Some(serde_json::from_value(json!({ "phase": phase })).expect("status"));
        let mut observed: ObservedPod =
            serde_json::from_value(serde_json::to_value(pod).expect("json")).expect("observed");
        observed.slim();
        observed
    }

    fn step_of(inst: &Instance, pod: Option<&ObservedPod>, stopping: bool) -> Step {
        step(&Facts {
            inst,
            pod,
            kube_node: Some("n1"),
            stopping,
        })
    }

    #[test]
    fn power_decides_whether_a_pod_runs() {
        let running = instance(json!({}), json!({}));
        assert_eq!(
            step_of(&running, None, false),
            Step::Create(Launch::default())
        );
        let pod = pod_of(&running, &Launch::default(), "Running");
        assert_eq!(step_of(&running, Some(&pod), false), Step::Keep);

        let stopped = instance(json!({ "power": "Stopped" }), json!({}));
        assert_eq!(step_of(&stopped, Some(&pod), false), Step::Stop(Why::Stop));
        assert_eq!(
            step_of(&stopped, Some(&pod), true),
            Step::Keep,
            "one stop at a time"
        );
        assert_eq!(
            step_of(&stopped, None, false),
            Step::Keep,
            "stopped: no Pod"
        );
        let exited = pod_of(&running, &Launch::default(), "Succeeded");
        assert_eq!(
            step_of(&stopped, Some(&exited), false),
            Step::Remove("Stopped")
        );

        let killed = instance(json!({ "power": "Killed" }), json!({}));
        assert_eq!(step_of(&killed, Some(&pod), false), Step::Kill);
        assert_eq!(
            step_of(&killed, Some(&pod), true),
            Step::Kill,
            "a kill does not wait for a stop"
        );
        let mut going = pod.clone();
        going.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        going.metadata.deletion_grace_period_seconds = Some(30);
        assert_eq!(
            step_of(&killed, Some(&going), false),
            Step::Kill,
            "a kill cuts a graceful deletion short"
        );
        going.metadata.deletion_grace_period_seconds = Some(0);
        assert_eq!(step_of(&killed, Some(&going), false), Step::Keep);
        assert_eq!(step_of(&running, Some(&going), false), Step::Keep);

        let suspended = instance(json!({ "suspended": true }), json!({}));
        assert_eq!(
            step_of(&suspended, Some(&pod), false),
            Step::Remove("Suspended")
        );
        assert_eq!(step_of(&suspended, None, false), Step::Keep);
    }

    #[test]
    fn a_server_that_ends_while_meant_to_run_crashed_unless_asked_to_stop() {
        let running = instance(json!({}), json!({}));
        let exited = pod_of(&running, &Launch::default(), "Succeeded");
        assert_eq!(
            step_of(&running, Some(&exited), false),
            Step::Remove("PodEnded")
        );
        assert_eq!(
            step_of(&running, Some(&exited), true),
            Step::Remove("Stopped")
        );
    }

    #[test]
    fn a_restart_request_is_answered_once() {
        let at = "2026-11-29T12:00:00Z";
        let asked = instance(json!({ "restartRequestedAt": at }), json!({}));
        let old = pod_of(&asked, &Launch::default(), "Running");
        assert_eq!(step_of(&asked, Some(&old), false), Step::Stop(Why::Restart));
        let Step::Create(launch) = step_of(&asked, None, false) else {
            panic!("a new Pod");
        };
        assert_eq!(launch.restart_of.as_deref(), Some(at));
        let new = pod_of(&asked, &launch, "Running");
        assert_eq!(
            step_of(&asked, Some(&new), false),
            Step::Keep,
            "the new Pod answers it"
        );
        let acked = instance(
            json!({ "restartRequestedAt": at }),
            json!({ "restartedAt": at }),
        );
        assert_eq!(
            step_of(&acked, Some(&old), false),
            Step::Keep,
            "the status says it was done"
        );
    }

    #[test]
    fn a_reinstall_runs_the_install_step_once_in_a_new_pod() {
        let at = "2026-11-29T12:00:00Z";
        let asked = instance(
            json!({ "reinstall": { "requestedAt": at, "wipe": true } }),
            json!({}),
        );
        let old = pod_of(&asked, &Launch::default(), "Running");
        assert_eq!(
            step_of(&asked, Some(&old), false),
            Step::Stop(Why::Reinstall)
        );
        let Step::Create(launch) = step_of(&asked, None, false) else {
            panic!("a new Pod");
        };
        assert_eq!(launch.reinstall, Some((at.to_owned(), true)));
        let new = pod_of(&asked, &launch, "Running");
        assert_eq!(step_of(&asked, Some(&new), false), Step::Keep);
        let done = instance(
            json!({ "reinstall": { "requestedAt": at, "wipe": true } }),
            json!({ "reinstalledAt": at }),
        );
        let Step::Create(again) = step_of(&done, None, false) else {
            panic!("a new Pod");
        };
        assert_eq!(
            again.reinstall, None,
            "a Pod made after the reinstall does not wipe again"
        );
    }

    #[test]
    fn a_changed_shape_replaces_the_pod_and_a_changed_cpu_resizes_it() {
        let before = instance(json!({}), json!({}));
        let pod = pod_of(&before, &Launch::default(), "Running");
        let more_memory = instance(json!({ "memory": 128 }), json!({}));
        assert_eq!(
            step_of(&more_memory, Some(&pod), false),
            Step::Stop(Why::Change)
        );
        let renamed = instance(json!({ "displayName": "renamed" }), json!({}));
        assert_eq!(
            step_of(&renamed, Some(&pod), false),
            Step::Keep,
            "a name is not the Pod's"
        );
        let more_cpu = instance(json!({ "cpu": 2.0 }), json!({}));
        assert_eq!(step_of(&more_cpu, Some(&pod), false), Step::Resize(2.0));
    }

    #[tokio::test]
    async fn typing_waits_for_the_echo_even_split_across_reads() {
        let (mut console, mut tty) = tokio::io::duplex(64);
        let typed = tokio::spawn(async move { echoed(&mut console, "stop\n").await });
        tty.write_all(b"[12:00] Done! st").await.expect("write");
        tokio::task::yield_now().await;
        assert!(!typed.is_finished(), "half an echo is not the echo");
        tty.write_all(b"op\r\n").await.expect("write");
        tokio::time::timeout(Duration::from_secs(5), typed)
            .await
            .expect("done on the echo")
            .expect("task");
        let mut ctrl_c: &[u8] = b"^C";
        echoed(&mut ctrl_c, "\u{3}").await;
    }

    #[test]
    fn stop_commands_are_typed_as_skyport_means_them() {
        assert_eq!(stop_input("stop").as_deref(), Some("stop\n"));
        assert_eq!(stop_input("^C").as_deref(), Some("\u{3}"));
        assert_eq!(stop_input("  "), None);
    }
}
