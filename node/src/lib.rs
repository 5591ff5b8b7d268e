//! aspen-node: a replicated key-value store member.
//!
//! An openraft node whose log and state machine live in one redb file
//! (`storage`), serving clients, the operator and its peers over HTTP.

pub mod api;
pub mod bench;
pub mod client;
pub mod config;
pub mod ctl;
pub mod limits;
pub mod logging;
pub mod network;
pub mod node;
pub mod server;
pub mod storage;
pub mod types;
