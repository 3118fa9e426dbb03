//! Benchmark workloads: each says which operation a client does next.
//! Adding one is a type implementing [`BenchWorkload`] and a line in
//! [`WorkloadKind::build`].

use rand::rngs::SmallRng;
use rand::Rng;
use streamshield_client::Consistency;

use super::target::Op;

/// The key space and values all workloads share, so both targets see the
/// same data.
#[derive(Debug, Clone, Copy)]
pub struct KeySpace {
    pub keys: u64,
    pub value_size: usize,
}

impl KeySpace {
    pub fn key(&self, i: u64) -> Vec<u8> {
        format!("bench/{i:010}").into_bytes()
    }

    pub fn random_key(&self, rng: &mut SmallRng) -> Vec<u8> {
        self.key(rng.random_range(0..self.keys))
    }

    pub fn value(&self, rng: &mut SmallRng) -> Vec<u8> {
        let mut v = vec![0u8; self.value_size];
        rng.fill(&mut v[..]);
        v
    }
}

pub trait BenchWorkload: Send + Sync {
    /// The next operation of one closed-loop client.
    fn next_op(&self, rng: &mut SmallRng) -> Op;
    /// Whether every key must exist before the measurement (reads).
    fn needs_preload(&self) -> bool {
        false
    }
}

/// Durable single-key writes.
pub struct SyncPut(pub KeySpace);

impl BenchWorkload for SyncPut {
    fn next_op(&self, rng: &mut SmallRng) -> Op {
        Op::Put {
            key: self.0.random_key(rng),
            value: self.0.value(rng),
        }
    }
}

/// Point reads of existing keys.
pub struct Get(pub KeySpace, pub Consistency);

impl BenchWorkload for Get {
    fn next_op(&self, rng: &mut SmallRng) -> Op {
        Op::Get {
            key: self.0.random_key(rng),
            consistency: self.1,
        }
    }
    fn needs_preload(&self) -> bool {
        true
    }
}

/// Half durable writes, half linearizable reads, on the same keys.
pub struct Mixed(pub KeySpace);

impl BenchWorkload for Mixed {
    fn next_op(&self, rng: &mut SmallRng) -> Op {
        if rng.random_bool(0.5) {
            SyncPut(self.0).next_op(rng)
        } else {
            Get(self.0, Consistency::Linearizable).next_op(rng)
        }
    }
    fn needs_preload(&self) -> bool {
        true
    }
}

/// The closed-loop workloads `bench --workload` accepts (`limits` is not
/// one: it measures the machine, not a store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    SyncPut,
    Get(Consistency),
    Mixed,
}

impl WorkloadKind {
    pub fn name(self) -> String {
        match self {
            Self::SyncPut => "sync-put".into(),
            Self::Get(Consistency::Linearizable) => "get-linearizable".into(),
            Self::Get(Consistency::Stale) => "get-stale".into(),
            Self::Mixed => "mixed".into(),
        }
    }

    pub fn build(self, space: KeySpace) -> Box<dyn BenchWorkload> {
        match self {
            Self::SyncPut => Box::new(SyncPut(space)),
            Self::Get(c) => Box::new(Get(space, c)),
            Self::Mixed => Box::new(Mixed(space)),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn mixed_is_about_half_writes_within_the_key_space() {
        let space = KeySpace {
            keys: 100,
            value_size: 16,
        };
        let w = Mixed(space);
        let mut rng = SmallRng::seed_from_u64(7);
        let mut puts = 0;
        for _ in 0..10_000 {
            match w.next_op(&mut rng) {
                Op::Put { key, value } => {
                    puts += 1;
                    assert_eq!(value.len(), 16);
                    assert!(key < space.key(100));
                }
                Op::Get { key, consistency } => {
                    assert_eq!(consistency, Consistency::Linearizable);
                    assert!(key < space.key(100));
                }
            }
        }
        assert!((4_500..5_500).contains(&puts), "puts = {puts}");
    }
}
