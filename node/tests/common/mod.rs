//! Entry builders shared by the storage tests.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use aspen_node::types::{Command, Entry, LogId, Membership, NodeAddr};
use openraft::{CommittedLeaderId, EntryPayload};

pub fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

pub fn blank(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Blank,
    }
}

pub fn command(term: u64, index: u64, command: Command) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(command),
    }
}

pub fn put(term: u64, index: u64, key: &str, value: &str) -> Entry {
    command(
        term,
        index,
        Command::Put {
            key: key.into(),
            value: value.into(),
        },
    )
}

pub fn delete(term: u64, index: u64, key: &str) -> Entry {
    command(term, index, Command::Delete { key: key.into() })
}

pub fn membership(voters: &[u64]) -> Membership {
    let nodes: BTreeMap<u64, NodeAddr> = voters
        .iter()
        .map(|&id| {
            (
                id,
                NodeAddr {
                    peer_addr: format!("127.0.0.1:{}", 7100 + id),
                    client_addr: format!("127.0.0.1:{}", 7000 + id),
                },
            )
        })
        .collect();
    Membership::new(vec![voters.iter().copied().collect::<BTreeSet<_>>()], nodes)
}

pub fn membership_entry(term: u64, index: u64, voters: &[u64]) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Membership(membership(voters)),
    }
}
