//! An in-memory copy of one kind of object, fed by a watch, with secondary indexes.
//!
//! Every read of the REST API is served from here: a GET costs no API server round
//! trip. Writers make their own writes visible at once ([`Cache::upsert`],
//! [`Cache::remove`]) so that a client reading right after its 201 sees the object;
//! the watch then confirms it. Stale watch events never undo a newer local write:
//! resourceVersions are compared, and deleted objects are remembered by uid until
//! the watch reports their deletion.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, RwLock};

use futures::TryStreamExt;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::warn;

/// Computes the index entries of an object: `(index name, key)` pairs.
pub type IndexFn<K> = fn(&K) -> Vec<(&'static str, String)>;

/// A watched, indexed set of objects of kind `K`, cheap to clone.
pub struct Cache<K> {
    inner: Arc<RwLock<Inner<K>>>,
    synced: watch::Sender<bool>,
    /// Bumped on every change, for derived views that rebuild when the cache moves.
    changes: watch::Sender<u64>,
    index: IndexFn<K>,
}

impl<K> Clone for Cache<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            synced: self.synced.clone(),
            changes: self.changes.clone(),
            index: self.index,
        }
    }
}

struct Inner<K> {
    objects: BTreeMap<String, Arc<K>>,
    /// index name → key → object names.
    indexes: HashMap<&'static str, HashMap<String, BTreeSet<String>>>,
    /// uids deleted locally whose deletion the watch has not confirmed yet.
    tombstones: HashSet<String>,
    /// Objects received since the watch (re)started, swapped in at InitDone.
    relist: Option<Vec<K>>,
}

impl<K: Resource> Inner<K> {
    /// Whether `obj` was deleted locally and its deletion is not confirmed yet.
    fn is_deleted(&self, obj: &K) -> bool {
        obj.meta()
            .uid
            .as_ref()
            .is_some_and(|u| self.tombstones.contains(u))
    }
}

impl<K> Default for Inner<K> {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            indexes: HashMap::new(),
            tombstones: HashSet::new(),
            relist: None,
        }
    }
}

fn no_index<K>(_: &K) -> Vec<(&'static str, String)> {
    Vec::new()
}

/// Whether `new` is not older than `old`, by resourceVersion. resourceVersions are
/// opaque in general but etcd revisions in practice; when either does not parse we
/// take the newer event as the truth.
fn is_not_older<K: Resource>(new: &K, old: &K) -> bool {
    let rv = |o: &K| {
        o.meta()
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
    };
    match (rv(new), rv(old)) {
        (Some(n), Some(o)) => n >= o,
        _ => true,
    }
}

impl<K> Default for Cache<K>
where
    K: Resource + Clone,
{
    fn default() -> Self {
        Self::new(no_index::<K>)
    }
}

