//! The on-disk encoding of every record the stores keep.
//!
//! One function pair per record kind, so a field is written and read by the same
//! typed code: `committed` is a `LogId`, stored only when there is one, and read
//! back as exactly that. Structured records are a format byte followed by
//! postcard; a stored value is its revision (8 bytes, little endian) followed by
//! the UTF-8 value, so reads decode it without an intermediate allocation.
//! Changing any layout here means a new `FORMAT` and a schema migration.

use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::types::{Entry, LogId, SnapshotMeta, StoredMembership, Versioned, Vote};

/// Format byte that starts every structured record.
pub const FORMAT_V1: u8 = 1;

/// A stored record could not be decoded: the file is damaged or was written by
/// software that does not share this encoding.
#[derive(Debug, Error)]
#[error("cannot decode {what}: {reason}")]
pub struct CodecError {
    pub what: &'static str,
    pub reason: String,
}

impl CodecError {
    fn new(what: &'static str, reason: impl Into<String>) -> Self {
        CodecError {
            what,
            reason: reason.into(),
        }
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_V1];
    // Serialising our own types into a Vec cannot fail: postcard errors only on
    // unsupported serde features (none are used) or a full fixed-size buffer.
    postcard::to_io(value, &mut out).expect("postcard encodes Aspen types into a Vec");
    out
}

fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::new(what, "empty record")),
        Some((&FORMAT_V1, body)) => {
            let (value, rest) = postcard::take_from_bytes(body)
                .map_err(|e| CodecError::new(what, e.to_string()))?;
            if !rest.is_empty() {
                return Err(CodecError::new(
                    what,
                    format!("{} trailing bytes after the record", rest.len()),
                ));
            }
            Ok(value)
        }
        Some((format, _)) => Err(CodecError::new(
            what,
            format!("unknown record format {format} (this build reads format {FORMAT_V1})"),
        )),
    }
}

pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    encode(entry)
}

pub fn decode_entry(bytes: &[u8]) -> Result<Entry, CodecError> {
    decode("log entry", bytes)
}

pub fn encode_log_id(log_id: &LogId) -> Vec<u8> {
    encode(log_id)
}

pub fn decode_log_id(what: &'static str, bytes: &[u8]) -> Result<LogId, CodecError> {
    decode(what, bytes)
}

pub fn encode_vote(vote: &Vote) -> Vec<u8> {
    encode(vote)
}

pub fn decode_vote(bytes: &[u8]) -> Result<Vote, CodecError> {
    decode("vote", bytes)
}

pub fn encode_membership(membership: &StoredMembership) -> Vec<u8> {
    encode(membership)
}

pub fn decode_membership(bytes: &[u8]) -> Result<StoredMembership, CodecError> {
    decode("membership", bytes)
}

pub fn encode_snapshot_meta(meta: &SnapshotMeta) -> Vec<u8> {
    encode(meta)
}

pub fn decode_snapshot_meta(bytes: &[u8]) -> Result<SnapshotMeta, CodecError> {
    decode("snapshot metadata", bytes)
}

pub fn encode_u64(value: u64) -> [u8; 8] {
    value.to_le_bytes()
}

pub fn decode_u64(what: &'static str, bytes: &[u8]) -> Result<u64, CodecError> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| CodecError::new(what, format!("expected 8 bytes, found {}", bytes.len())))?;
    Ok(u64::from_le_bytes(array))
}

/// Disk space Aspen accounts for one stored record (a log entry, or a key
/// with its value record) of `len` bytes. Small records share leaf pages and
/// count as their size plus per-entry overhead; a record over a quarter page
/// gets its own run of pages, which redb rounds up to a power of two.
pub fn stored_footprint(len: u64) -> u64 {
    const PAGE_BYTES: u64 = 4096;
    const ENTRY_OVERHEAD_BYTES: u64 = 16;
    if len <= PAGE_BYTES / 4 {
        len + ENTRY_OVERHEAD_BYTES
    } else {
        len.div_ceil(PAGE_BYTES).next_power_of_two() * PAGE_BYTES
    }
}

