//! The key-value API: `/v1/kv/{key}`, `/v1/kv` (scan), `/v1/cas`, `/v1/txn`.

use std::collections::HashMap;

use ::http::StatusCode;

use super::http::{self, ApiError, decode_component, only_params, parse_json, query_params};
use super::propose::{limit_error, propose, read_barrier};
use super::{Failure, Handled, ok};
use crate::api::{
    CasRequest, CasResponse, Consistency, DeleteResponse, ErrorBody, ErrorCode, KeyValue,
    PutRequest, PutResponse, ScanResponse, TxnRequest, TxnResponse,
};
use crate::limits::{self, DEFAULT_SCAN_LIMIT, MAX_SCAN_LIMIT, MAX_SCAN_RESPONSE_BYTES};
use crate::node::NodeState;
use crate::types::{Command, Response, Txn, Versioned};

const KEY_PREFIX: &str = "/v1/kv/";

/// The key named by a `/v1/kv/{key}` path: percent-decoded UTF-8, within limits.
fn key_from_path(path: &str) -> Result<String, Failure> {
    let raw = path.strip_prefix(KEY_PREFIX).unwrap_or_default();
    let key = decode_component(raw, "the key")?;
    limits::check_key(&key).map_err(limit_error)?;
    Ok(key)
}

fn consistency(params: &HashMap<String, String>) -> Result<Consistency, Failure> {
    match params.get("consistency").map(String::as_str) {
        None | Some("linearizable") => Ok(Consistency::Linearizable),
        Some("stale") => Ok(Consistency::Stale),
        Some(other) => Err(ApiError::bad_request(format!(
            "consistency must be \"linearizable\" or \"stale\", not {other:?}"
        ))
        .into()),
    }
}

fn storage_error(e: crate::storage::StoreError) -> Failure {
    tracing::error!(error = %e, "reading the state machine failed");
    ApiError::internal(format!("reading the store failed: {e}")).into()
}

fn unexpected(response: &Response) -> Failure {
    ApiError::internal(format!("unexpected apply result {response:?}")).into()
}

fn key_value(key: String, versioned: Versioned) -> KeyValue {
    KeyValue {
        key,
        value: versioned.value,
        revision: versioned.revision,
    }
}

pub async fn get(state: &NodeState, path: &str, query: Option<&str>) -> Handled {
    let key = key_from_path(path)?;
    let params = query_params(query)?;
    only_params(&params, &["consistency"])?;
    read_barrier(state, consistency(&params)?).await?;
    match state.reader.get(&key).map_err(storage_error)? {
        Some(versioned) => ok(&key_value(key, versioned)),
        None => {
            Err(ApiError::new(ErrorCode::KeyNotFound, format!("key {key:?} has no value")).into())
        }
    }
}

pub async fn put(state: &NodeState, path: &str, query: Option<&str>, body: &[u8]) -> Handled {
    let key = key_from_path(path)?;
    only_params(&query_params(query)?, &[])?;
    let request: PutRequest = parse_json(body)?;
    match propose(
        state,
        Command::Put {
            key,
            value: request.value,
        },
    )
    .await?
    {
        Response::Put { revision } => ok(&PutResponse { revision }),
        other => Err(unexpected(&other)),
    }
}

pub async fn delete(state: &NodeState, path: &str, query: Option<&str>) -> Handled {
    let key = key_from_path(path)?;
    only_params(&query_params(query)?, &[])?;
    match propose(state, Command::Delete { key }).await? {
        Response::Delete { revision, deleted } => ok(&DeleteResponse { revision, deleted }),
        other => Err(unexpected(&other)),
    }
}

pub async fn scan(state: &NodeState, query: Option<&str>) -> Handled {
    let params = query_params(query)?;
    only_params(&params, &["prefix", "cursor", "limit", "consistency"])?;
    let prefix = params.get("prefix").cloned().unwrap_or_default();
    let cursor = params.get("cursor").cloned();
    let limit = match params.get("limit") {
        None => DEFAULT_SCAN_LIMIT,
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=MAX_SCAN_LIMIT).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "limit must be a whole number from 1 to {MAX_SCAN_LIMIT}, not {text:?}"
                ))
                .into());
            }
        },
    };
    read_barrier(state, consistency(&params)?).await?;
    // One more than asked tells whether there is more.
    let found = state
        .reader
        .scan(&prefix, cursor.as_deref(), limit + 1)
        .map_err(storage_error)?;
    let mut items = Vec::new();
    let mut bytes = 0u64;
    let mut more = false;
    for (key, versioned) in found {
        let size = key.len() as u64 + versioned.value.len() as u64;
        if items.len() == limit as usize
            || (!items.is_empty() && bytes + size > MAX_SCAN_RESPONSE_BYTES)
        {
            more = true;
            break;
        }
        bytes += size;
        items.push(key_value(key, versioned));
    }
    let next_cursor = if more {
        items.last().map(|kv: &KeyValue| kv.key.clone())
    } else {
        None
    };
    ok(&ScanResponse { items, next_cursor })
}

pub async fn cas(state: &NodeState, body: &[u8]) -> Handled {
    let request: CasRequest = parse_json(body)?;
    let key = request.key.clone();
    let command = Command::CompareAndSwap {
        key: request.key,
        expected: request.expected,
        value: request.value,
    };
    match propose(state, command).await? {
        Response::CompareAndSwap {
            revision,
            succeeded: true,
            ..
        } => ok(&CasResponse {
            succeeded: true,
            revision,
            current: None,
        }),
        Response::CompareAndSwap {
            succeeded: false,
            current,
            ..
        } => Ok(http::json(
            StatusCode::CONFLICT,
            &ErrorBody {
                code: ErrorCode::CasFailed,
                message: format!("key {key:?} does not hold the expected value"),
                leader: None,
                current: current.map(|v| key_value(key, v)),
            },
        )),
        other => Err(unexpected(&other)),
    }
}

pub async fn txn(state: &NodeState, body: &[u8]) -> Handled {
    let request: TxnRequest = parse_json(body)?;
    let txn: Txn = request.into();
    match propose(state, Command::Txn(txn)).await? {
        Response::Txn {
            revision,
            succeeded,
        } => ok(&TxnResponse {
            succeeded,
            revision,
        }),
        other => Err(unexpected(&other)),
    }
}
