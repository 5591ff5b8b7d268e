//! The file backend that enforces the database size limit.
//!
//! redb has no size limit of its own, and grows its file as it needs pages. This
//! backend wraps redb's file backend and refuses to extend the file past
//! `max_bytes`: the write transaction that needed the space fails with an I/O
//! error of kind `StorageFull` before it commits, and nothing else changes, so
//! reads and writes that fit in the file's free pages keep working. It also
//! keeps the file length in an atomic, so reading the usage costs nothing.

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
        let current = self.len.load(Ordering::Relaxed);
        if len > current && len > self.max_bytes {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "database file may not grow from {current} to {len} bytes: the limit is {} bytes",
                    self.max_bytes
                ),
            ));
        }
        self.inner.set_len(len)?;
        self.len.store(len, Ordering::Relaxed);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
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
