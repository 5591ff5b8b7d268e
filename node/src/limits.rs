//! Every size a request, a command or a transfer may have, in one place.
//!
//! Limits are checked at the boundary, before anything reaches Raft, and a
//! request over one gets a 4xx naming the limit. They are part of the API:
//! changing one is a compatibility decision.

use thiserror::Error;

/// Longest key, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 4 * 1024;
/// Longest value, in bytes of UTF-8.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Most comparisons in one transaction.
pub const MAX_TXN_COMPARES: usize = 128;
/// Most writes in one branch of a transaction (a batch is one branch).
pub const MAX_TXN_OPS: usize = 128;
/// Most key and value bytes one command may carry, all parts together.
pub const MAX_COMMAND_BYTES: u64 = 1536 * 1024;
/// Largest HTTP request body the client API reads.
pub const MAX_REQUEST_BODY_BYTES: usize = 2 * 1024 * 1024;
/// Largest number of items one scan returns.
pub const MAX_SCAN_LIMIT: u32 = 10_000;
/// Items a scan returns when the request names no limit.
pub const DEFAULT_SCAN_LIMIT: u32 = 100;
/// A scan stops adding items once its answer holds this many bytes of keys
/// and values (it always returns at least one), and offers a cursor.
pub const MAX_SCAN_RESPONSE_BYTES: u64 = 4 * 1024 * 1024;
/// Largest answer a node reads back when it forwards a request to the leader.
pub const MAX_FORWARDED_RESPONSE_BYTES: usize = 32 * 1024 * 1024;
/// Size of one snapshot chunk sent to a peer.
pub const SNAPSHOT_CHUNK_BYTES: u64 = 1024 * 1024;
/// Most client commands the node folds into one log entry.
pub const MAX_BATCH_COMMANDS: usize = 512;
/// A batch stops taking commands once it carries this many key and value
/// bytes; with the command that crosses it, an entry holds at most this plus
/// `MAX_COMMAND_BYTES`.
pub const MAX_BATCH_BYTES: u64 = 1024 * 1024;
/// Batches of one node in flight through Raft at once. openraft 0.9 appends
/// them one after another anyway, so more than one only splits the queue into
/// smaller batches: measured on a 3-node cluster at 64 clients, 1 gave the
/// highest throughput (4 and 16 were 4 % and 30 % lower).
pub const MAX_BATCHES_IN_FLIGHT: usize = 1;
/// Most log entries in one replication request.
pub const MAX_ENTRIES_PER_APPEND: u64 = 32;
/// Largest peer RPC body: a full append of the largest entries, with room
/// for framing.
pub const MAX_PEER_BODY_BYTES: usize = 128 * 1024 * 1024;
/// Smallest database size limit a node accepts.
pub const MIN_DB_BYTES: u64 = 1024 * 1024;
/// Live data (log entries, keys and values) may fill this percentage of the
/// database size limit; past it, writes that add data are refused as
/// `storage_full`. The rest is room for redb's page overhead (measured at
/// about 1.4 times the live bytes under random writes), copy-on-write pages
/// and entries still in flight, so the hard limit is not reached in service.
pub const LIVE_DATA_PERCENT_OF_LIMIT: u64 = 50;
/// Default database size limit.
pub const DEFAULT_MAX_DB_BYTES: u64 = 10 * 1024 * 1024 * 1024;

/// A request exceeded a named limit or was empty where it must not be.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LimitError {
    #[error("key must not be empty")]
    EmptyKey,
    #[error("key is {bytes} bytes; the limit is {MAX_KEY_BYTES}")]
    KeyTooLarge { bytes: usize },
    #[error("value is {bytes} bytes; the limit is {MAX_VALUE_BYTES}")]
    ValueTooLarge { bytes: usize },
    #[error("transaction has {count} comparisons; the limit is {MAX_TXN_COMPARES}")]
    TooManyCompares { count: usize },
    #[error("transaction branch has {count} operations; the limit is {MAX_TXN_OPS}")]
    TooManyOps { count: usize },
    #[error("command carries {bytes} bytes of keys and values; the limit is {MAX_COMMAND_BYTES}")]
    CommandTooLarge { bytes: u64 },
    #[error("transaction has no operations and no comparisons")]
    EmptyTxn,
    #[error("batches are formed by the node, not sent by clients")]
    InternalCommand,
}

impl LimitError {
    /// Too large (HTTP 413) rather than malformed (HTTP 400).
    pub fn is_too_large(&self) -> bool {
        !matches!(
            self,
            LimitError::EmptyKey | LimitError::EmptyTxn | LimitError::InternalCommand
        )
    }
}

pub fn check_key(key: &str) -> Result<(), LimitError> {
    if key.is_empty() {
        return Err(LimitError::EmptyKey);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(LimitError::KeyTooLarge { bytes: key.len() });
    }
    Ok(())
}

pub fn check_value(value: &str) -> Result<(), LimitError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(LimitError::ValueTooLarge { bytes: value.len() });
    }
    Ok(())
}

pub fn check_txn_len(compares: usize, success: usize, failure: usize) -> Result<(), LimitError> {
    if compares > MAX_TXN_COMPARES {
        return Err(LimitError::TooManyCompares { count: compares });
    }
    let ops = success.max(failure);
    if ops > MAX_TXN_OPS {
        return Err(LimitError::TooManyOps { count: ops });
    }
    if compares == 0 && success == 0 && failure == 0 {
        return Err(LimitError::EmptyTxn);
    }
    Ok(())
}

pub fn check_command_bytes(bytes: u64) -> Result<(), LimitError> {
    if bytes > MAX_COMMAND_BYTES {
        return Err(LimitError::CommandTooLarge { bytes });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_limits_are_inclusive_and_empty_keys_are_refused() {
        assert_eq!(check_key(""), Err(LimitError::EmptyKey));
        assert!(check_key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        assert_eq!(
            check_key(&"k".repeat(MAX_KEY_BYTES + 1)),
            Err(LimitError::KeyTooLarge {
                bytes: MAX_KEY_BYTES + 1
            })
        );
    }

    #[test]
    fn value_limit_is_inclusive() {
        assert!(check_value(&"v".repeat(MAX_VALUE_BYTES)).is_ok());
        assert!(check_value(&"v".repeat(MAX_VALUE_BYTES + 1)).is_err());
    }

    #[test]
    fn txn_limits_count_the_longer_branch() {
        assert!(check_txn_len(0, MAX_TXN_OPS, MAX_TXN_OPS).is_ok());
        assert_eq!(
            check_txn_len(0, 1, MAX_TXN_OPS + 1),
            Err(LimitError::TooManyOps {
                count: MAX_TXN_OPS + 1
            })
        );
        assert_eq!(check_txn_len(0, 0, 0), Err(LimitError::EmptyTxn));
        assert!(check_txn_len(MAX_TXN_COMPARES + 1, 1, 0).is_err());
    }

    #[test]
    fn empty_is_malformed_and_oversize_is_too_large() {
        assert!(!LimitError::EmptyKey.is_too_large());
        assert!(LimitError::ValueTooLarge { bytes: 1 }.is_too_large());
    }
}
