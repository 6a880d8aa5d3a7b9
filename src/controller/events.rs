//! Events on Instances (`kubectl describe instance`), written in the background.
//!
//! A repeat of the same Event on the same object within [`SERIES_WINDOW`] updates
//! one Event's series (count, last seen) instead of creating another, as
//! `kubectl` and kube-runtime's `Recorder` expect. Unlike that `Recorder`, which
//! keeps a full copy of every Event it wrote for six minutes (tens of MiB during a
//! wave of deploys), only a hash of what makes an Event a repeat, its name and its
//! count are kept here.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// How long a repeat counts towards an earlier Event rather than making a new one.
pub const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// Severity of an Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something needs attention.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// One thing that happened to an object.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Happening {
    /// Severity.
    pub type_: EventType,
    /// Why, in CamelCase (`PodCreated`); also used as the action.
    pub reason: String,
    /// What, for people (at most 1 KiB is kept).
    pub note: String,
}

impl Happening {
    /// A happening of `type_` for `reason`, told by `note`.
    pub fn new(type_: EventType, reason: &str, note: impl Into<String>) -> Self {
        Self {
            type_,
            reason: reason.to_owned(),
            note: note.into(),
        }
    }
}

/// An Event already written, that a repeat extends.
struct Series {
    name: String,
    count: i32,
    last: Timestamp,
}

struct Inner {
    client: Client,
    controller: String,
    instance: String,
    series: Mutex<(HashMap<u64, Series>, Timestamp)>,
}

/// Writes Events as one controller instance; cheap to clone.
#[derive(Clone)]
pub struct Events(Arc<Inner>);

/// What makes two Events the same: the object (by uid, so a new object of the same
/// name starts afresh), severity, reason and note.
fn series_key(regarding: &ObjectReference, what: &Happening) -> u64 {
    let mut h = DefaultHasher::new();
    (&regarding.uid, &regarding.name, what).hash(&mut h);
    h.finish()
}

/// The Event to create for `what` on `regarding` (pure).
pub fn build(
    regarding: &ObjectReference,
    what: &Happening,
    controller: &str,
    instance: &str,
    now: Timestamp,
) -> Event {
    let name = regarding.name.clone().unwrap_or_default();
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..16];
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{suffix}")),
            namespace: regarding.namespace.clone(),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(now)),
        type_: Some(what.type_.as_str().to_owned()),
        reason: Some(what.reason.clone()),
        action: Some(what.reason.clone()),
        note: Some(what.note.chars().take(1024).collect()),
        regarding: Some(regarding.clone()),
        reporting_controller: Some(controller.to_owned()),
        reporting_instance: Some(instance.to_owned()),
        ..Event::default()
    }
}

impl Events {
    /// Events reported by `controller` (e.g. `berth`) as `instance` (the pod name).
    pub fn new(client: Client, controller: &str, instance: &str) -> Self {
        Self(Arc::new(Inner {
            client,
            controller: controller.to_owned(),
            instance: instance.to_owned(),
            series: Mutex::new((HashMap::new(), Timestamp::now())),
        }))
    }

    /// Writes `what` on `regarding` in the background: an Event is a record, not a
    /// step of a reconcile. Failures are logged, never fatal.
    pub fn publish(&self, regarding: ObjectReference, what: Happening) {
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.write(&regarding, &what).await {
                tracing::debug!(error = %e, reason = %what.reason, "failed to publish event");
            }
        });
    }

    async fn write(
        &self,
        regarding: &ObjectReference,
        what: &Happening,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = series_key(regarding, what);
        let repeat = {
            let mut guard = self.0.series.lock().unwrap_or_else(|e| e.into_inner());
            let (series, pruned) = &mut *guard;
            // Forget expired series now and then, not on every write.
            if now.duration_since(*pruned) > SignedDuration::from_secs(60) {
                series.retain(|_, s| now.duration_since(s.last) < SERIES_WINDOW);
                *pruned = now;
            }
            match series.get_mut(&key) {
                Some(s) if now.duration_since(s.last) < SERIES_WINDOW => {
                    s.count += 1;
                    s.last = now;
                    Some((s.name.clone(), s.count))
                }
                _ => None,
            }
        };
        let ns = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<Event> = Api::namespaced(self.0.client.clone(), ns);
        if let Some((name, count)) = repeat {
            let series = EventSeries {
                count,
                last_observed_time: MicroTime(now),
            };
            let patch = json!({ "series": series });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                // Expired on the server (events have a TTL): start a new one.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let event = build(regarding, what, &self.0.controller, &self.0.instance, now);
        let name = event.metadata.name.clone().unwrap_or_default();
        api.create(&PostParams::default(), &event).await?;
        self.0
            .series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .insert(
                key,
                Series {
                    name,
                    count: 1,
                    last: now,
                },
            );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn happening(note: &str) -> Happening {
        Happening {
            type_: EventType::Normal,
            reason: "Running".into(),
            note: note.into(),
        }
    }

    fn reference(uid: &str) -> ObjectReference {
        ObjectReference {
            kind: Some("Instance".into()),
            name: Some("a1b2c3d4".into()),
            namespace: Some("berth".into()),
            uid: Some(uid.into()),
            ..ObjectReference::default()
        }
    }

    #[test]
    fn repeats_are_recognised_by_object_and_content() {
        let r = reference("u1");
        assert_eq!(
            series_key(&r, &happening("a")),
            series_key(&r, &happening("a"))
        );
        assert_ne!(
            series_key(&r, &happening("a")),
            series_key(&r, &happening("b"))
        );
        assert_ne!(
            series_key(&r, &happening("a")),
            series_key(&reference("u2"), &happening("a")),
            "a new object of the same name starts afresh"
        );
    }

    #[test]
    fn events_name_their_object_and_reporter() {
        let e = build(
            &reference("u1"),
            &happening(&"x".repeat(2000)),
            "berth",
            "berth-0",
            Timestamp::now(),
        );
        let name = e.metadata.name.clone().unwrap_or_default();
        assert!(name.starts_with("a1b2c3d4."), "{name}");
        assert_eq!(e.metadata.namespace.as_deref(), Some("berth"));
        assert_eq!(e.note.as_ref().map(String::len), Some(1024));
        assert_eq!(e.type_.as_deref(), Some("Normal"));
        assert_eq!(e.action, e.reason);
        assert_eq!(e.reporting_controller.as_deref(), Some("berth"));
        assert_eq!(e.reporting_instance.as_deref(), Some("berth-0"));
        assert!(e.event_time.is_some());
    }
}
