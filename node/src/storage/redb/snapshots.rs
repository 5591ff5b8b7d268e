//! Snapshot files of the redb store: building one from a consistent view,
//! installing one received from a leader, and keeping exactly one current.
//!
//! A snapshot is built by streaming the state machine from one read
//! transaction into `snapshots/build-N.part`, syncing it, renaming it to
//! `snap-<index>-N.bin` and then recording it in `snapshot_meta`. It is
//! installed by streaming the received bytes into one write transaction that
//! replaces the data, the applied state and the snapshot record together,
//! while a verified copy is written to the new snapshot file. A crash at any
//! point leaves either the old or the new snapshot recorded; files no record
//! names are removed at the next open.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use redb::{ReadableTable, Table};

use super::RedbStore;
use super::schema::{KEY_SNAPSHOT_FILE, KEY_SNAPSHOT_META, SM_DATA, SNAPSHOT_META};
use super::state_machine::{SmMeta, record_footprint, write_sm_meta};
use crate::storage::snapshot::{SnapshotReader, SnapshotWriter, snapshot_id};
use crate::storage::{StoreError, codec};
use crate::types::SnapshotMeta;

/// The current snapshot's record: its metadata and file name.
fn read_snapshot_record<T: ReadableTable<&'static str, &'static [u8]>>(
    store: &RedbStore,
    table: &T,
) -> Result<Option<(SnapshotMeta, String)>, StoreError> {
    let get = |key: &'static str| {
        table
            .get(key)
            .map_err(|e| store.error("read snapshot_meta", e))
    };
    let Some(meta) = get(KEY_SNAPSHOT_META)? else {
        return Ok(None);
    };
    let meta = codec::decode_snapshot_meta(meta.value()).map_err(|e| store.codec_error(e))?;
    let file = get(KEY_SNAPSHOT_FILE)?.ok_or_else(|| StoreError::Corrupt {
        path: store.path().to_path_buf(),
        detail: "snapshot metadata without a snapshot file name".into(),
    })?;
    let file = std::str::from_utf8(file.value())
        .map_err(|_| StoreError::Corrupt {
            path: store.path().to_path_buf(),
            detail: "snapshot file name is not UTF-8".into(),
        })?
        .to_owned();
    Ok(Some((meta, file)))
}

/// The file name of the current snapshot, if there is one.
pub(super) fn current_snapshot_file(store: &RedbStore) -> Result<Option<String>, StoreError> {
    let txn = store.begin_read()?;
    let table = txn
        .open_table(SNAPSHOT_META)
        .map_err(|e| store.error("open snapshot_meta", e))?;
    Ok(read_snapshot_record(store, &table)?.map(|(_, file)| file))
}

fn sync_dir(store: &RedbStore, dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| store.io_error(dir, "sync directory", e))
}

/// Where snapshot bytes come from when installing.
pub(super) enum Source {
    File(File),
    Memory(Vec<u8>),
}

