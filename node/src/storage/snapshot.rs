//! Snapshot data: the handle openraft moves around, and the stream format
//! inside it.
//!
//! A snapshot is a stream of key/value records between a header and a trailer
//! that counts the records and carries a CRC-32 of everything before it:
//!
//! ```text
//! "ASPNSNAP" | format u16 LE | reserved u16 | revision u64 LE
//! { 0x01 | key_len u32 LE | key | record_len u32 LE | value record }*
//! 0xFF | record count u64 LE | crc32 u32 LE
//! ```
//!
//! Records are written and read one at a time, so building, sending and
//! installing a snapshot needs memory for one record, whatever the data size.
//! The redb store streams through files; the in-memory store through a buffer.

use std::io::{self, Cursor, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

use crate::limits::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
use crate::types::LogId;

const MAGIC: &[u8; 8] = b"ASPNSNAP";
const FORMAT: u16 = 1;
const TAG_RECORD: u8 = 0x01;
const TAG_END: u8 = 0xFF;
const HEADER_BYTES: usize = 20;
/// A value record is the revision (8 bytes) and the value.
const MAX_RECORD_BYTES: usize = 8 + MAX_VALUE_BYTES;

/// The snapshot handle in Aspen's Raft type config: a file, or a buffer for
/// the in-memory store and for tests.
#[derive(Debug)]
pub enum SnapshotData {
    File(tokio::fs::File),
    Memory(Cursor<Vec<u8>>),
}

impl Default for SnapshotData {
    fn default() -> Self {
        SnapshotData::Memory(Cursor::new(Vec::new()))
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SnapshotData::File(file) => Pin::new(file).poll_read(cx, buf),
            SnapshotData::Memory(cursor) => Pin::new(cursor).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SnapshotData::File(file) => Pin::new(file).poll_write(cx, buf),
            SnapshotData::Memory(cursor) => Pin::new(cursor).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SnapshotData::File(file) => Pin::new(file).poll_flush(cx),
            SnapshotData::Memory(cursor) => Pin::new(cursor).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SnapshotData::File(file) => Pin::new(file).poll_shutdown(cx),
            SnapshotData::Memory(cursor) => Pin::new(cursor).poll_shutdown(cx),
        }
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        match self.get_mut() {
            SnapshotData::File(file) => Pin::new(file).start_seek(position),
            SnapshotData::Memory(cursor) => Pin::new(cursor).start_seek(position),
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        match self.get_mut() {
            SnapshotData::File(file) => Pin::new(file).poll_complete(cx),
            SnapshotData::Memory(cursor) => Pin::new(cursor).poll_complete(cx),
        }
    }
}

/// Snapshot ids name the last included entry and a per-store sequence number,
/// so two snapshots of the same index are still distinguishable.
pub fn snapshot_id(last: Option<LogId>, seq: u64) -> String {
    match last {
        Some(id) => format!(
            "{}-{}-{}-{seq}",
            id.leader_id.term, id.leader_id.node_id, id.index
        ),
        None => format!("none-{seq}"),
    }
}

/// Writes the snapshot stream format, counting records and checksumming as it goes.
#[derive(Debug)]
pub struct SnapshotWriter<W: Write> {
    out: W,
    crc: crc32fast::Hasher,
    records: u64,
}

impl<W: Write> SnapshotWriter<W> {
    /// Starts a snapshot of a state machine at `revision` (its command counter).
    pub fn new(mut out: W, revision: u64) -> io::Result<Self> {
        let mut header = Vec::with_capacity(HEADER_BYTES);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&FORMAT.to_le_bytes());
        header.extend_from_slice(&0u16.to_le_bytes());
        header.extend_from_slice(&revision.to_le_bytes());
        out.write_all(&header)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header);
        Ok(SnapshotWriter {
            out,
            crc,
            records: 0,
        })
    }

    /// Appends one key and its stored value record.
    pub fn write_record(&mut self, key: &[u8], record: &[u8]) -> io::Result<()> {
        self.put(&[TAG_RECORD])?;
        self.put(&len_u32(key.len())?.to_le_bytes())?;
        self.put(key)?;
        self.put(&len_u32(record.len())?.to_le_bytes())?;
        self.put(record)?;
        self.records += 1;
        Ok(())
    }

    /// Writes the trailer and returns the inner writer and the record count.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.put(&[TAG_END])?;
        self.put(&self.records.to_le_bytes())?;
        let crc = self.crc.finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.flush()?;
        Ok((self.out, self.records))
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.out.write_all(bytes)
    }
}

