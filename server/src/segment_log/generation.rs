//! The generation floor: the highest generation the log has written
//! with, kept in a file of its own.
//!
//! Records tell new from old only by their generation (see [`super`]),
//! and a truncated segment is recycled with its records intact. If the
//! generation were taken from the records that survive a restart, a
//! truncation that cut off every record of the highest generation would
//! let it go back, and a recycled segment's old records could pass for
//! new ones when that segment's number comes back
//! (`the_generation_never_goes_back_across_a_restart` in the tests).
//! The floor is saved, durably, before any record carries a new
//! generation.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use super::spare::sync_dir;
use crate::rocks::corrupt;

const FILE: &str = "generation";
const TMP: &str = "generation.tmp";

/// The saved floor; 0 if none was saved yet.
pub fn load(dir: &Path) -> io::Result<u64> {
    let raw = match fs::read(dir.join(FILE)) {
        Ok(raw) => raw,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let bytes: [u8; 16] = raw
        .as_slice()
        .try_into()
        .map_err(|_| corrupt(format!("log generation file: {} bytes, not 16", raw.len())))?;
    let (value, sum) = bytes.split_at(8);
    if xxhash_rust::xxh3::xxh3_64(value).to_le_bytes() != sum {
        return Err(corrupt("log generation file: checksum mismatch"));
    }
    Ok(u64::from_le_bytes(value.try_into().expect("8 bytes")))
}

/// Saves `generation` as the floor, durably (written aside, synced,
/// renamed over the old one, directory synced).
pub fn save(dir: &Path, generation: u64) -> io::Result<()> {
    let value = generation.to_le_bytes();
    let mut bytes = value.to_vec();
    bytes.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&value).to_le_bytes());
    let mut f = File::create(dir.join(TMP))?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    fs::rename(dir.join(TMP), dir.join(FILE))?;
    sync_dir(dir)
}