impl RedbStore {
    /// Streams the state machine, as of one read transaction, into a new
    /// snapshot file and records it as the current snapshot.
    pub(super) fn build_snapshot_file(&self) -> Result<(SnapshotMeta, File), StoreError> {
        let dir = self.snapshot_dir().to_path_buf();
        let (txn, sm_meta) = {
            // Everything applied goes into the database first; the read
            // transaction then sees exactly the state `sm_meta` describes.
            let mut overlay = self.overlay();
            self.flush_overlay(&mut overlay, false)?;
            (self.begin_read()?, overlay.meta.clone())
        };
        let (last_applied, membership) = (sm_meta.last_applied, sm_meta.membership);
        let seq = self.next_snapshot_seq();
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id: snapshot_id(last_applied, seq),
        };
        let part = dir.join(format!("build-{seq}.part"));
        let io = |op: &'static str| {
            let part = part.clone();
            move |e| self.io_error(&part, op, e)
        };
        let file = File::create(&part).map_err(io("create"))?;
        let mut writer =
            SnapshotWriter::new(BufWriter::new(file), sm_meta.revision).map_err(io("write"))?;
        {
            let table = txn
                .open_table(SM_DATA)
                .map_err(|e| self.error("open sm_data", e))?;
            for item in table.iter().map_err(|e| self.error("scan sm_data", e))? {
                let (key, value) = item.map_err(|e| self.error("scan sm_data", e))?;
                writer
                    .write_record(key.value().as_bytes(), value.value())
                    .map_err(io("write"))?;
            }
        }
        drop(txn);
        let (out, _) = writer.finish().map_err(io("write"))?;
        let file = out
            .into_inner()
            .map_err(|e| self.io_error(&part, "write", e.into_error()))?;
        file.sync_all().map_err(io("sync"))?;
        let name = format!("snap-{}-{seq}.bin", last_applied.map_or(0, |id| id.index));
        self.publish_snapshot_file(&part, &name)?;

        // Record it, unless a newer snapshot was installed while this one was built.
        let txn = self.begin_write(true)?;
        let replaced = {
            let mut table = txn
                .open_table(SNAPSHOT_META)
                .map_err(|e| self.error("open snapshot_meta", e))?;
            let current = read_snapshot_record(self, &table)?;
            if current
                .as_ref()
                .is_some_and(|(current, _)| current.last_log_id > meta.last_log_id)
            {
                None
            } else {
                write_snapshot_record(self, &mut table, &meta, &name)?;
                Some(current.map(|(_, file)| file))
            }
        };
        self.commit(txn, true)?;
        let path = dir.join(&name);
        let file = File::open(&path).map_err(|e| self.io_error(&path, "open", e))?;
        match replaced {
            Some(previous) => self.remove_snapshot_file(previous.as_deref())?,
            // Superseded: the open handle keeps the data readable for the caller.
            None => self.remove_snapshot_file(Some(&name))?,
        }
        self.count_snapshot(false);
        Ok((meta, file))
    }

    /// Moves a finished `.part` file to its final name, durably.
    fn publish_snapshot_file(&self, part: &Path, name: &str) -> Result<(), StoreError> {
        let path = self.snapshot_dir().join(name);
        fs::rename(part, &path).map_err(|e| self.io_error(part, "rename", e))?;
        sync_dir(self, self.snapshot_dir())
    }

    fn remove_snapshot_file(&self, name: Option<&str>) -> Result<(), StoreError> {
        if let Some(name) = name {
            let path = self.snapshot_dir().join(name);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io_error(&path, "remove", e)),
            }
        }
        Ok(())
    }

    /// Replaces the state machine with the snapshot in `source`: the data, the
    /// applied state and the snapshot record change in one durable commit, and
    /// only if the whole stream verifies.
    pub(super) fn install_snapshot_stream(
        &self,
        meta: &SnapshotMeta,
        source: Source,
    ) -> Result<(), StoreError> {
        let stream_path = PathBuf::from("<snapshot stream>");
        let stream_err = |e| self.io_error(&stream_path, "read", e);
        let input: Box<dyn Read> = match source {
            Source::File(mut file) => {
                file.seek(SeekFrom::Start(0)).map_err(stream_err)?;
                Box::new(BufReader::new(file))
            }
            Source::Memory(bytes) => Box::new(Cursor::new(bytes)),
        };
        let mut reader = SnapshotReader::new(input).map_err(stream_err)?;

        let seq = self.next_snapshot_seq();
        let part = self.snapshot_dir().join(format!("install-{seq}.part"));
        // Applies wait while the state is replaced.
        let mut overlay = self.overlay();
        match self.install_into(meta, &mut reader, &part, seq) {
            Ok(installed) => {
                overlay.discard(installed);
                Ok(())
            }
            Err(e) => {
                // The transaction was dropped, so the state is untouched; drop the copy too.
                let _ = fs::remove_file(&part);
                Err(e)
            }
        }
    }

    fn install_into(
        &self,
        meta: &SnapshotMeta,
        reader: &mut SnapshotReader<Box<dyn Read>>,
        part: &Path,
        seq: u64,
    ) -> Result<SmMeta, StoreError> {
        let io = |op: &'static str| move |e| self.io_error(part, op, e);
        let file = File::create(part).map_err(io("create"))?;
        let revision = reader.revision();
        let mut writer =
            SnapshotWriter::new(BufWriter::new(file), revision).map_err(io("write"))?;
        let txn = self.begin_write(true)?;
        let mut data_bytes = 0u64;
        {
            txn.delete_table(SM_DATA)
                .map_err(|e| self.error("clear sm_data", e))?;
            let mut table = txn
                .open_table(SM_DATA)
                .map_err(|e| self.error("open sm_data", e))?;
            let mut previous_key: Option<String> = None;
            while let Some((key, record)) = reader
                .next_record()
                .map_err(|e| self.io_error(Path::new("<snapshot stream>"), "read", e))?
            {
                codec::decode_value(&record).map_err(|e| self.codec_error(e))?;
                if previous_key.as_ref().is_some_and(|p| *p >= key) {
                    return Err(StoreError::Io {
                        path: PathBuf::from("<snapshot stream>"),
                        op: "read",
                        source: std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            "snapshot keys are not in strictly increasing order",
                        ),
                    });
                }
                writer
                    .write_record(key.as_bytes(), &record)
                    .map_err(io("write"))?;
                table
                    .insert(key.as_str(), record.as_slice())
                    .map_err(|e| self.error("write sm_data", e))?;
                data_bytes += record_footprint(&key, &record);
                previous_key = Some(key);
            }
        }
        let installed = SmMeta {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            data_bytes,
            revision,
        };
        write_sm_meta(self, &txn, &installed)?;
        let name = format!(
            "snap-{}-{seq}.bin",
            meta.last_log_id.map_or(0, |id| id.index)
        );
        let previous = {
            let mut table = txn
                .open_table(SNAPSHOT_META)
                .map_err(|e| self.error("open snapshot_meta", e))?;
            let previous = read_snapshot_record(self, &table)?.map(|(_, file)| file);
            write_snapshot_record(self, &mut table, meta, &name)?;
            previous
        };
        let (out, _) = writer.finish().map_err(io("write"))?;
        let file = out
            .into_inner()
            .map_err(|e| self.io_error(part, "write", e.into_error()))?;
        file.sync_all().map_err(io("sync"))?;
        self.publish_snapshot_file(part, &name)?;
        self.commit(txn, true)?;
        self.set_data_bytes(data_bytes);
        self.count_snapshot(true);
        self.remove_snapshot_file(previous.as_deref())?;
        self.remove_received_parts()?;
        Ok(installed)
    }

    /// Removes the files snapshots were received into; their content now
    /// lives in the installed snapshot file.
    fn remove_received_parts(&self) -> Result<(), StoreError> {
        let dir = self.snapshot_dir();
        for entry in fs::read_dir(dir).map_err(|e| self.io_error(dir, "list", e))? {
            let entry = entry.map_err(|e| self.io_error(dir, "list", e))?;
            if entry.file_name().to_string_lossy().starts_with("recv-") {
                let path = entry.path();
                fs::remove_file(&path).map_err(|e| self.io_error(&path, "remove", e))?;
            }
        }
        Ok(())
    }

    pub(super) fn current_snapshot(&self) -> Result<Option<(SnapshotMeta, File)>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn
            .open_table(SNAPSHOT_META)
            .map_err(|e| self.error("open snapshot_meta", e))?;
        let Some((meta, name)) = read_snapshot_record(self, &table)? else {
            return Ok(None);
        };
        let path = self.snapshot_dir().join(name);
        let file = File::open(&path).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            detail: format!("the current snapshot file cannot be opened: {e}"),
        })?;
        Ok(Some((meta, file)))
    }
}

fn write_snapshot_record(
    store: &RedbStore,
    table: &mut Table<'_, &'static str, &'static [u8]>,
    meta: &SnapshotMeta,
    name: &str,
) -> Result<(), StoreError> {
    let err = |e| store.error("write snapshot_meta", e);
    table
        .insert(
            KEY_SNAPSHOT_META,
            codec::encode_snapshot_meta(meta).as_slice(),
        )
        .map_err(err)?;
    table
        .insert(KEY_SNAPSHOT_FILE, name.as_bytes())
        .map_err(err)?;
    Ok(())
}
