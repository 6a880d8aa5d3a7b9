//! A list serialized once: the JSON array as a run of shared chunks of about
//! [`CHUNK`] bytes, where each item lies in them, and its gzip form once asked.
//!
//! Chunks make a rebuild cost what changed. During a deploy wave the list changes
//! with every status write, a few items at a time: a rebuild keeps each chunk whose
//! items are all unchanged (a refcount, not a copy) and makes again only the chunks
//! with a changed, new or removed item. At 10,000 instances a rebuild used to copy
//! the whole ~6 MB array and fault a fresh buffer in, on a machine the wave
//! saturates.

use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use serde::Serialize;

use super::Page;

/// Bytes a chunk is sealed at: small enough that a change copies little, large
/// enough that hyper's vectored writes (16 buffers a call) send ~256 KiB a call.
const CHUNK: usize = 16 * 1024;

/// What an item's rendering was made from: its object's resourceVersion and a
/// version or fingerprint of anything else its view reads. The same stamp, the
/// same bytes.
pub type Stamp = (u64, u64);

/// Where an item lies: its chunk, and its bytes there (the comma before it not
/// included).
#[derive(Clone, Copy, Debug)]
struct Place {
    chunk: u32,
    start: u32,
    end: u32,
}

/// A serialized list.
pub struct Rendered {
    /// The items, in order and in runs: each item preceded by a comma.
    chunks: Vec<Bytes>,
    /// The index of each chunk's first item.
    firsts: Vec<usize>,
    /// Where each item lies, in order.
    places: Vec<Place>,
    /// Each item's key and stamp, in order, in a list built with stamps.
    stamps: Vec<(Arc<str>, Stamp)>,
    gzip: OnceLock<Bytes>,
}

/// A list being written, item by item, into chunks.
struct Builder {
    chunks: Vec<Bytes>,
    firsts: Vec<usize>,
    places: Vec<Place>,
    /// The chunk being written.
    open: Vec<u8>,
}

impl Builder {
    fn new(items: usize) -> Self {
        Self {
            chunks: Vec::new(),
            firsts: Vec::new(),
            places: Vec::with_capacity(items),
            open: Vec::new(),
        }
    }

    /// Appends one item, written by `write`; seals the chunk once it is full.
    fn push(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        if self.open.is_empty() {
            // Room for the items that fill it, and the last one's overshoot.
            self.open.reserve(CHUNK + CHUNK / 8);
            self.firsts.push(self.places.len());
        }
        self.open.push(b',');
        let start = self.open.len();
        write(&mut self.open);
        self.places.push(Place {
            chunk: self.chunks.len() as u32,
            start: start as u32,
            end: self.open.len() as u32,
        });
        if self.open.len() >= CHUNK {
            self.seal();
        }
    }

    /// Bytes in the chunk being written.
    fn open_len(&self) -> usize {
        self.open.len()
    }

    fn seal(&mut self) {
        if !self.open.is_empty() {
            self.chunks
                .push(Bytes::from(std::mem::take(&mut self.open)));
        }
    }

    /// Appends `chunk`, whose items lie at `places`, as it is.
    fn keep(&mut self, chunk: &Bytes, places: &[Place]) {
        self.seal();
        let index = self.chunks.len() as u32;
        self.firsts.push(self.places.len());
        self.places
            .extend(places.iter().map(|p| Place { chunk: index, ..*p }));
        self.chunks.push(chunk.clone());
    }

    fn finish(mut self, stamps: Vec<(Arc<str>, Stamp)>) -> Rendered {
        self.seal();
        Rendered {
            chunks: self.chunks,
            firsts: self.firsts,
            places: self.places,
            stamps,
            gzip: OnceLock::new(),
        }
    }
}

/// Serializes one item; views of our own types cannot fail to serialize.
fn write_item<T: Serialize>(body: &mut Vec<u8>, item: &T) {
    let _ = serde_json::to_writer(body, item);
}

/// An item of a chunk being rebuilt: the previous build's item `n`, or one made
/// now (its bytes in the group's scratch buffer).
enum Entry {
    Kept(usize),
    Made(usize, usize),
}

/// The items of one previous chunk in a rebuild: kept whole when they are its
/// items unchanged, written again otherwise.
struct Group<'p> {
    previous: &'p Rendered,
    chunk: Option<u32>,
    entries: Vec<Entry>,
    scratch: Vec<u8>,
}