/// Size of a stored value record: revision plus value bytes.
pub fn value_record_len(value: &str) -> u64 {
    8 + value.len() as u64
}

pub fn encode_value(revision: u64, value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&revision.to_le_bytes());
    out.extend_from_slice(value.as_bytes());
    out
}

pub fn decode_value(bytes: &[u8]) -> Result<Versioned, CodecError> {
    if bytes.len() < 8 {
        return Err(CodecError::new(
            "value",
            format!("record is {} bytes, shorter than its revision", bytes.len()),
        ));
    }
    let (revision, value) = bytes.split_at(8);
    let revision = decode_u64("value revision", revision)?;
    let value = std::str::from_utf8(value)
        .map_err(|e| CodecError::new("value", format!("not UTF-8: {e}")))?;
    Ok(Versioned {
        value: value.to_owned(),
        revision,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::types::{Command, Membership, NodeAddr, Op, Txn};

    fn log_id(term: u64, node: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    fn membership() -> Membership {
        let nodes: BTreeMap<u64, NodeAddr> = (1..=3)
            .map(|id| {
                (
                    id,
                    NodeAddr {
                        peer_addr: format!("aspen-{id}:7001"),
                        client_addr: format!("aspen-{id}:7000"),
                    },
                )
            })
            .collect();
        Membership::new(vec![BTreeSet::from([1, 2])], nodes)
    }

    #[test]
    fn every_entry_payload_round_trips() {
        let payloads = [
            EntryPayload::Blank,
            EntryPayload::Normal(Command::Put {
                key: "k".into(),
                value: "v".into(),
            }),
            EntryPayload::Normal(Command::Txn(Txn {
                compare: vec![],
                success: vec![Op::Delete { key: "a".into() }],
                failure: vec![],
            })),
            EntryPayload::Membership(membership()),
        ];
        for payload in payloads {
            let entry = Entry {
                log_id: log_id(3, 1, 42),
                payload,
            };
            let decoded = decode_entry(&encode_entry(&entry)).unwrap();
            assert_eq!(decoded, entry);
        }
    }

    #[test]
    fn log_ids_votes_and_memberships_round_trip() {
        let id = log_id(7, 2, u64::MAX - 1);
        assert_eq!(decode_log_id("committed", &encode_log_id(&id)).unwrap(), id);

        let mut vote = Vote::new(9, 3);
        assert_eq!(decode_vote(&encode_vote(&vote)).unwrap(), vote);
        vote.commit();
        assert_eq!(decode_vote(&encode_vote(&vote)).unwrap(), vote);

        let stored = StoredMembership::new(Some(id), membership());
        assert_eq!(
            decode_membership(&encode_membership(&stored)).unwrap(),
            stored
        );
    }

    #[test]
    fn large_records_count_whole_power_of_two_page_runs() {
        assert_eq!(stored_footprint(100), 116);
        assert_eq!(stored_footprint(1025), 4096);
        assert_eq!(stored_footprint(4097), 8192);
        assert_eq!(stored_footprint(64 * 1024 + 8), 128 * 1024);
    }

    #[test]
    fn values_keep_their_revision() {
        let bytes = encode_value(99, "hello");
        assert_eq!(bytes.len() as u64, value_record_len("hello"));
        assert_eq!(
            decode_value(&bytes).unwrap(),
            Versioned {
                value: "hello".into(),
                revision: 99
            }
        );
    }

    #[test]
    fn unknown_formats_and_damage_are_reported() {
        let mut bytes = encode_log_id(&log_id(1, 1, 1));
        bytes[0] = 9;
        let err = decode_log_id("committed", &bytes).unwrap_err();
        assert!(err.to_string().contains("unknown record format 9"), "{err}");

        let mut bytes = encode_log_id(&log_id(1, 1, 1));
        bytes.push(0);
        assert!(decode_log_id("committed", &bytes).is_err());
        assert!(decode_log_id("committed", &[]).is_err());
        assert!(decode_value(&[1, 2, 3]).is_err());
        assert!(decode_value(&[0, 0, 0, 0, 0, 0, 0, 0, 0xff]).is_err());
    }
}
