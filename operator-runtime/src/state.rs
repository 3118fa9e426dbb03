//! Keyed state, in the spirit of Flink's: handles named once, each call
//! scoped to the current key of the [`Context`].
//!
//! A value, reducing or aggregating state is one value per key in a
//! state table of the stage's store job (the table is the handle's name),
//! encoded with serde (JSON). A map or list state keeps one stored value
//! per entry or element, in a prefix-placed table ([`MAP_TABLE`],
//! [`LIST_TABLE`]): its key is the current key as the placement key, then
//! the state's name and the entry's key or element's index, so every entry
//! of a key sits in that key's key group (owned by the task that owns the
//! key) and a write touches one entry, however large the map or list.

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::context::Context;
use crate::error::RuntimeError;

fn encode<T: Serialize>(table: &str, v: &T) -> Result<Vec<u8>, RuntimeError> {
    serde_json::to_vec(v).map_err(|e| RuntimeError::BadState {
        state: table.to_string(),
        why: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(table: &str, raw: &[u8]) -> Result<T, RuntimeError> {
    serde_json::from_slice(raw).map_err(|e| RuntimeError::BadState {
        state: table.to_string(),
        why: e.to_string(),
    })
}

async fn load<T: DeserializeOwned>(
    ctx: &mut Context,
    table: &str,
) -> Result<Option<T>, RuntimeError> {
    match ctx.get_raw(table).await? {
        Some(raw) => decode(table, &raw).map(Some),
        None => Ok(None),
    }
}

async fn store<T: Serialize>(ctx: &mut Context, table: &str, v: &T) -> Result<(), RuntimeError> {
    let raw = encode(table, v)?;
    ctx.put_raw(table, Some(raw)).await
}

/// One value per key.
pub struct ValueState<T> {
    name: String,
    _t: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> ValueState<T> {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            _t: PhantomData,
        }
    }

    pub async fn get(&self, ctx: &mut Context) -> Result<Option<T>, RuntimeError> {
        load(ctx, &self.name).await
    }

    pub async fn set(&self, ctx: &mut Context, value: &T) -> Result<(), RuntimeError> {
        store(ctx, &self.name, value).await
    }

    pub async fn clear(&self, ctx: &mut Context) -> Result<(), RuntimeError> {
        ctx.put_raw(&self.name, None).await
    }
}

/// The state table of every [`MapState`]'s entries: placed by a length-
/// prefixed placement key (`KeyPlacement::Prefix`), declared so by
/// [`crate::Job::setup`].
pub const MAP_TABLE: &str = "__map";

/// A map per key, ordered by its keys, one stored value per entry.
pub struct MapState<K, V> {
    name: String,
    _t: PhantomData<fn() -> (K, V)>,
}

impl<K, V> MapState<K, V>
where
    K: Serialize + DeserializeOwned + Ord + Clone,
    V: Serialize + DeserializeOwned + Clone,
{
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            _t: PhantomData,
        }
    }

    /// Entry `k`'s key under the current key's `prefix`.
    fn entry_key(&self, prefix: &[u8], k: &K) -> Result<Vec<u8>, RuntimeError> {
        let mut key = prefix.to_vec();
        key.extend_from_slice(&encode(&self.name, k)?);
        Ok(key)
    }

    /// Every entry, in key order: one scan of the current key's entries.
    pub async fn entries(&self, ctx: &mut Context) -> Result<Vec<(K, V)>, RuntimeError> {
        let prefix = placed_prefix(ctx, &self.name)?;
        let mut out = Vec::new();
        for (key, value) in ctx.scan_at(MAP_TABLE, &prefix).await? {
            let k: K = decode(&self.name, &key[prefix.len()..])?;
            out.push((k, decode(&self.name, &value)?));
        }
        // Stored in the order of their encodings; handed out in K's.
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// An entry: the first read of the current key's map loads all its
    /// entries (one scan), after which entries it lacks, such as a new
    /// window's, are known absent without a read. A map of more entries
    /// than one load takes (1,000), or than the cache keeps, is read an
    /// entry at a time instead.
    pub async fn get(&self, ctx: &mut Context, k: &K) -> Result<Option<V>, RuntimeError> {
        let prefix = placed_prefix(ctx, &self.name)?;
        let key = self.entry_key(&prefix, k)?;
        ctx.load_prefix(MAP_TABLE, &prefix, &key).await?;
        match ctx.get_at(MAP_TABLE, &key).await? {
            Some(raw) => decode(&self.name, &raw).map(Some),
            None => Ok(None),
        }
    }

    pub async fn put(&self, ctx: &mut Context, k: K, v: V) -> Result<(), RuntimeError> {
        let key = self.entry_key(&placed_prefix(ctx, &self.name)?, &k)?;
        let raw = encode(&self.name, &v)?;
        ctx.put_at(MAP_TABLE, key, Some(raw)).await
    }

    pub async fn remove(&self, ctx: &mut Context, k: &K) -> Result<Option<V>, RuntimeError> {
        let old = self.get(ctx, k).await?;
        if old.is_some() {
            let key = self.entry_key(&placed_prefix(ctx, &self.name)?, k)?;
            ctx.put_at(MAP_TABLE, key, None).await?;
        }
        Ok(old)
    }

    pub async fn clear(&self, ctx: &mut Context) -> Result<(), RuntimeError> {
        let prefix = placed_prefix(ctx, &self.name)?;
        for (key, _) in ctx.scan_at(MAP_TABLE, &prefix).await? {
            ctx.put_at(MAP_TABLE, key, None).await?;
        }
        ctx.cleared_prefix(MAP_TABLE, &prefix);
        Ok(())
    }
}

/// The state table of every [`ListState`]'s elements, placed like
/// [`MAP_TABLE`] and declared so by [`crate::Job::setup`].
pub const LIST_TABLE: &str = "__list";

/// Where the current key's keys of state `name` start in a prefix-placed
/// table: the current key as the placement key, then the name, length
/// first.
fn placed_prefix(ctx: &Context, name: &str) -> Result<Vec<u8>, RuntimeError> {
    let too_long = |what: &str| RuntimeError::BadState {
        state: name.to_string(),
        why: format!("{what} is longer than a placement key's 65,535 bytes"),
    };
    let name_len = u16::try_from(name.len()).map_err(|_| too_long("the name"))?;
    if ctx.key().len() > usize::from(u16::MAX) {
        return Err(too_long("the current key"));
    }
    let mut rest = Vec::with_capacity(2 + name.len());
    rest.extend_from_slice(&name_len.to_be_bytes());
    rest.extend_from_slice(name.as_bytes());
    Ok(streamshield_client::prefixed_key(ctx.key(), &rest))
}

/// A list per key, in the order of its adds, one stored value per
/// element: an add writes its element and the list's length, however
/// long the list.
///
/// In [`LIST_TABLE`], the key's prefix itself holds the length (a u64,
/// big-endian) and element `i` sits at the prefix plus `i` (big-endian),
/// so a scan of the prefix reads them in order.
pub struct ListState<T> {
    name: String,
    _t: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> ListState<T> {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            _t: PhantomData,
        }
    }

    fn element_key(prefix: &[u8], i: u64) -> Vec<u8> {
        let mut k = prefix.to_vec();
        k.extend_from_slice(&i.to_be_bytes());
        k
    }

    /// The list's length: one read per key, then cached.
    async fn len_at(&self, ctx: &mut Context, prefix: &[u8]) -> Result<u64, RuntimeError> {
        match ctx.get_at(LIST_TABLE, prefix).await? {
            None => Ok(0),
            Some(raw) => <[u8; 8]>::try_from(raw.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| RuntimeError::BadState {
                    state: self.name.clone(),
                    why: format!("a list length of {} bytes, not 8", raw.len()),
                }),
        }
    }

    pub async fn get(&self, ctx: &mut Context) -> Result<Vec<T>, RuntimeError> {
        let prefix = placed_prefix(ctx, &self.name)?;
        if self.len_at(ctx, &prefix).await? == 0 {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for (key, value) in ctx.scan_at(LIST_TABLE, &prefix).await? {
            // The prefix's own key is the length.
            if key.len() > prefix.len() {
                out.push(decode(&self.name, &value)?);
            }
        }
        Ok(out)
    }

    pub async fn add(&self, ctx: &mut Context, v: T) -> Result<(), RuntimeError> {
        let prefix = placed_prefix(ctx, &self.name)?;
        let n = self.len_at(ctx, &prefix).await?;
        let raw = encode(&self.name, &v)?;
        ctx.put_at(LIST_TABLE, Self::element_key(&prefix, n), Some(raw))
            .await?;
        ctx.put_at(LIST_TABLE, prefix, Some((n + 1).to_be_bytes().to_vec()))
            .await
    }

    pub async fn update(&self, ctx: &mut Context, list: &[T]) -> Result<(), RuntimeError> {
        self.clear(ctx).await?;
        let prefix = placed_prefix(ctx, &self.name)?;
        for (i, v) in list.iter().enumerate() {
            let raw = encode(&self.name, v)?;
            ctx.put_at(LIST_TABLE, Self::element_key(&prefix, i as u64), Some(raw))
                .await?;
        }
        if !list.is_empty() {
            let len = (list.len() as u64).to_be_bytes().to_vec();
            ctx.put_at(LIST_TABLE, prefix, Some(len)).await?;
        }
        Ok(())
    }

    /// Deletes every element and the length: no scan, the indices are
    /// `0..len`.
    pub async fn clear(&self, ctx: &mut Context) -> Result<(), RuntimeError> {
        let prefix = placed_prefix(ctx, &self.name)?;
        let n = self.len_at(ctx, &prefix).await?;
        for i in 0..n {
            ctx.put_at(LIST_TABLE, Self::element_key(&prefix, i), None)
                .await?;
        }
        if n > 0 {
            ctx.put_at(LIST_TABLE, prefix, None).await?;
        }
        Ok(())
    }
}

/// One value per key that every add folds into with a reduce function.
pub struct ReducingState<T> {
    name: String,
    reduce: fn(T, T) -> T,
}

impl<T: Serialize + DeserializeOwned> ReducingState<T> {
    pub fn new(name: impl Into<String>, reduce: fn(T, T) -> T) -> Self {
        Self {
            name: name.into(),
            reduce,
        }
    }

    pub async fn get(&self, ctx: &mut Context) -> Result<Option<T>, RuntimeError> {
        load(ctx, &self.name).await
    }

    pub async fn add(&self, ctx: &mut Context, v: T) -> Result<(), RuntimeError> {
        let next = match load(ctx, &self.name).await? {
            Some(acc) => (self.reduce)(acc, v),
            None => v,
        };
        store(ctx, &self.name, &next).await
    }

    pub async fn clear(&self, ctx: &mut Context) -> Result<(), RuntimeError> {
        ctx.put_raw(&self.name, None).await
    }
}

/// How inputs fold into an accumulator and what the accumulator yields
/// (Flink's `AggregateFunction`).
pub trait Aggregate: Send + Sync + 'static {
    type In;
    type Acc: Serialize + DeserializeOwned + Send;
    type Out;
    fn create(&self) -> Self::Acc;
    fn add(&self, acc: &mut Self::Acc, input: Self::In);
    fn result(&self, acc: &Self::Acc) -> Self::Out;
}

