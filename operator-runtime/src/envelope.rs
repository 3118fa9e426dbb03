//! How the runtime's records travel in a stream.
//!
//! A record's key is the user key (it picks the partition); its value is
//! a one-byte tag, the event time (i64, big-endian), then the payload:
//!
//! * tag 0, data: the payload is the user value;
//! * tag 1, watermark: no event in this partition from the writing task
//!   will be older than the event time any more. The payload is the
//!   writing task's index (u32, big-endian): a partition fed by several
//!   upstream tasks is only as far as the slowest of them.
//!
//! Watermarks travel in-band, committed with the data they follow, so a
//! replay after a failure sees exactly the watermarks (and so fires exactly
//! the timers) the first run saw.

use streamshield_client::pb;

const DATA: u8 = 0;
const WATERMARK: u8 = 1;
const HEADER: usize = 9;

/// One decoded record of a runtime stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope {
    Data {
        key: Vec<u8>,
        value: Vec<u8>,
        event_time: i64,
    },
    Watermark {
        source: u32,
        time: i64,
    },
}

pub fn data(key: Vec<u8>, value: &[u8], event_time: i64) -> pb::Record {
    let mut v = Vec::with_capacity(HEADER + value.len());
    v.push(DATA);
    v.extend_from_slice(&event_time.to_be_bytes());
    v.extend_from_slice(value);
    pb::Record { key, value: v }
}

pub fn watermark(source: u32, time: i64) -> pb::Record {
    let mut v = Vec::with_capacity(HEADER + 4);
    v.push(WATERMARK);
    v.extend_from_slice(&time.to_be_bytes());
    v.extend_from_slice(&source.to_be_bytes());
    pb::Record {
        key: Vec::new(),
        value: v,
    }
}

/// The record, or why it is not one of the runtime's.
pub fn decode(key: Vec<u8>, mut value: Vec<u8>) -> Result<Envelope, &'static str> {
    if value.len() < HEADER {
        return Err("shorter than the 9-byte header");
    }
    let time = i64::from_be_bytes(value[1..HEADER].try_into().expect("8 bytes"));
    match value[0] {
        DATA => {
            value.drain(..HEADER);
            Ok(Envelope::Data {
                key,
                value,
                event_time: time,
            })
        }
        WATERMARK => {
            let source: [u8; 4] = value[HEADER..]
                .try_into()
                .map_err(|_| "a watermark's source is not 4 bytes")?;
            Ok(Envelope::Watermark {
                source: u32::from_be_bytes(source),
                time,
            })
        }
        _ => Err("unknown tag"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_and_watermarks_round_trip() {
        let r = data(b"k".to_vec(), b"v", -5);
        assert_eq!(
            decode(r.key, r.value),
            Ok(Envelope::Data {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                event_time: -5
            })
        );
        let w = watermark(7, i64::MAX);
        assert_eq!(
            decode(w.key, w.value),
            Ok(Envelope::Watermark {
                source: 7,
                time: i64::MAX
            })
        );
    }

    #[test]
    fn foreign_bytes_are_refused_not_misread() {
        assert!(decode(Vec::new(), b"hello".to_vec()).is_err());
        assert!(decode(Vec::new(), vec![9; 12]).is_err());
        assert!(decode(Vec::new(), vec![1; 11]).is_err());
    }
}
