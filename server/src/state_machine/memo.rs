//! What the apply path already knows about the store, so that a write
//! need not ask RocksDB.
//!
//! Each write used to make two point lookups before its two inserts: the
//! key's current version, and whether an answer for its `(client_id, seq)`
//! is already stored. Both are skiplist searches in a memtable holding
//! every recent version; together they were a third of the apply's CPU on
//! every replica (a probe applying 400,000 one-put writes through
//! `apply_chunk`: 13.2-13.9 µs of CPU per write with them, 8.4-9.6 with
//! the memo). In a cluster much of that search moves into the insert that
//! follows, which no longer finds the key's nodes in the CPU cache (see
//! the README). The memo holds:
//!
//! * the version of every data key a committed chunk touched, and
//! * the size of the last chunk's RocksDB write batch, so the next one
//!   starts that large ([`ApplyMemo::batch_bytes`]), and
//! * per client, a bound no stored answer's `seq` exceeds. A write above
//!   it is new for certain; one at or below it is looked up as before
//!   (a retry). The bound of a client seen for the first time comes from
//!   the store itself (its highest stored `seq`), so it holds after a
//!   restart too.
//!
//! Only the apply path writes the store, and it updates the memo after
//! each chunk's write succeeds, from what that chunk read and wrote. A
//! snapshot install replaces the store and clears the memo; a restart
//! starts with an empty one. Nothing but speed depends on a hit: every
//! miss reads RocksDB.

use foldhash::HashMap;

/// Entries kept per map before it starts over (each ~100 bytes).
pub const MAX_ENTRIES: usize = 1 << 18;

#[derive(Default)]
pub struct ApplyMemo {
    versions: HashMap<Vec<u8>, u64>,
    max_seq: HashMap<u64, u64>,
    /// The last chunk's batch size, up to [`MAX_BATCH_HINT`]: RocksDB's
    /// batch is one string, copied whole each time it outgrows itself (a
    /// chunk holds staged runs of 128 KiB and thousands of promoted keys).
    pub batch_bytes: usize,
}

/// A chunk that wrote more (a large epoch's step) does not make every
/// later batch start that large.
pub const MAX_BATCH_HINT: usize = 8 << 20;

impl ApplyMemo {
    /// The current version of a data key (0: absent), if known.
    pub fn version(&self, data_key: &[u8]) -> Option<u64> {
        self.versions.get(data_key).copied()
    }

    /// No stored answer of `client_id` has a `seq` above this, if known.
    pub fn max_seq(&self, client_id: u64) -> Option<u64> {
        self.max_seq.get(&client_id).copied()
    }

    /// What one committed chunk left behind.
    pub fn learn(
        &mut self,
        versions: impl IntoIterator<Item = (Vec<u8>, u64)>,
        max_seqs: impl IntoIterator<Item = (u64, u64)>,
    ) {
        if self.versions.len() >= MAX_ENTRIES {
            self.versions.clear();
        }
        self.versions.extend(versions);
        if self.max_seq.len() >= MAX_ENTRIES {
            self.max_seq.clear();
        }
        for (client, seq) in max_seqs {
            let bound = self.max_seq.entry(client).or_insert(seq);
            *bound = (*bound).max(seq);
        }
    }

    /// Data keys changed in ways the memo does not follow (a range
    /// deletion): forget their versions.
    pub fn forget_versions(&mut self) {
        self.versions.clear();
    }

    pub fn clear(&mut self) {
        self.versions.clear();
        self.max_seq.clear();
    }
}