/// One accumulator per key.
pub struct AggregatingState<A: Aggregate> {
    name: String,
    agg: A,
}

impl<A: Aggregate> AggregatingState<A> {
    pub fn new(name: impl Into<String>, agg: A) -> Self {
        Self {
            name: name.into(),
            agg,
        }
    }

    pub async fn get(&self, ctx: &mut Context) -> Result<Option<A::Out>, RuntimeError> {
        let acc: Option<A::Acc> = load(ctx, &self.name).await?;
        Ok(acc.map(|a| self.agg.result(&a)))
    }

    pub async fn add(&self, ctx: &mut Context, input: A::In) -> Result<(), RuntimeError> {
        let mut acc = match load(ctx, &self.name).await? {
            Some(a) => a,
            None => self.agg.create(),
        };
        self.agg.add(&mut acc, input);
        store(ctx, &self.name, &acc).await
    }

    pub async fn clear(&self, ctx: &mut Context) -> Result<(), RuntimeError> {
        ctx.put_raw(&self.name, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::{Input, Operator};
    use crate::testing::Harness;

    /// Holds nothing itself; the tests drive the state handles directly.
    struct Idle;
    impl Operator for Idle {
        async fn process(&mut self, _: &mut Context, _: Input) -> Result<(), RuntimeError> {
            Ok(())
        }
    }

    // Every test runs with a cache and without one: the values must come
    // back the same from the store as from memory.
    const CACHES: [usize; 2] = [0, 1 << 20];

    #[tokio::test]
    async fn value_state_is_per_key_and_cleared_by_clear() {
        for cache in CACHES {
            let mut h = Harness::new(Idle, cache);
            let v = ValueState::<u64>::new("v");
            v.set(h.context_for(b"a"), &1).await.unwrap();
            v.set(h.context_for(b"b"), &2).await.unwrap();
            assert_eq!(v.get(h.context_for(b"a")).await.unwrap(), Some(1));
            assert_eq!(v.get(h.context_for(b"b")).await.unwrap(), Some(2));
            v.clear(h.context_for(b"a")).await.unwrap();
            assert_eq!(v.get(h.context_for(b"a")).await.unwrap(), None);
            assert_eq!(h.stored(), 1, "a cleared value is deleted, not kept empty");
        }
    }

    #[tokio::test]
    async fn map_state_keeps_entries_ordered_and_removes_them() {
        for cache in CACHES {
            let mut h = Harness::new(Idle, cache);
            let m = MapState::<String, i64>::new("m");
            let ctx = h.context_for(b"k");
            m.put(ctx, "b".into(), 2).await.unwrap();
            m.put(ctx, "a".into(), 1).await.unwrap();
            m.put(ctx, "b".into(), 3).await.unwrap();
            assert_eq!(
                m.entries(ctx).await.unwrap(),
                vec![("a".to_string(), 1), ("b".to_string(), 3)]
            );
            assert_eq!(m.get(ctx, &"b".into()).await.unwrap(), Some(3));
            assert_eq!(m.remove(ctx, &"a".into()).await.unwrap(), Some(1));
            assert_eq!(m.remove(ctx, &"a".into()).await.unwrap(), None);
            assert_eq!(m.remove(ctx, &"b".into()).await.unwrap(), Some(3));
            assert_eq!(h.stored(), 0, "an emptied map leaves nothing stored");
        }
    }

    #[tokio::test]
    async fn a_map_keeps_an_entry_per_stored_key_apart_from_other_keys_and_maps() {
        for cache in CACHES {
            let mut h = Harness::new(Idle, cache);
            // "m" is a prefix of "mm", and 9 sorts after 10 as JSON bytes.
            let (m, mm) = (
                MapState::<i64, i64>::new("m"),
                MapState::<i64, i64>::new("mm"),
            );
            for k in [10, 9, -3] {
                m.put(h.context_for(b"a"), k, k * 2).await.unwrap();
            }
            m.put(h.context_for(b"ab"), 1, 1).await.unwrap();
            mm.put(h.context_for(b"a"), 7, 7).await.unwrap();
            assert_eq!(h.stored(), 5, "one stored value per entry");
            assert_eq!(
                m.entries(h.context_for(b"a")).await.unwrap(),
                vec![(-3, -6), (9, 18), (10, 20)]
            );
            assert_eq!(m.entries(h.context_for(b"ab")).await.unwrap(), vec![(1, 1)]);
            assert_eq!(mm.entries(h.context_for(b"a")).await.unwrap(), vec![(7, 7)]);
            m.clear(h.context_for(b"a")).await.unwrap();
            assert_eq!(m.entries(h.context_for(b"a")).await.unwrap(), vec![]);
            assert_eq!(m.get(h.context_for(b"a"), &9).await.unwrap(), None);
            assert_eq!(mm.get(h.context_for(b"a"), &7).await.unwrap(), Some(7));
            assert_eq!(h.stored(), 2);
        }
    }

    #[tokio::test]
    async fn a_map_larger_than_a_load_or_than_the_cache_is_read_an_entry_at_a_time() {
        let m = MapState::<u32, u32>::new("m");
        // More entries than a load takes: one bounded scan, then a read
        // per entry, never the whole map.
        let mut h = Harness::new(Idle, 1 << 20);
        let n = crate::context::LOAD_LIMIT + 500;
        for i in 0..n {
            m.put(h.context_for(b"big"), i, i).await.unwrap();
        }
        let before = h.store_reads();
        for i in n..n + 100 {
            assert_eq!(m.get(h.context_for(b"big"), &i).await.unwrap(), None);
        }
        let expected = 1 + u64::from(crate::context::LOAD_LIMIT) + 100;
        assert_eq!(h.store_reads() - before, expected);

        // Fewer than a load takes but more than the cache keeps (about 50
        // entries): each read of an evicted entry scanned the whole map
        // again, 100 scans of 500 here, before such a map was marked large.
        let mut h = Harness::new(Idle, 50 * 100);
        for i in 0..500 {
            m.put(h.context_for(b"k"), i, i).await.unwrap();
        }
        let before = h.store_reads();
        for i in 0..100 {
            assert_eq!(m.get(h.context_for(b"k"), &i).await.unwrap(), Some(i));
        }
        let read = h.store_reads() - before;
        assert!(read <= 1 + 500 + 100, "{read} reads for 100 entries");
        assert_eq!(m.entries(h.context_for(b"k")).await.unwrap().len(), 500);

        // A cleared map's entries are known absent, large or not (these
        // keys' deletes were not the last ones the cache kept, and 1,000
        // was never written).
        m.clear(h.context_for(b"k")).await.unwrap();
        let before = h.store_reads();
        for i in [0, 1, 1000] {
            assert_eq!(m.get(h.context_for(b"k"), &i).await.unwrap(), None);
        }
        m.put(h.context_for(b"k"), 1, 1).await.unwrap();
        assert_eq!(m.get(h.context_for(b"k"), &1).await.unwrap(), Some(1));
        assert_eq!(h.store_reads(), before, "no read after the clear");
    }

    #[tokio::test]
    async fn list_state_appends_in_order() {
        for cache in CACHES {
            let mut h = Harness::new(Idle, cache);
            let l = ListState::<u32>::new("l");
            let ctx = h.context_for(b"k");
            for i in [3, 1, 2] {
                l.add(ctx, i).await.unwrap();
            }
            assert_eq!(l.get(ctx).await.unwrap(), vec![3, 1, 2]);
            l.update(ctx, &[9]).await.unwrap();
            assert_eq!(l.get(ctx).await.unwrap(), vec![9]);
            l.update(ctx, &[]).await.unwrap();
            assert_eq!(l.get(ctx).await.unwrap(), Vec::<u32>::new());
            assert_eq!(h.stored(), 0);
        }
    }

    #[tokio::test]
    async fn a_list_keeps_an_element_per_stored_key_in_order_apart_from_others() {
        for cache in CACHES {
            let mut h = Harness::new(Idle, cache);
            let (l, ll) = (ListState::<u32>::new("l"), ListState::<u32>::new("ll"));
            // Past 255 elements an index takes a second byte: order holds.
            for i in 0..300 {
                l.add(h.context_for(b"k"), i).await.unwrap();
            }
            ll.add(h.context_for(b"k"), 7).await.unwrap();
            l.add(h.context_for(b"k2"), 9).await.unwrap();
            assert_eq!(
                h.stored(),
                300 + 1 + 2 + 2,
                "an element each, a length per list"
            );
            let got = l.get(h.context_for(b"k")).await.unwrap();
            assert_eq!(got, (0..300).collect::<Vec<_>>());
            assert_eq!(ll.get(h.context_for(b"k")).await.unwrap(), vec![7]);
            assert_eq!(l.get(h.context_for(b"k2")).await.unwrap(), vec![9]);
            l.update(h.context_for(b"k"), &[5, 6]).await.unwrap();
            assert_eq!(l.get(h.context_for(b"k")).await.unwrap(), vec![5, 6]);
            assert_eq!(h.stored(), 3 + 2 + 2);
        }
    }

    #[tokio::test]
    async fn a_list_length_that_is_not_8_bytes_is_an_error_not_a_panic() {
        let mut h = Harness::new(Idle, 0);
        let ctx = h.context_for(b"k");
        let prefix = placed_prefix(ctx, "l").unwrap();
        ctx.put_at(LIST_TABLE, prefix, Some(vec![1, 2, 3]))
            .await
            .unwrap();
        let err = ListState::<u32>::new("l").add(ctx, 1).await.unwrap_err();
        assert!(matches!(err, RuntimeError::BadState { .. }), "{err}");
    }

    #[tokio::test]
    async fn reducing_and_aggregating_state_fold_every_add() {
        struct Mean;
        impl Aggregate for Mean {
            type In = f64;
            type Acc = (f64, u64);
            type Out = f64;
            fn create(&self) -> (f64, u64) {
                (0.0, 0)
            }
            fn add(&self, acc: &mut (f64, u64), x: f64) {
                acc.0 += x;
                acc.1 += 1;
            }
            fn result(&self, acc: &(f64, u64)) -> f64 {
                acc.0 / acc.1 as f64
            }
        }
        for cache in CACHES {
            let mut h = Harness::new(Idle, cache);
            let max = ReducingState::<i64>::new("max", |a, b| a.max(b));
            let mean = AggregatingState::new("mean", Mean);
            let ctx = h.context_for(b"k");
            assert_eq!(max.get(ctx).await.unwrap(), None);
            for x in [4, -1, 7, 2] {
                max.add(ctx, x).await.unwrap();
                mean.add(ctx, x as f64).await.unwrap();
            }
            assert_eq!(max.get(ctx).await.unwrap(), Some(7));
            assert_eq!(mean.get(ctx).await.unwrap(), Some(3.0));
            mean.clear(ctx).await.unwrap();
            assert_eq!(mean.get(ctx).await.unwrap(), None);
        }
    }

    #[tokio::test]
    async fn a_value_of_another_type_is_an_error_not_a_panic() {
        let mut h = Harness::new(Idle, 0);
        ValueState::<String>::new("v")
            .set(h.context_for(b"k"), &"text".to_string())
            .await
            .unwrap();
        let err = ValueState::<u64>::new("v")
            .get(h.context_for(b"k"))
            .await
            .unwrap_err();
        assert!(matches!(err, RuntimeError::BadState { .. }), "{err}");
    }
}