impl Group<'_> {
    /// Writes the group's items to `out`, and starts the group of `chunk`.
    fn flush(&mut self, out: &mut Builder, chunk: Option<u32>) {
        let p = self.previous;
        if let Some(c) = self.chunk.filter(|_| !self.entries.is_empty()) {
            let items = p.items_of(c as usize);
            // Distinct keys in order, all of this chunk and as many: its items.
            let whole = self.entries.len() == items.len()
                && self.entries.iter().all(|e| matches!(e, Entry::Kept(_)));
            // A chunk left open and short (its items were removed) takes in the
            // next one when both fit in one, rather than stay short for good.
            let merge = out.open_len() > 0 && out.open_len() + p.chunks[c as usize].len() < CHUNK;
            if whole && !merge {
                out.keep(&p.chunks[c as usize], &p.places[items]);
            } else {
                for e in &self.entries {
                    let bytes = match *e {
                        Entry::Kept(n) => p.bytes_of(n),
                        Entry::Made(start, end) => &self.scratch[start..end],
                    };
                    out.push(|b| b.extend_from_slice(bytes));
                }
            }
        }
        self.entries.clear();
        self.scratch.clear();
        self.chunk = chunk;
    }
}

impl Rendered {
    /// Serializes `items` as one JSON array. Items are serialized as they come:
    /// at 10,000 instances, collecting their views first would hold another
    /// ~10 MB at the peak.
    pub fn new<T: Serialize>(items: impl ExactSizeIterator<Item = T>) -> Self {
        let mut out = Builder::new(items.len());
        for item in items {
            out.push(|body| write_item(body, &item));
        }
        out.finish(Vec::new())
    }

    /// Like [`Rendered::new`] for items with a key and a [`Stamp`], ordered by key:
    /// an item whose stamp is the one it had in `previous` is not made and
    /// serialized again, and a chunk of `previous` whose items are all unchanged is
    /// kept as it is. Both lists being in key order, the previous item is found by
    /// walking the two side by side (no hashing, and an unchanged item's key is
    /// shared, not copied).
    pub fn reusing<'a, X, T: Serialize>(
        previous: Option<&Rendered>,
        items: impl ExactSizeIterator<Item = (&'a str, Stamp, X)>,
        view: impl Fn(X) -> T,
    ) -> Self {
        let mut out = Builder::new(items.len());
        let mut stamps = Vec::with_capacity(items.len());
        // A list built without stamps has nothing to match against.
        let previous = previous.filter(|p| !p.is_empty() && p.stamps.len() == p.places.len());
        let Some(previous) = previous else {
            for (key, stamp, item) in items {
                out.push(|body| write_item(body, &view(item)));
                stamps.push((Arc::from(key), stamp));
            }
            return out.finish(stamps);
        };
        let before = &previous.stamps[..];
        let mut group = Group {
            previous,
            chunk: None,
            entries: Vec::new(),
            scratch: Vec::new(),
        };
        let mut at = 0;
        for (key, stamp, item) in items {
            while before.get(at).is_some_and(|(k, _)| &**k < key) {
                at += 1;
            }
            let same_key = before.get(at).filter(|(k, _)| &**k == key);
            // An item belongs with its previous self, a new one with the item
            // before it (the first chunk when none is).
            let home = match same_key {
                Some(_) => previous.places.get(at),
                None => previous.places.get(at.saturating_sub(1)),
            }
            .map(|p| p.chunk);
            if home != group.chunk {
                group.flush(&mut out, home);
            }
            match same_key.filter(|(_, s)| *s == stamp) {
                Some((kept, _)) => {
                    group.entries.push(Entry::Kept(at));
                    stamps.push((kept.clone(), stamp));
                }
                None => {
                    let start = group.scratch.len();
                    write_item(&mut group.scratch, &view(item));
                    group.entries.push(Entry::Made(start, group.scratch.len()));
                    stamps.push((Arc::from(key), stamp));
                }
            }
        }
        group.flush(&mut out, None);
        out.finish(stamps)
    }

    /// Indexes of the items of chunk `c`.
    fn items_of(&self, c: usize) -> std::ops::Range<usize> {
        let end = self.firsts.get(c + 1).copied().unwrap_or(self.places.len());
        self.firsts[c]..end
    }

    /// Item `n`'s JSON.
    fn bytes_of(&self, n: usize) -> &[u8] {
        let p = self.places[n];
        &self.chunks[p.chunk as usize][p.start as usize..p.end as usize]
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.places.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.places.is_empty()
    }

    /// The whole array as the chunks to send, in order (refcounts, not copies).
    pub fn frames(&self) -> Vec<Bytes> {
        let mut frames = Vec::with_capacity(self.chunks.len() + 2);
        frames.push(Bytes::from_static(b"["));
        for (i, chunk) in self.chunks.iter().enumerate() {
            // Each item has a comma before it: not the first.
            frames.push(if i == 0 {
                chunk.slice(1..)
            } else {
                chunk.clone()
            });
        }
        frames.push(Bytes::from_static(b"]"));
        frames
    }

