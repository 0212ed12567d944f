//! Webhook delivery bodies, in append-only segment files beside sled.
//!
//! A body is 5–30 KB written once, read once or twice by the processor, and dropped by retention.
//! In sled each one cost a page rewrite on every insert near it (its tree nodes are split and
//! serialised whole, bodies included) and a place in sled's page cache, so a burst of real-size
//! deliveries spent most of its time and memory there. Here a body is appended at the end of
//! the current segment (`<data dir>/bodies/<segment>.log`, a new one every 64 MiB and at every
//! open, so nothing is ever appended after a torn tail), gathered in memory and written with the
//! others of its group commit, and sled keeps only where it is (`Location`, in the delivery's
//! record). Reads are `pread`s the OS page cache serves while the body is recent (or copies from
//! memory while it is not written yet).
//!
//! Each entry is `[length: u32 LE][crc32 of the body: u32 LE][body]`. `sync` (fdatasync of every
//! segment written since the last one) runs with sled's flush in `Store::durable`, before a
//! delivery is acknowledged. sled may make a record durable on its own before that (its
//! background flush), so after a crash a record can point at a body that never reached the disk:
//! `read` then answers `None` (short file, bad checksum), and the delivery, never acknowledged, is
//! treated as failed so that the forge's redelivery is taken again. Retention deletes a segment
//! once no record points into it.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A segment is closed and a new one started past this size.
const SEGMENT_BYTES: u64 = 64 << 20;

/// Where a body is: its segment, the offset of its first byte, its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Location {
    #[serde(rename = "s")]
    pub segment: u64,
    #[serde(rename = "o")]
    pub offset: u64,
    #[serde(rename = "n")]
    pub len: u32,
}

/// Entries gather in memory up to this size before they are written (and always before a
/// `sync`): one `pwrite` for a group commit's bodies rather than one each, which was most of the
/// body log's cost in a burst (each write also updates the file's times in the journal).
const WRITE_BATCH: usize = 256 << 10;

struct Writer {
    segment: u64,
    file: Arc<File>,
    /// Where `pending` goes in the file: what was written before it ends here.
    written: u64,
    /// Entries appended and not written yet.
    pending: Vec<u8>,
    /// Segments written to since the last `sync` (the current one, and any closed since).
    unsynced: Vec<Arc<File>>,
    /// A write that failed since the last `sync`: bodies whose locations were handed out are
    /// not in the file, so the next `sync` fails (once) rather than make them look durable.
    lost: Option<std::io::ErrorKind>,
}

impl Drop for Writer {
    /// What is gathered still reaches the file when the log closes (a store dropped without a
    /// last `sync`).
    fn drop(&mut self) {
        let _ = self.write_pending();
    }
}

impl Writer {
    fn end(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    /// Writes `pending` at its place in the segment. On failure the segment is closed (the
    /// next append starts a new one) and the loss is kept for `sync`.
    fn write_pending(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // At the offset this log keeps (not O_APPEND): the locations it handed out are where
        // the bytes are, whatever happened to the file's end.
        let result = self.file.write_all_at(&self.pending, self.written);
        if !self.unsynced.iter().any(|f| Arc::ptr_eq(f, &self.file)) {
            self.unsynced.push(self.file.clone());
        }
        match result {
            Ok(()) => {
                self.written += self.pending.len() as u64;
                self.pending.clear();
                Ok(())
            }
            Err(e) => {
                // Part of it may be there: the next body goes to a new segment.
                self.lost = Some(e.kind());
                self.written = SEGMENT_BYTES;
                self.pending.clear();
                Err(e)
            }
        }
    }
}

pub struct BodyLog {
    dir: PathBuf,
    /// Opened lazily, on the first append: a store that never takes a delivery makes no file.
    writer: Mutex<Option<Writer>>,
    readers: Mutex<HashMap<u64, Arc<File>>>,
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:016x}.log"))
}

/// The segments in `dir`, by number.
fn segments(dir: &Path) -> std::io::Result<BTreeSet<u64>> {
    let mut out = BTreeSet::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_suffix(".log")
            .and_then(|n| u64::from_str_radix(n, 16).ok())
        {
            out.insert(n);
        }
    }
    Ok(out)
}

