//! One watch per kind, shared by the REST API and the controllers (client-go's
//! shared informer): each object is held once, as an `Arc` in a kube-runtime
//! reflector [`Store`] that the controllers read, with a thin layer on top for
//! what the API needs and the reflector lacks:
//!
//! - **secondary indexes** (instances by user and by node);
//! - **read-your-writes**: a writer puts the object the API server returned into
//!   the informer at once ([`Informer::upsert`], [`Informer::remove`]); stale watch
//!   events never undo a newer local write (resourceVersions are compared; they
//!   are etcd revisions, ordered across a resource type);
//! - **subscribers**: the controllers' triggers, told of every object applied and
//!   of every deletion, including the deletions a relist discovers;
//! - **watch health**, for `/readyz` (see [`super::watch`]).
//!
//! The watch loop that feeds an informer lives in [`super::watch`]; everything
//! here is synchronous and tested without a cluster.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::Stream;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::watcher::Event;
use kube::{Resource, ResourceExt};
use tokio::sync::{mpsc, watch};

use super::watch::WatchHealth;

/// Computes the index entries of an object: `(index name, key)` pairs.
pub type IndexFn<K> = fn(&K) -> Vec<(&'static str, String)>;
/// Secondary indexes: index name → key → objects, in name order. A sorted vector
/// of pointers rather than a tree keyed by a copy of each name: most keys hold one
/// object or a few (an instance's host ports, a user's instances), where a tree's
/// node would cost hundreds of bytes each, and the largest (a node's instances,
/// ~1,000) move 8 KB at most on an insert.
type Indexes<K> = HashMap<&'static str, HashMap<String, Vec<Arc<K>>>>;

/// Drops what nobody reads from an object before it is kept (managed fields, ...).
pub type SlimFn<K> = fn(&mut K);

/// The bounds every watched kind meets.
pub trait Watched:
    Resource<DynamicType = ()> + Clone + Debug + Send + Sync + serde::de::DeserializeOwned + 'static
{
}
impl<K> Watched for K where
    K: Resource<DynamicType = ()>
        + Clone
        + Debug
        + Send
        + Sync
        + serde::de::DeserializeOwned
        + 'static
{
}

/// A watched, indexed set of objects of kind `K`, cheap to clone.
pub struct Informer<K: Watched> {
    inner: Arc<Inner<K>>,
}

impl<K: Watched> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<K: Watched> {
    namespace: Option<String>,
    reader: Store<K>,
    state: Mutex<State<K>>,
    index: IndexFn<K>,
    slim: SlimFn<K>,
    synced: watch::Sender<bool>,
    /// Bumped on every change, for derived views that rebuild when the data moves.
    changes: watch::Sender<u64>,
    health: WatchHealth,
}

struct State<K: Watched> {
    writer: Writer<K>,
    /// index name → key → the objects, by name (the very objects the store
    /// holds: a lookup reads no map per object and copies no name).
    indexes: Indexes<K>,
    /// uid → resourceVersion of a deletion we made ourselves: watch events of that
    /// object up to that version are older than what we know.
    tombstones: HashMap<String, u64>,
    /// While a relist runs: the tombstoned uids it listed (still stale copies).
    relisting: Option<HashSet<String>>,
    applied: Vec<mpsc::UnboundedSender<Arc<K>>>,
    deleted: Vec<mpsc::UnboundedSender<Arc<K>>>,
}

fn no_index<K>(_: &K) -> Vec<(&'static str, String)> {
    Vec::new()
}

/// A name's first eight bytes, big-endian and zero-padded: ordering these orders
/// names as byte strings do, up to their first eight bytes (names hold no NUL).
fn name_prefix(name: Option<&str>) -> u64 {
    let mut head = [0u8; 8];
    let bytes = name.unwrap_or_default().as_bytes();
    let n = bytes.len().min(8);
    head[..n].copy_from_slice(&bytes[..n]);
    u64::from_be_bytes(head)
}

/// Drops managed fields: never read, and on a large fleet most of an object's memory.
pub fn drop_managed_fields<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// The resourceVersion of `obj` as a number (etcd revisions are; `None` otherwise).
fn rv<K: Resource>(obj: &K) -> Option<u64> {
    obj.meta().resource_version.as_deref()?.parse().ok()
}

/// Whether `new` is older than or the same as `old`: nothing to apply.
fn is_not_newer<K: Resource>(new: &K, old: &K) -> bool {
    match (rv(new), rv(old)) {
        (Some(n), Some(o)) => n <= o,
        // Unknown versions: the later event is the truth.
        _ => false,
    }
}

impl<K: Watched> Informer<K> {
    /// An empty informer of objects in `namespace` (`None`: cluster-scoped),
    /// without indexes; not synced until its watch has listed everything.
    pub fn new(namespace: Option<&str>) -> Self {
        Self::with(namespace, no_index::<K>, drop_managed_fields::<K>)
    }

    /// An empty informer with secondary indexes and a slimming function.
    pub fn with(namespace: Option<&str>, index: IndexFn<K>, slim: SlimFn<K>) -> Self {
        let writer = Writer::default();
        let reader = writer.as_reader();
        Self {
            inner: Arc::new(Inner {
                namespace: namespace.map(str::to_owned),
                reader,
                state: Mutex::new(State {
                    writer,
                    indexes: HashMap::new(),
                    tombstones: HashMap::new(),
                    relisting: None,
                    applied: Vec::new(),
                    deleted: Vec::new(),
                }),
                index,
                slim,
                synced: watch::Sender::new(false),
                changes: watch::Sender::new(0),
                health: WatchHealth::new(K::kind(&()).into_owned()),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<K>> {
        // Every mutation is a few map operations that leave the data consistent,
        // so a lock poisoned by a panic elsewhere is still usable.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn key(&self, name: &str) -> ObjectRef<K> {
        let r = ObjectRef::new(name);
        match &self.inner.namespace {
            Some(ns) => r.within(ns),
            None => r,
        }
    }

    fn changed(&self) {
        self.inner.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The reflector store the controllers read (the same objects, not a copy).
    pub fn reader(&self) -> Store<K> {
        self.inner.reader.clone()
    }

    /// The health of the watch feeding this informer.
    pub fn health(&self) -> &WatchHealth {
        &self.inner.health
    }

    /// A receiver that sees a new value after every change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// The change counter now; equal counters mean nothing changed in between.
    pub fn version(&self) -> u64 {
        *self.inner.changes.borrow()
    }

    /// The object named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<K>> {
        self.inner.reader.get(&self.key(name))
    }

    /// Every object, ordered by name.
    pub fn list(&self) -> Vec<Arc<K>> {
        // Sorted by the names' first eight bytes as a number first: most compares
        // are then integers in the vector itself rather than two reads through
        // pointers to scattered names (at 10,000 Instances the sort was most of a
        // list build's time, in a profile of the build during a deploy wave).
        let mut keyed: Vec<(u64, Arc<K>)> = self
            .inner
            .reader
            .state()
            .into_iter()
            .map(|o| (name_prefix(o.meta().name.as_deref()), o))
            .collect();
        keyed.sort_unstable_by(|(pa, a), (pb, b)| {
            pa.cmp(pb).then_with(|| a.meta().name.cmp(&b.meta().name))
        });
        keyed.into_iter().map(|(_, o)| o).collect()
    }

    /// Every object, in no particular order (cheaper than [`Informer::list`]).
    pub fn state(&self) -> Vec<Arc<K>> {
        self.inner.reader.state()
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.inner.reader.len()
    }

    /// Whether the informer holds no object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Objects whose index `index` has entry `key`, ordered by name.
    pub fn by_index(&self, index: &str, key: &str) -> Vec<Arc<K>> {
        self.lock()
            .indexes
            .get(index)
            .and_then(|keys| keys.get(key))
            .cloned()
            .unwrap_or_default()
    }

    /// How many objects index `index` has under `key`.
    pub fn count_by_index(&self, index: &str, key: &str) -> usize {
        self.lock()
            .indexes
            .get(index)
            .and_then(|keys| keys.get(key))
            .map_or(0, Vec::len)
    }

    /// Makes a write of ours visible now (the watch event will follow and is then
    /// recognised as nothing new). Older versions than the kept one are ignored.
    pub fn upsert(&self, mut obj: K) {
        (self.inner.slim)(&mut obj);
        let applied = self.apply_object(&mut self.lock(), obj);
        if applied {
            self.changed();
        }
    }

    /// Makes a deletion of ours visible now: `deleted` is the object as the API
    /// server answered the delete (its resourceVersion is the deletion's), so late
    /// watch events of older versions are recognised as stale. Call it only when
    /// the delete succeeded: a failed delete leaves a live object.
    pub fn remove(&self, deleted: &K) {
        let mut state = self.lock();
        if let (Some(uid), Some(at)) = (deleted.meta().uid.clone(), rv(deleted)) {
            state.tombstones.insert(uid, at);
        }
        let removed = self.delete_object(&mut state, deleted);
        drop(state);
        if removed {
            self.changed();
        }
    }

    /// Applies one watch event.
    pub fn apply(&self, event: Event<K>) {
        let mut state = self.lock();
        let (changed, synced) = match event {
            Event::Apply(mut obj) => {
                (self.inner.slim)(&mut obj);
                (self.apply_object(&mut state, obj), false)
            }
            Event::Delete(obj) => {
                if let Some(uid) = &obj.meta().uid {
                    state.tombstones.remove(uid);
                }
                (self.delete_object(&mut state, &obj), false)
            }
            Event::Init => {
                state.relisting = Some(HashSet::new());
                state.writer.apply_watcher_event(&Event::Init);
                (false, false)
            }
            Event::InitApply(mut obj) => {
                (self.inner.slim)(&mut obj);
                if !self.is_stale_copy(&mut state, &obj) {
                    state.writer.apply_watcher_event(&Event::InitApply(obj));
                }
                (false, false)
            }
            Event::InitDone => {
                self.finish_relist(&mut state);
                (true, true)
            }
        };
        drop(state);
        if changed {
            self.changed();
        }
        if synced {
            self.inner.synced.send_replace(true);
        }
    }

    /// Whether a listed object is a stale copy of one we deleted (keeping the
    /// tombstone), or else forgets the tombstone: a version newer than our delete
    /// means the object lives.
    fn is_stale_copy(&self, state: &mut State<K>, obj: &K) -> bool {
        let Some(uid) = obj.meta().uid.as_ref() else {
            return false;
        };
        let Some(&deleted_at) = state.tombstones.get(uid) else {
            return false;
        };
        if rv(obj).is_some_and(|v| v <= deleted_at) {
            if let Some(seen) = state.relisting.as_mut() {
                seen.insert(uid.clone());
            }
            return true;
        }
        state.tombstones.remove(uid);
        false
    }

    /// Puts `obj` in the store unless what is kept is as new; true when it did.
    fn apply_object(&self, state: &mut State<K>, obj: K) -> bool {
        if self.is_stale_copy(state, &obj) {
            return false;
        }
        let name = obj.name_any();
        let old = self.get(&name);
        if old.as_ref().is_some_and(|o| is_not_newer(&obj, o)) {
            return false;
        }
        if let Some(old) = &old {
            unindex(&mut state.indexes, self.inner.index, old);
        }
        state.writer.apply_watcher_event(&Event::Apply(obj));
        if let Some(kept) = self.get(&name) {
            index(&mut state.indexes, self.inner.index, &kept);
            state.applied.retain(|tx| tx.send(kept.clone()).is_ok());
        }
        true
    }

    /// Removes the kept object if it is `obj` (same uid); true when it did.
    fn delete_object(&self, state: &mut State<K>, obj: &K) -> bool {
        let Some(kept) = self.get(&obj.name_any()) else {
            return false;
        };
        if kept.meta().uid != obj.meta().uid {
            return false; // a newer object of the same name
        }
        unindex(&mut state.indexes, self.inner.index, &kept);
        state
            .writer
            .apply_watcher_event(&Event::Delete(obj.clone()));
        state.deleted.retain(|tx| tx.send(kept.clone()).is_ok());
        true
    }

    /// A relist replaced everything: rebuild the indexes, tell subscribers what
    /// appeared, changed or disappeared meanwhile, and forget the tombstones of
    /// objects the list no longer holds.
    fn finish_relist(&self, state: &mut State<K>) {
        let before: HashMap<String, Arc<K>> = self
            .inner
            .reader
            .state()
            .into_iter()
            .map(|o| (o.name_any(), o))
            .collect();
        state.writer.apply_watcher_event(&Event::InitDone);
        let mut after = self.inner.reader.state();
        // In name order, each index entry is built by appends.
        after.sort_unstable_by(|a, b| a.meta().name.cmp(&b.meta().name));
        state.indexes.clear();
        for obj in &after {
            index(&mut state.indexes, self.inner.index, obj);
        }
        let seen = state.relisting.take().unwrap_or_default();
        state.tombstones.retain(|uid, _| seen.contains(uid));
        let listed: HashSet<String> = after.iter().map(|o| o.name_any()).collect();
        for obj in after {
            let same = before
                .get(&obj.name_any())
                .is_some_and(|old| old.meta().uid == obj.meta().uid && rv(&**old) == rv(&*obj));
            if !same {
                state.applied.retain(|tx| tx.send(obj.clone()).is_ok());
            }
        }
        for (name, gone) in before {
            if !listed.contains(&name) {
                state.deleted.retain(|tx| tx.send(gone.clone()).is_ok());
            }
        }
    }

    /// Every object applied from now on (added, changed, or found by a relist).
    pub fn applied(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().applied.push(tx);
        receive(rx)
    }

    /// Every object deleted from now on (the last version kept of it).
    pub fn deleted(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().deleted.push(tx);
        receive(rx)
    }

    /// Whether the first full list has arrived.
    pub fn is_synced(&self) -> bool {
        *self.inner.synced.borrow()
    }

    /// Resolves once the first full list has arrived.
    pub async fn synced(&self) {
        let mut rx = self.inner.synced.subscribe();
        // The sender lives in self, so this cannot fail while we wait.
        let _ = rx.wait_for(|synced| *synced).await;
    }
}

/// Where the object named `name` is, or would be, in an index entry.
fn position<K: Resource>(objs: &[Arc<K>], name: &str) -> Result<usize, usize> {
    objs.binary_search_by(|o| o.meta().name.as_deref().unwrap_or_default().cmp(name))
}

fn index<K>(indexes: &mut Indexes<K>, f: IndexFn<K>, obj: &Arc<K>)
where
    K: Resource,
{
    let name = obj.meta().name.as_deref().unwrap_or_default();
    for (index, key) in f(obj) {
        let objs = indexes.entry(index).or_default().entry(key).or_default();
        match position(objs, name) {
            Ok(at) => objs[at] = obj.clone(),
            Err(at) => objs.insert(at, obj.clone()),
        }
    }
}

fn unindex<K>(indexes: &mut Indexes<K>, f: IndexFn<K>, obj: &K)
where
    K: Resource,
{
    let name = obj.meta().name.as_deref().unwrap_or_default();
    for (index, key) in f(obj) {
        if let Some(keys) = indexes.get_mut(index)
            && let Some(objs) = keys.get_mut(&key)
        {
            if let Ok(at) = position(objs, name) {
                objs.remove(at);
            }
            if objs.is_empty() {
                keys.remove(&key);
            }
        }
    }
}

/// A channel's receiving end as a stream.
pub fn receive<T: Send + 'static>(
    rx: mpsc::UnboundedReceiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{FutureExt, StreamExt};
    use k8s_openapi::api::core::v1::ConfigMap;

    fn cm(name: &str, uid: &str, rv: u64, owner: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "namespace": "ns", "uid": uid, "resourceVersion": rv.to_string(),
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

    fn informer() -> Informer<ConfigMap> {
        Informer::with(Some("ns"), by_owner, drop_managed_fields)
    }

    fn names(objs: Vec<Arc<ConfigMap>>) -> Vec<String> {
        objs.iter().map(|o| o.name_any()).collect()
    }

    fn relist(i: &Informer<ConfigMap>, objs: Vec<ConfigMap>) {
        i.apply(Event::Init);
        for o in objs {
            i.apply(Event::InitApply(o));
        }
        i.apply(Event::InitDone);
    }

    /// Everything a subscription has received so far.
    fn drain<T>(s: &mut (impl Stream<Item = T> + Unpin)) -> Vec<T> {
        let mut out = Vec::new();
        while let Some(Some(x)) = s.next().now_or_never() {
            out.push(x);
        }
        out
    }

    #[test]
    fn lists_are_in_name_order_past_the_first_eight_bytes() {
        let i = informer();
        let mut expected = vec![
            "abcdefgh-2",
            "b",
            "abcdefg",
            "abcdefgh",
            "0",
            "abcdefgh-10",
            "ab",
            "a",
            "zz",
            "abcdefgi",
            "abcdefgh-1",
        ];
        let objs = expected.iter().enumerate();
        relist(
            &i,
            objs.map(|(n, name)| cm(name, &n.to_string(), 1, "x"))
                .collect(),
        );
        expected.sort_unstable();
        assert_eq!(names(i.list()), expected);
    }

    #[test]
    fn indexes_follow_updates_and_deletes() {
        let i = informer();
        i.apply(Event::Apply(cm("a", "u1", 1, "alice")));
        i.apply(Event::Apply(cm("b", "u2", 2, "alice")));
        assert_eq!(names(i.by_index("owner", "alice")), ["a", "b"]);
        i.apply(Event::Apply(cm("a", "u1", 3, "bob")));
        assert_eq!(names(i.by_index("owner", "alice")), ["b"]);
        assert_eq!(names(i.by_index("owner", "bob")), ["a"]);
        assert_eq!(i.count_by_index("owner", "bob"), 1);
        i.apply(Event::Delete(cm("a", "u1", 4, "bob")));
        assert!(i.by_index("owner", "bob").is_empty());
        assert_eq!(i.len(), 1);
    }

    #[test]
    fn indexes_hand_out_the_kept_version_of_each_object() {
        let i = informer();
        i.apply(Event::Apply(cm("a", "u1", 1, "alice")));
        // Changed, its index keys not: the index must not keep the old copy.
        i.apply(Event::Apply(cm("a", "u1", 2, "alice")));
        let kept = i.get("a").expect("kept");
        let indexed = i.by_index("owner", "alice");
        assert_eq!(indexed.len(), 1);
        assert!(Arc::ptr_eq(&indexed[0], &kept), "the index holds version 2");
        // A relist rebuilds the indexes from what it listed.
        relist(
            &i,
            vec![cm("a", "u1", 5, "alice"), cm("c", "u3", 6, "alice")],
        );
        let indexed = i.by_index("owner", "alice");
        assert_eq!(names(indexed.clone()), ["a", "c"]);
        for o in indexed {
            assert!(Arc::ptr_eq(&o, &i.get(&o.name_any()).expect("kept")));
        }
    }

    #[test]
    fn the_controllers_read_the_very_objects_the_api_reads() {
        let i = informer();
        i.apply(Event::Apply(cm("a", "u1", 1, "alice")));
        let api = i.get("a").expect("kept");
        let controller = i
            .reader()
            .get(&ObjectRef::new("a").within("ns"))
            .expect("kept");
        assert!(Arc::ptr_eq(&api, &controller), "one copy per object");
    }

    #[test]
    fn stale_events_do_not_undo_local_writes() {
        let i = informer();
        i.upsert(cm("a", "u1", 5, "alice"));
        i.apply(Event::Apply(cm("a", "u1", 4, "bob")));
        assert_eq!(names(i.by_index("owner", "alice")), ["a"]);

        i.remove(&cm("a", "u1", 6, "alice"));
        i.apply(Event::Apply(cm("a", "u1", 5, "alice")));
        assert!(
            i.get("a").is_none(),
            "a late update must not resurrect a deleted object"
        );
        i.apply(Event::Delete(cm("a", "u1", 6, "alice")));
        // Same name, new object: visible again.
        i.apply(Event::Apply(cm("a", "u9", 8, "carol")));
        assert_eq!(names(i.by_index("owner", "carol")), ["a"]);
    }

    #[test]
    fn a_relist_replaces_everything_and_tells_what_changed() {
        let i = informer();
        let mut applied = Box::pin(i.applied());
        let mut deleted = Box::pin(i.deleted());
        assert!(!i.is_synced());
        relist(
            &i,
            vec![cm("gone", "u1", 1, "alice"), cm("kept", "u2", 2, "bob")],
        );
        assert!(i.is_synced());
        let mut first = names(drain(&mut applied));
        first.sort();
        assert_eq!(first, ["gone", "kept"], "the first list is all news");
        i.apply(Event::Init);
        i.apply(Event::InitApply(cm("kept", "u2", 2, "bob")));
        i.apply(Event::InitApply(cm("new", "u3", 3, "carol")));
        assert!(i.get("gone").is_some(), "old contents stay until InitDone");
        i.apply(Event::InitDone);
        assert_eq!(names(i.list()), ["kept", "new"]);
        assert!(i.by_index("owner", "alice").is_empty());
        assert_eq!(
            names(drain(&mut applied)),
            ["new"],
            "unchanged objects are no news"
        );
        assert_eq!(
            names(drain(&mut deleted)),
            ["gone"],
            "a deletion missed while away"
        );
    }

    #[test]
    fn relists_keep_tombstones_only_of_stale_copies() {
        let i = informer();
        relist(&i, vec![cm("a", "u1", 1, "x"), cm("b", "u2", 2, "x")]);
        i.remove(&cm("a", "u1", 10, "x"));
        i.remove(&cm("b", "u2", 11, "x"));
        // A list taken before the deletes still holds both; a's delete has not
        // reached it, but b lives on in a newer version (say our delete was undone).
        relist(&i, vec![cm("a", "u1", 1, "x"), cm("b", "u2", 12, "x")]);
        assert!(i.get("a").is_none(), "the stale copy stays hidden");
        assert!(
            i.get("b").is_some(),
            "a live object is never hidden by a tombstone"
        );
        // The next list no longer holds a: its tombstone is forgotten, and a new
        // object of that uid's version range cannot be hidden by it.
        relist(&i, vec![cm("b", "u2", 12, "x")]);
        i.apply(Event::Apply(cm("a", "u1", 3, "x")));
        assert!(
            i.get("a").is_some(),
            "no tombstone outlives the relist that dropped it"
        );
    }

    #[test]
    fn subscribers_hear_of_local_writes_and_deletions() {
        let i = informer();
        let mut applied = Box::pin(i.applied());
        let mut deleted = Box::pin(i.deleted());
        i.upsert(cm("a", "u1", 1, "x"));
        i.apply(Event::Apply(cm("a", "u1", 1, "x")));
        assert_eq!(
            names(drain(&mut applied)),
            ["a"],
            "the watch's echo is no news"
        );
        i.apply(Event::Delete(cm("a", "u1", 2, "x")));
        assert_eq!(names(drain(&mut deleted)), ["a"]);
        i.apply(Event::Delete(cm("a", "u1", 2, "x")));
        assert!(drain(&mut deleted).is_empty(), "told once");
    }
}