impl<K> Cache<K>
where
    K: Resource + Clone,
{
    /// An empty cache with the given indexes; not synced until its watch listed everything.
    pub fn new(index: IndexFn<K>) -> Self {
        Self {
            inner: Arc::new(RwLock::new(Inner::default())),
            synced: watch::Sender::new(false),
            changes: watch::Sender::new(0),
            index,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner<K>> {
        // A panic while holding the lock leaves consistent data (every mutation is
        // a few map operations), so a poisoned lock is still usable.
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one mutation under the write lock, then announces the change (after the
    /// lock is released, so whoever sees the new counter also sees the new data).
    fn mutate<R>(&self, f: impl FnOnce(&mut Inner<K>) -> R) -> R {
        let result = {
            let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
            f(&mut inner)
        };
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
        result
    }

    /// A receiver that sees a new value after every change of the cache.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The change counter now; equal counters mean nothing changed in between.
    pub fn version(&self) -> u64 {
        *self.changes.borrow()
    }

    /// The object named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<K>> {
        self.read().objects.get(name).cloned()
    }

    /// Every object, ordered by name.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.read().objects.values().cloned().collect()
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.read().objects.len()
    }

    /// Whether the cache holds no object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Objects whose index `index` has entry `key`, ordered by name.
    pub fn by_index(&self, index: &str, key: &str) -> Vec<Arc<K>> {
        let inner = self.read();
        inner
            .indexes
            .get(index)
            .and_then(|keys| keys.get(key))
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| inner.objects.get(n).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Makes a write of ours visible now (the watch event will follow). Older
    /// versions than the cached one are ignored.
    pub fn upsert(&self, obj: K) {
        self.mutate(|inner| {
            if !inner.is_deleted(&obj) {
                self.insert(inner, obj);
            }
        });
    }

    /// Makes a deletion of ours visible now; late watch events for it are ignored.
    pub fn remove(&self, obj: &K) {
        self.mutate(|inner| {
            if let Some(uid) = obj.meta().uid.clone() {
                inner.tombstones.insert(uid);
            }
            self.delete(inner, &obj.name_any());
        });
    }

    fn insert(&self, inner: &mut Inner<K>, mut obj: K) {
        // Managed fields are never read, and on a large fleet they are most of the
        // memory an object takes.
        obj.meta_mut().managed_fields = None;
        let name = obj.name_any();
        if inner
            .objects
            .get(&name)
            .is_some_and(|old| !is_not_older(&obj, old))
        {
            return;
        }
        self.delete(inner, &name);
        for (index, key) in (self.index)(&obj) {
            inner
                .indexes
                .entry(index)
                .or_default()
                .entry(key)
                .or_default()
                .insert(name.clone());
        }
        inner.objects.insert(name, Arc::new(obj));
    }

    fn delete(&self, inner: &mut Inner<K>, name: &str) {
        if let Some(old) = inner.objects.remove(name) {
            for (index, key) in (self.index)(&old) {
                if let Some(keys) = inner.indexes.get_mut(index)
                    && let Some(names) = keys.get_mut(&key)
                {
                    names.remove(name);
                    if names.is_empty() {
                        keys.remove(&key);
                    }
                }
            }
        }
    }

    /// Applies one watch event.
    pub fn apply(&self, event: Event<K>) {
        let synced = self.mutate(|inner| match event {
            Event::Apply(obj) => {
                if !inner.is_deleted(&obj) {
                    self.insert(inner, obj);
                }
                false
            }
            Event::Delete(obj) => {
                if let Some(uid) = &obj.meta().uid {
                    inner.tombstones.remove(uid);
                }
                // Only if the cached object is this one, not a newer one of the same name.
                let name = obj.name_any();
                if inner
                    .objects
                    .get(&name)
                    .is_some_and(|cur| cur.meta().uid == obj.meta().uid)
                {
                    self.delete(inner, &name);
                }
                false
            }
            Event::Init => {
                inner.relist = Some(Vec::new());
                false
            }
            Event::InitApply(obj) => {
                inner.relist.get_or_insert_with(Vec::new).push(obj);
                false
            }
            Event::InitDone => {
                let listed = inner.relist.take().unwrap_or_default();
                let live: HashSet<String> =
                    listed.iter().filter_map(|o| o.meta().uid.clone()).collect();
                let tombstones = inner
                    .tombstones
                    .iter()
                    .filter(|u| live.contains(*u))
                    .cloned()
                    .collect();
                *inner = Inner {
                    tombstones,
                    ..Inner::default()
                };
                for obj in listed {
                    if !inner.is_deleted(&obj) {
                        self.insert(inner, obj);
                    }
                }
                true
            }
        });
        if synced {
            self.synced.send_replace(true);
        }
    }

    /// Whether the first full list has arrived.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Resolves once the first full list has arrived.
    pub async fn synced(&self) {
        let mut rx = self.synced.subscribe();
        // The sender lives in self, so this cannot fail while we wait.
        let _ = rx.wait_for(|synced| *synced).await;
    }
}

impl<K> Cache<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Feeds the cache from a watch until the process ends; the watch restarts with
    /// backoff on errors, re-listing so nothing missed in between is lost.
    pub async fn run(self, api: Api<K>, config: watcher::Config) {
        let kind = K::kind(&()).into_owned();
        let stream = watcher(api, config).default_backoff();
        let result = stream
            .try_for_each(|event| {
                self.apply(event);
                futures::future::ready(Ok(()))
            })
            .await;
        if let Err(e) = result {
            warn!(%kind, error = %e, "watch ended");
        }
    }
}

use kube::runtime::watcher::watcher;

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    fn cm(name: &str, uid: &str, rv: u64, owner: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "uid": uid, "resourceVersion": rv.to_string(),
                          "labels": { "owner": owner } }
        }))
        .expect("configmap literal")
    }

    fn by_owner(c: &ConfigMap) -> Vec<(&'static str, String)> {
        c.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("owner"))
            .map(|o| vec![("owner", o.clone())])
            .unwrap_or_default()
    }

    fn names(objs: Vec<Arc<ConfigMap>>) -> Vec<String> {
        objs.iter().map(|o| o.name_any()).collect()
    }

    #[test]
    fn indexes_follow_updates_and_deletes() {
        let cache = Cache::new(by_owner);
        cache.apply(Event::Apply(cm("a", "u1", 1, "alice")));
        cache.apply(Event::Apply(cm("b", "u2", 2, "alice")));
        assert_eq!(names(cache.by_index("owner", "alice")), ["a", "b"]);
        cache.apply(Event::Apply(cm("a", "u1", 3, "bob")));
        assert_eq!(names(cache.by_index("owner", "alice")), ["b"]);
        assert_eq!(names(cache.by_index("owner", "bob")), ["a"]);
        cache.apply(Event::Delete(cm("a", "u1", 4, "bob")));
        assert!(cache.by_index("owner", "bob").is_empty());
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn stale_events_do_not_undo_local_writes() {
        let cache = Cache::new(by_owner);
        cache.upsert(cm("a", "u1", 5, "alice"));
        cache.apply(Event::Apply(cm("a", "u1", 4, "bob")));
        assert_eq!(names(cache.by_index("owner", "alice")), ["a"]);

        cache.remove(&cm("a", "u1", 5, "alice"));
        cache.apply(Event::Apply(cm("a", "u1", 6, "alice")));
        assert!(
            cache.get("a").is_none(),
            "a late update must not resurrect a deleted object"
        );
        cache.apply(Event::Delete(cm("a", "u1", 7, "alice")));
        // Same name, new object: visible again.
        cache.apply(Event::Apply(cm("a", "u9", 8, "carol")));
        assert_eq!(names(cache.by_index("owner", "carol")), ["a"]);
    }

    #[test]
    fn a_relist_replaces_everything_and_marks_synced() {
        let cache = Cache::new(by_owner);
        assert!(!cache.is_synced());
        cache.apply(Event::Apply(cm("gone", "u1", 1, "alice")));
        cache.apply(Event::Init);
        cache.apply(Event::InitApply(cm("kept", "u2", 2, "bob")));
        assert!(
            cache.get("gone").is_some(),
            "old contents stay until InitDone"
        );
        cache.apply(Event::InitDone);
        assert!(cache.is_synced());
        assert_eq!(names(cache.list()), ["kept"]);
        assert!(cache.by_index("owner", "alice").is_empty());
    }
}
