//! openraft's storage test suite, run against both stores.

use aspen_node::storage::memory::{self, MemLogStore, MemStateMachine};
use aspen_node::storage::{RedbLogStore, RedbStateMachine, RedbStore};
use aspen_node::types::{StorageError, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

struct MemBuilder;

impl StoreBuilder<TypeConfig, MemLogStore, MemStateMachine, ()> for MemBuilder {
    async fn build(&self) -> Result<((), MemLogStore, MemStateMachine), StorageError> {
        let (log, sm) = memory::new_store();
        Ok(((), log, sm))
    }
}

struct RedbBuilder;

impl StoreBuilder<TypeConfig, RedbLogStore, RedbStateMachine, TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(TempDir, RedbLogStore, RedbStateMachine), StorageError> {
        let dir = TempDir::new().expect("create temp dir");
        let store = RedbStore::open(dir.path(), 64 * 1024 * 1024).expect("open redb store");
        let (log, sm) = store.raft_storage();
        Ok((dir, log, sm))
    }
}

#[test]
fn memory_store_passes_openraft_suite() {
    Suite::test_all(MemBuilder).expect("in-memory store passes the suite");
}

#[test]
fn redb_store_passes_openraft_suite() {
    Suite::test_all(RedbBuilder).expect("redb store passes the suite");
}