/// The body of `entry` (header and body) when it is `len` bytes long and its checksum holds.
fn checked(entry: &[u8], len: u32) -> Option<Vec<u8>> {
    let (header, body) = entry.split_at_checked(8)?;
    let stored_len = u32::from_le_bytes(header[..4].try_into().ok()?);
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    (stored_len == len && body.len() == len as usize && crc32fast::hash(body) == crc)
        .then(|| body.to_vec())
}

impl BodyLog {
    pub fn new(dir: PathBuf) -> BodyLog {
        BodyLog {
            dir,
            writer: Mutex::new(None),
            readers: Mutex::new(HashMap::new()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn open_segment(&self, segment: u64) -> std::io::Result<Arc<File>> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .create(&self.dir)?;
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .read(true)
            .mode(0o600)
            .open(segment_path(&self.dir, segment))?;
        // The new name must survive a crash too.
        File::open(&self.dir)?.sync_all()?;
        let file = Arc::new(file);
        if let Ok(mut readers) = self.readers.lock() {
            readers.insert(segment, file.clone());
        }
        Ok(file)
    }

    /// Appends `body`; where it went. Not durable until `sync` (and not even in the file before
    /// it, or before `WRITE_BATCH` bytes have gathered).
    pub fn append(&self, body: &[u8]) -> std::io::Result<Location> {
        let len = u32::try_from(body.len())
            .map_err(|_| std::io::Error::other("a delivery body over 4 GiB"))?;
        let crc = crc32fast::hash(body);
        let mut guard = self
            .writer
            .lock()
            .map_err(|_| std::io::Error::other("the body log's lock is poisoned"))?;
        let roll = match guard.as_ref() {
            None => true,
            Some(w) => w.end() >= SEGMENT_BYTES,
        };
        if roll {
            let next = match guard.as_ref() {
                Some(w) => w.segment + 1,
                None => segments(&self.dir)?.last().map_or(1, |n| n + 1),
            };
            // Opened first: if that fails, the current writer stays as it is (what it gathered,
            // what it must still sync).
            let file = self.open_segment(next)?;
            let (mut unsynced, mut lost) = (Vec::new(), None);
            if let Some(mut old) = guard.take() {
                // A failure is kept in `lost` for `sync`, the rest goes on in the new segment.
                let _ = old.write_pending();
                unsynced = std::mem::take(&mut old.unsynced);
                lost = old.lost.take();
            }
            *guard = Some(Writer {
                segment: next,
                file,
                written: 0,
                pending: Vec::new(),
                unsynced,
                lost,
            });
        }
        let w = guard
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no body segment open"))?;
        let at = Location {
            segment: w.segment,
            offset: w.end() + 8,
            len,
        };
        w.pending.extend_from_slice(&len.to_le_bytes());
        w.pending.extend_from_slice(&crc.to_le_bytes());
        w.pending.extend_from_slice(body);
        if w.pending.len() >= WRITE_BATCH {
            w.write_pending()?;
        }
        Ok(at)
    }

    /// Makes every body appended so far durable.
    pub fn sync(&self) -> std::io::Result<()> {
        let files = match self.writer.lock() {
            Ok(mut guard) => match guard.as_mut() {
                Some(w) => {
                    w.write_pending()?;
                    if let Some(kind) = w.lost.take() {
                        w.unsynced.clear();
                        return Err(std::io::Error::new(
                            kind,
                            "bodies appended since the last sync could not be written",
                        ));
                    }
                    std::mem::take(&mut w.unsynced)
                }
                None => return Ok(()),
            },
            Err(_) => return Err(std::io::Error::other("the body log's lock is poisoned")),
        };
        for file in files {
            file.sync_data()?;
        }
        Ok(())
    }

    /// The body at `at`; `None` when it is not there whole (lost in a crash before it was
    /// durable, or its segment removed).
    pub fn read(&self, at: Location) -> std::io::Result<Option<Vec<u8>>> {
        let Some(header_at) = at.offset.checked_sub(8) else {
            return Ok(None);
        };
        // Not written yet: still in memory.
        if let Ok(guard) = self.writer.lock()
            && let Some(w) = guard.as_ref()
            && w.segment == at.segment
            && header_at >= w.written
        {
            let from = usize::try_from(header_at - w.written).unwrap_or(usize::MAX);
            let entry = from
                .checked_add(8 + at.len as usize)
                .and_then(|to| w.pending.get(from..to));
            return Ok(entry.and_then(|entry| checked(entry, at.len)));
        }
        let file = {
            let cached = self
                .readers
                .lock()
                .ok()
                .and_then(|r| r.get(&at.segment).cloned());
            match cached {
                Some(f) => f,
                None => match File::open(segment_path(&self.dir, at.segment)) {
                    Ok(f) => {
                        let f = Arc::new(f);
                        if let Ok(mut readers) = self.readers.lock() {
                            readers.insert(at.segment, f.clone());
                        }
                        f
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e),
                },
            }
        };
        let mut buf = vec![0u8; 8 + at.len as usize];
        match file.read_exact_at(&mut buf, header_at) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        Ok(checked(&buf, at.len))
    }

    /// Deletes every segment but the current one that no body in `referenced` lives in; returns
    /// how many went.
    pub fn remove_unreferenced(&self, referenced: &BTreeSet<u64>) -> std::io::Result<usize> {
        let current = self
            .writer
            .lock()
            .ok()
            .and_then(|w| w.as_ref().map(|w| w.segment));
        let mut removed = 0;
        for segment in segments(&self.dir)? {
            if Some(segment) == current || referenced.contains(&segment) {
                continue;
            }
            if let Ok(mut readers) = self.readers.lock() {
                readers.remove(&segment);
            }
            match std::fs::remove_file(segment_path(&self.dir, segment)) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_read_back_whole_and_a_torn_one_reads_as_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = BodyLog::new(dir.path().join("bodies"));
        let a = log.append(b"first body").expect("append");
        let b = log.append(&vec![b'x'; 100_000]).expect("append");
        log.sync().expect("sync");
        assert_eq!(
            log.read(a).expect("read").as_deref(),
            Some(&b"first body"[..])
        );
        assert_eq!(log.read(b).expect("read").map(|v| v.len()), Some(100_000));
        // A body cut short (a crash before its sync), or one whose bytes changed.
        let path = segment_path(log.dir(), a.segment);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        file.set_len(b.offset + 10).expect("truncate");
        assert_eq!(log.read(b).expect("read"), None);
        file.write_all_at(b"F", a.offset).expect("flip a byte");
        assert_eq!(log.read(a).expect("read"), None);
    }

    #[test]
    fn bodies_gather_in_memory_until_a_sync_or_a_full_batch_and_read_back_meanwhile() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = BodyLog::new(dir.path().join("bodies"));
        let a = log.append(b"small one").expect("append");
        let path = segment_path(log.dir(), a.segment);
        let on_disk = || std::fs::metadata(&path).expect("segment").len();
        assert_eq!(on_disk(), 0, "not written before the sync");
        assert_eq!(
            log.read(a).expect("read").as_deref(),
            Some(&b"small one"[..])
        );
        log.sync().expect("sync");
        assert_eq!(on_disk(), a.offset + 9);
        // A batch's worth is written without waiting for a sync.
        let big = vec![b'y'; WRITE_BATCH];
        let b = log.append(&big).expect("append");
        assert_eq!(on_disk(), b.offset + WRITE_BATCH as u64);
        let c = log.append(b"after").expect("append");
        assert_eq!(
            log.read(b).expect("read").map(|v| v.len()),
            Some(WRITE_BATCH)
        );
        assert_eq!(log.read(c).expect("read").as_deref(), Some(&b"after"[..]));
        // A location past what was appended reads as missing, from memory as from the file.
        let beyond = Location {
            offset: c.offset + 100,
            ..c
        };
        assert_eq!(log.read(beyond).expect("read"), None);
    }

    #[test]
    fn a_reopened_log_writes_a_new_segment_and_unreferenced_ones_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = BodyLog::new(dir.path().join("bodies"));
        let a = first.append(b"one").expect("append");
        drop(first);
        let log = BodyLog::new(dir.path().join("bodies"));
        let b = log.append(b"two").expect("append");
        assert_eq!(b.segment, a.segment + 1);
        assert_eq!(log.read(a).expect("read").as_deref(), Some(&b"one"[..]));
        // The old segment is kept while referenced, the current one always.
        let kept: BTreeSet<u64> = [a.segment].into();
        assert_eq!(log.remove_unreferenced(&kept).expect("remove"), 0);
        assert_eq!(
            log.remove_unreferenced(&BTreeSet::new()).expect("remove"),
            1
        );
        assert_eq!(log.read(a).expect("read"), None);
        assert_eq!(log.read(b).expect("read").as_deref(), Some(&b"two"[..]));
    }
}