    /// The array of the items of `page` (empty past the end).
    pub fn page(&self, page: Page) -> Vec<u8> {
        let first = page.first().min(self.len());
        let last = (first + page.per_page).min(self.len());
        let mut out = Vec::with_capacity(2);
        out.push(b'[');
        let mut i = first;
        while i < last {
            // The page's items in one chunk lie together, commas between them.
            let chunk = self.places[i].chunk;
            let mut j = i;
            while j + 1 < last && self.places[j + 1].chunk == chunk {
                j += 1;
            }
            if i > first {
                out.push(b',');
            }
            let bytes = &self.chunks[chunk as usize];
            out.extend_from_slice(
                &bytes[self.places[i].start as usize..self.places[j].end as usize],
            );
            i = j + 1;
        }
        out.push(b']');
        out
    }

    /// The whole array gzip-compressed, made once (on the blocking pool: a few
    /// megabytes take tens of milliseconds).
    pub async fn gzip(self: &Arc<Self>) -> Bytes {
        if let Some(g) = self.gzip.get() {
            return g.clone();
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.gzip.get_or_init(|| gzip(&me.frames())).clone())
            .await
            .unwrap_or_else(|_| Bytes::new())
    }

    /// The whole array in one buffer.
    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<u8> {
        self.frames().concat()
    }
}

