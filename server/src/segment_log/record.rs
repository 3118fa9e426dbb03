//! One record of a log segment, as laid out on disk.
//!
//! ```text
//! len u32 | checksum u64 | segment u64 | generation u64 | kind u8 | payload (len bytes)
//! ```
//!
//! All little-endian; `checksum` is xxh3-64 of everything else. A
//! record is only taken if its checksum matches and it names the segment
//! it is read from, so neither a torn write nor what a recycled file held
//! before can pass for a record. A segment reads as zeros (fallocated) or
//! is recycled before it is used, so the log ends where the next header
//! does not decode.

pub const HEADER_BYTES: usize = 4 + 8 + 8 + 8 + 1;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One Raft log entry (a `pb::Entry`).
    Entry = 1,
    /// The segment ends here; the log goes on in the next one.
    SegmentEnd = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub len: u32,
    pub segment: u64,
    /// Raised by every truncation: a record older than the one before it
    /// was cut off by a truncation, and the log ends before it.
    pub generation: u64,
    pub kind: Kind,
}

/// `payload` as a record of `segment`.
pub fn encode(segment: u64, generation: u64, kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&segment.to_le_bytes());
    out.extend_from_slice(&generation.to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(payload);
    let sum = checksum(out[..HEADER_BYTES].try_into().expect("header"), payload);
    out[4..12].copy_from_slice(&sum.to_le_bytes());
    out
}

fn checksum(header_raw: &[u8; HEADER_BYTES], payload: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&header_raw[0..4]);
    h.update(&header_raw[12..]);
    h.update(payload);
    h.digest()
}

/// The header at the start of `raw`, if it is one of `segment`'s records
/// and its payload fits in `room` bytes after it. The payload is checked
/// by [`verify`].
pub fn header(raw: &[u8; HEADER_BYTES], segment: u64, room: u64) -> Option<Header> {
    let len = u32::from_le_bytes(raw[0..4].try_into().ok()?);
    let seg = u64::from_le_bytes(raw[12..20].try_into().ok()?);
    let generation = u64::from_le_bytes(raw[20..28].try_into().ok()?);
    let kind = match raw[28] {
        1 => Kind::Entry,
        2 => Kind::SegmentEnd,
        _ => return None,
    };
    if seg != segment || u64::from(len) > room {
        return None;
    }
    Some(Header {
        len,
        segment: seg,
        generation,
        kind,
    })
}

/// Whether `header_raw` followed by `payload` is what was written.
pub fn verify(header_raw: &[u8; HEADER_BYTES], payload: &[u8]) -> bool {
    let stored = u64::from_le_bytes(header_raw[4..12].try_into().expect("8 bytes"));
    checksum(header_raw, payload) == stored
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(raw: &[u8]) -> ([u8; HEADER_BYTES], &[u8]) {
        (
            raw[..HEADER_BYTES].try_into().unwrap(),
            &raw[HEADER_BYTES..],
        )
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let raw = encode(7, 3, Kind::Entry, b"payload");
        let (h, p) = split(&raw);
        let got = header(&h, 7, p.len() as u64).expect("a header");
        assert_eq!(
            got,
            Header {
                len: 7,
                segment: 7,
                generation: 3,
                kind: Kind::Entry
            }
        );
        assert!(verify(&h, p));
    }

    #[test]
    fn zeros_another_segments_record_and_damage_are_not_records() {
        assert!(header(&[0; HEADER_BYTES], 1, 1 << 20).is_none());
        let raw = encode(7, 1, Kind::Entry, b"payload");
        let (h, p) = split(&raw);
        assert!(header(&h, 8, 1 << 20).is_none(), "a recycled file's record");
        assert!(header(&h, 7, 6).is_none(), "runs past the segment's end");
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x40;
            let (h, p) = split(&bad);
            let whole = header(&h, 7, 1 << 20).is_some_and(|_| verify(&h, p));
            assert!(!whole, "a flipped bit at byte {i} went unnoticed");
        }
        assert!(verify(&h, p));
    }
}