fn len_u32(len: usize) -> io::Result<u32> {
    u32::try_from(len).map_err(|_| invalid(format!("record part of {len} bytes is too large")))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Reads the snapshot stream format one record at a time, verifying lengths
/// against the limits and the trailer's count and checksum at the end.
#[derive(Debug)]
pub struct SnapshotReader<R: Read> {
    input: R,
    crc: crc32fast::Hasher,
    records: u64,
    revision: u64,
    done: bool,
}

impl<R: Read> SnapshotReader<R> {
    pub fn new(mut input: R) -> io::Result<Self> {
        let mut header = [0u8; HEADER_BYTES];
        input
            .read_exact(&mut header)
            .map_err(|e| invalid(format!("snapshot header: {e}")))?;
        if &header[..8] != MAGIC {
            return Err(invalid("not an Aspen snapshot (bad magic)".into()));
        }
        let format = u16::from_le_bytes([header[8], header[9]]);
        if format != FORMAT {
            return Err(invalid(format!(
                "snapshot format {format} is not supported (this build reads format {FORMAT})"
            )));
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header);
        let revision = u64::from_le_bytes(header[12..20].try_into().expect("8 header bytes"));
        Ok(SnapshotReader {
            input,
            crc,
            records: 0,
            revision,
            done: false,
        })
    }

    /// The state machine's command counter when the snapshot was taken.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The next `(key, value record)`, or `None` after a verified trailer.
    pub fn next_record(&mut self) -> io::Result<Option<(String, Vec<u8>)>> {
        if self.done {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        self.take(&mut tag)?;
        match tag[0] {
            TAG_RECORD => {
                let key = self.take_sized(MAX_KEY_BYTES, "key")?;
                let key = String::from_utf8(key)
                    .map_err(|_| invalid("snapshot key is not UTF-8".into()))?;
                let record = self.take_sized(MAX_RECORD_BYTES, "value")?;
                self.records += 1;
                Ok(Some((key, record)))
            }
            TAG_END => {
                let mut count = [0u8; 8];
                self.take(&mut count)?;
                let expected_crc = self.crc.clone().finalize();
                let mut crc = [0u8; 4];
                self.input.read_exact(&mut crc)?;
                let count = u64::from_le_bytes(count);
                if count != self.records {
                    return Err(invalid(format!(
                        "snapshot trailer counts {count} records, stream held {}",
                        self.records
                    )));
                }
                if u32::from_le_bytes(crc) != expected_crc {
                    return Err(invalid("snapshot checksum mismatch".into()));
                }
                self.done = true;
                Ok(None)
            }
            other => Err(invalid(format!("unknown snapshot record tag {other:#x}"))),
        }
    }

    fn take(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.input.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                invalid("snapshot is truncated".into())
            } else {
                e
            }
        })?;
        self.crc.update(buf);
        Ok(())
    }

    fn take_sized(&mut self, max: usize, what: &str) -> io::Result<Vec<u8>> {
        let mut len = [0u8; 4];
        self.take(&mut len)?;
        let len = u32::from_le_bytes(len) as usize;
        if len > max {
            return Err(invalid(format!(
                "snapshot {what} of {len} bytes exceeds the limit of {max}"
            )));
        }
        let mut buf = vec![0u8; len];
        self.take(&mut buf)?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut writer = SnapshotWriter::new(Vec::new(), 42).unwrap();
        writer.write_record(b"a", b"12345678x").unwrap();
        writer.write_record(b"b", b"12345678yy").unwrap();
        let (bytes, count) = writer.finish().unwrap();
        assert_eq!(count, 2);
        bytes
    }

    fn read_all(bytes: &[u8]) -> io::Result<Vec<(String, Vec<u8>)>> {
        let mut reader = SnapshotReader::new(bytes)?;
        let mut out = Vec::new();
        while let Some(record) = reader.next_record()? {
            out.push(record);
        }
        Ok(out)
    }

    #[test]
    fn records_round_trip_in_order() {
        let records = read_all(&sample()).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(
            SnapshotReader::new(sample().as_slice()).unwrap().revision(),
            42
        );
        assert_eq!(records[0].0, "a");
        assert_eq!(records[1].1, b"12345678yy");
    }

    #[test]
    fn empty_snapshot_is_valid() {
        let (bytes, count) = SnapshotWriter::new(Vec::new(), 0)
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(count, 0);
        assert!(read_all(&bytes).unwrap().is_empty());
    }

    #[test]
    fn any_flipped_byte_or_truncation_is_detected() {
        let bytes = sample();
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x40;
            assert!(
                read_all(&damaged).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
        for len in 0..bytes.len() {
            assert!(
                read_all(&bytes[..len]).is_err(),
                "truncation to {len} went unnoticed"
            );
        }
    }

    #[test]
    fn oversized_lengths_are_refused_before_allocation() {
        let mut bytes = sample();
        // The first key length sits right after the header and the record tag.
        bytes[HEADER_BYTES + 1..HEADER_BYTES + 5].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = read_all(&bytes).unwrap_err();
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
    }
}
