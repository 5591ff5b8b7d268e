//! Table definitions and the schema version check.
//!
//! A new file gets every table and the version record in its first commit. An
//! existing file must carry the version record: without it the file is not
//! Aspen's, and with a newer version it was written by a newer Aspen, whose
//! encoding this build must not guess at.

use std::path::Path;

use redb::{Database, ReadableDatabase, TableDefinition, TableHandle};

use super::super::StoreError;

/// Schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// `schema_version` (u32 LE), `format` ("aspen-node"), and the identity:
/// `node_id`, `cluster_id`, `removed_at`.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("aspen_meta");
/// Log index -> encoded entry.
pub const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// `vote`, `committed`, `last_purged`.
pub const RAFT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
/// Key -> value record (revision + value).
pub const SM_DATA: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_data");
/// `last_applied`, `last_membership`, `data_bytes`, `revision`.
pub const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
/// `meta` (encoded snapshot meta), `file` (file name in the snapshot directory).
pub const SNAPSHOT_META: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot_meta");

pub const KEY_SCHEMA_VERSION: &str = "schema_version";
pub const KEY_FORMAT: &str = "format";
pub const FORMAT_NAME: &[u8] = b"aspen-node";

pub const KEY_NODE_ID: &str = "node_id";
pub const KEY_CLUSTER_ID: &str = "cluster_id";
pub const KEY_REMOVED_AT: &str = "removed_at";

pub const KEY_VOTE: &str = "vote";
pub const KEY_COMMITTED: &str = "committed";
pub const KEY_LAST_PURGED: &str = "last_purged";

pub const KEY_LAST_APPLIED: &str = "last_applied";
pub const KEY_MEMBERSHIP: &str = "last_membership";
pub const KEY_DATA_BYTES: &str = "data_bytes";
pub const KEY_REVISION: &str = "revision";

pub const KEY_SNAPSHOT_META: &str = "meta";
pub const KEY_SNAPSHOT_FILE: &str = "file";

/// Verifies an existing file's schema, or lays out a new one.
pub fn check_or_init(db: &Database, path: &Path) -> Result<(), StoreError> {
    let redb_err = |op: &'static str| {
        let path = path.to_path_buf();
        move |e: redb::Error| StoreError::Redb {
            path,
            op,
            source: Box::new(e),
        }
    };
    let foreign = |detail: String| StoreError::Foreign {
        path: path.to_path_buf(),
        detail,
    };

    let txn = db
        .begin_read()
        .map_err(|e| redb_err("begin read")(e.into()))?;
    let tables: Vec<String> = txn
        .list_tables()
        .map_err(|e| redb_err("list tables")(e.into()))?
        .map(|t| t.name().to_owned())
        .collect();
    if tables.is_empty() {
        drop(txn);
        init(db).map_err(redb_err("initialise"))?;
        return Ok(());
    }
    if !tables.iter().any(|t| t == META.name()) {
        return Err(foreign(format!(
            "a redb database without Aspen's metadata table (tables: {})",
            tables.join(", ")
        )));
    }
    let meta = txn
        .open_table(META)
        .map_err(|e| redb_err("open aspen_meta")(e.into()))?;
    let format = meta
        .get(KEY_FORMAT)
        .map_err(|e| redb_err("read aspen_meta")(e.into()))?;
    if format.as_ref().map(|f| f.value()) != Some(FORMAT_NAME) {
        return Err(foreign(
            "the metadata table does not name the aspen-node format".into(),
        ));
    }
    let version = meta
        .get(KEY_SCHEMA_VERSION)
        .map_err(|e| redb_err("read aspen_meta")(e.into()))?
        .ok_or_else(|| foreign("no schema version record".into()))?;
    let version: [u8; 4] = version
        .value()
        .try_into()
        .map_err(|_| foreign("malformed schema version record".into()))?;
    let version = u32::from_le_bytes(version);
    if version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version != SCHEMA_VERSION {
        return Err(foreign(format!("unknown schema version {version}")));
    }
    for table in [
        LOG.name(),
        RAFT_META.name(),
        SM_DATA.name(),
        SM_META.name(),
        SNAPSHOT_META.name(),
    ] {
        if !tables.iter().any(|t| t == table) {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("table {table} is missing"),
            });
        }
    }

    Ok(())
}

fn init(db: &Database) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        meta.insert(KEY_FORMAT, FORMAT_NAME)?;
        meta.insert(KEY_SCHEMA_VERSION, SCHEMA_VERSION.to_le_bytes().as_slice())?;
        txn.open_table(LOG)?;
        txn.open_table(RAFT_META)?;
        txn.open_table(SM_DATA)?;
        txn.open_table(SM_META)?;
        txn.open_table(SNAPSHOT_META)?;
    }
    txn.commit()?;
    Ok(())
}
