//! The file backend that enforces the database size limit.
//!
//! redb has no size limit of its own. It grows its file in large steps
//! (doubling up to 4 GiB, then 4 GiB at a time) but fills it from the lowest
//! free page up, so the extension stays sparse until pages are written there.
//! Capping the file *length* would therefore waste up to half of the limit;
//! this backend instead refuses any *write* that would end past `max_bytes`,
//! which bounds the space the file can occupy on disk exactly. The refused
//! write fails the transaction that needed the space before it commits; redb
//! then refuses further writes until the database is reopened (its rule after
//! any I/O error), and reopening recovers the last commit.

use std::fs::File;
use std::io;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

#[derive(Debug)]
pub(super) struct CappedFileBackend {
    inner: FileBackend,
    max_bytes: u64,
    len: Arc<AtomicU64>,
}

impl CappedFileBackend {
    pub(super) fn new(file: File, max_bytes: u64, len: Arc<AtomicU64>) -> io::Result<Self> {
        len.store(file.metadata()?.len(), Ordering::Relaxed);
        #[allow(deprecated)]
        let inner = FileBackend::new(file).map_err(io::Error::other)?;
        Ok(CappedFileBackend {
            inner,
            max_bytes,
            len,
        })
    }
}

/// Whether an I/O error is the one this backend raises when the file is full.
pub(super) fn is_storage_full(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::StorageFull
}

impl StorageBackend for CappedFileBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.inner.set_len(len)?;
        self.len.store(len, Ordering::Relaxed);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let end = offset.saturating_add(data.len() as u64);
        if end > self.max_bytes {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "database write ending at byte {end} refused: the limit is {} bytes",
                    self.max_bytes
                ),
            ));
        }
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}