/// `frames` gzip-compressed at the fast level: JSON lists shrink about tenfold
/// with it, and the best level costs several times the CPU for a few percent.
fn gzip(frames: &[Bytes]) -> Bytes {
    use std::io::Write as _;
    let size: usize = frames.iter().map(Bytes::len).sum();
    let mut enc =
        flate2::write::GzEncoder::new(Vec::with_capacity(size / 8), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    for f in frames {
        let _ = enc.write_all(f);
    }
    Bytes::from(enc.finish().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_a_slice_of_the_whole_array() {
        let items: Vec<serde_json::Value> = (0..5).map(|i| serde_json::json!({ "n": i })).collect();
        let list = Rendered::new(items.iter());
        let whole: Vec<serde_json::Value> = serde_json::from_slice(&list.to_vec()).unwrap();
        assert_eq!(whole, items);
        let page = |number, per_page| -> Vec<serde_json::Value> {
            serde_json::from_slice(&list.page(Page { number, per_page })).unwrap()
        };
        assert_eq!(page(1, 2), items[0..2]);
        assert_eq!(page(3, 2), items[4..5]);
        assert_eq!(page(4, 2), Vec::<serde_json::Value>::new());
        assert_eq!(page(1, 1000), items);
        assert_eq!(
            Rendered::new(std::iter::empty::<()>()).page(Page {
                number: 1,
                per_page: 5
            }),
            b"[]"
        );
    }

    #[test]
    fn the_gzip_form_inflates_to_the_body() {
        use std::io::Read as _;
        let items: Vec<String> = (0..1000).map(|i| format!("instance-{i}")).collect();
        let list = Rendered::new(items.iter());
        let gz = gzip(&list.frames());
        assert!(
            gz.len() * 4 < list.to_vec().len(),
            "{} vs {}",
            gz.len(),
            list.to_vec().len()
        );
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, list.to_vec());
    }

    #[test]
    fn unchanged_items_are_copied_and_changed_ones_made_again() {
        let made = std::cell::Cell::new(0);
        let view = |n: u64| {
            made.set(made.get() + 1);
            serde_json::json!({ "n": n })
        };
        let first = Rendered::reusing(
            None,
            [("a", (1, 0), 1), ("b", (1, 0), 2), ("c", (1, 0), 3)].into_iter(),
            view,
        );
        assert_eq!(made.get(), 3);
        // b changed (new stamp), c is gone, d is new; a is copied.
        let second = Rendered::reusing(
            Some(&first),
            [("a", (1, 0), 100), ("b", (2, 0), 20), ("d", (1, 0), 4)].into_iter(),
            view,
        );
        assert_eq!(made.get(), 5, "a was copied, b and d made");
        let got: serde_json::Value = serde_json::from_slice(&second.to_vec()).unwrap();
        assert_eq!(
            got,
            serde_json::json!([{ "n": 1 }, { "n": 20 }, { "n": 4 }])
        );
        // What else the view reads changed (the second stamp): all made again.
        let third = Rendered::reusing(
            Some(&second),
            [("a", (1, 1), 7), ("b", (2, 1), 8), ("d", (1, 1), 9)].into_iter(),
            view,
        );
        assert_eq!(made.get(), 8);
        let got: serde_json::Value = serde_json::from_slice(&third.to_vec()).unwrap();
        assert_eq!(got, serde_json::json!([{ "n": 7 }, { "n": 8 }, { "n": 9 }]));
        assert_eq!(
            &third.page(Page {
                number: 2,
                per_page: 2
            })[..],
            br#"[{"n":9}]"#
        );
        // A key before all others is new, a removed one is skipped: the rest, in
        // key order, is still found and copied.
        let fourth = Rendered::reusing(
            Some(&third),
            [("0", (1, 1), 0), ("b", (2, 1), 0), ("d", (1, 1), 0)].into_iter(),
            view,
        );
        assert_eq!(made.get(), 9, "only 0 made");
        assert_eq!(&fourth.to_vec()[..], br#"[{"n":0},{"n":8},{"n":9}]"#);
    }

    /// Items of about 300 bytes: `(key, stamp, value)`.
    fn item(n: u64, version: u64) -> serde_json::Value {
        serde_json::json!({ "n": n, "version": version, "pad": "x".repeat(250) })
    }

    fn build(
        previous: Option<&Rendered>,
        items: &std::collections::BTreeMap<String, u64>,
        made: &std::cell::Cell<usize>,
    ) -> Rendered {
        Rendered::reusing(
            previous,
            items.iter().map(|(k, v)| (k.as_str(), (*v, 0), (k, *v))),
            |(k, v): (&String, u64)| {
                made.set(made.get() + 1);
                item(k[1..].parse().expect("number"), v)
            },
        )
    }

    fn expected(items: &std::collections::BTreeMap<String, u64>) -> Vec<serde_json::Value> {
        items
            .iter()
            .map(|(k, v)| item(k[1..].parse().expect("number"), *v))
            .collect()
    }

    #[test]
    fn a_rebuild_shares_every_chunk_nothing_changed_in() {
        let made = std::cell::Cell::new(0);
        let mut items: std::collections::BTreeMap<String, u64> =
            (0..2000).map(|n| (format!("k{n:05}"), 1)).collect();
        let first = build(None, &items, &made);
        assert!(first.chunks.len() > 20, "{} chunks", first.chunks.len());
        items.insert("k01000".into(), 2);
        made.set(0);
        let second = build(Some(&first), &items, &made);
        assert_eq!(made.get(), 1, "only the changed item is made");
        let fresh = second
            .chunks
            .iter()
            .filter(|c| !first.chunks.iter().any(|f| f.as_ptr() == c.as_ptr()))
            .count();
        assert_eq!(fresh, 1, "one chunk made again, the others shared");
        let got: Vec<serde_json::Value> = serde_json::from_slice(&second.to_vec()).unwrap();
        assert_eq!(got, expected(&items));
    }

    #[test]
    fn rebuilds_stay_right_through_inserts_removals_and_changes() {
        // A fixed pseudo-random walk: the same every run.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |below: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % below
        };
        let made = std::cell::Cell::new(0);
        let mut items = std::collections::BTreeMap::new();
        let mut last: Option<Rendered> = None;
        for round in 0..60 {
            let mut changed = std::collections::BTreeSet::new();
            for _ in 0..next(40) {
                let key = format!("k{:05}", next(3000));
                match next(3) {
                    // Runs of removals leave short chunks to merge.
                    0 if round % 10 == 5 => {
                        for n in 0..next(100) {
                            let k = format!("k{:05}", next(3000).saturating_add(n));
                            items.remove(&k);
                            changed.remove(&k);
                        }
                    }
                    0 => {
                        items.remove(&key);
                        changed.remove(&key);
                    }
                    _ => {
                        *items.entry(key.clone()).or_insert(0) += 1;
                        changed.insert(key);
                    }
                }
            }
            made.set(0);
            let list = build(last.as_ref(), &items, &made);
            if last.is_some() {
                assert_eq!(
                    made.get(),
                    changed.len(),
                    "round {round}: only what changed is made"
                );
            }
            let all = expected(&items);
            let got: Vec<serde_json::Value> = serde_json::from_slice(&list.to_vec()).unwrap();
            assert_eq!(got, all, "round {round}");
            let per_page = 1 + next(300) as usize;
            for number in 1..=all.len().div_ceil(per_page) + 1 {
                let page: Vec<serde_json::Value> =
                    serde_json::from_slice(&list.page(Page { number, per_page })).unwrap();
                let first = (number - 1) * per_page;
                assert_eq!(
                    page,
                    all[first.min(all.len())..(first + per_page).min(all.len())]
                );
            }
            // Short chunks are merged with short neighbours: never two in a row
            // that would fit in one.
            for pair in list.chunks.windows(2) {
                assert!(
                    pair[0].len() + pair[1].len() >= CHUNK / 2,
                    "round {round}: {} + {}",
                    pair[0].len(),
                    pair[1].len()
                );
            }
            last = Some(list);
        }
    }
}
