//! Webhook delivery bodies, in append-only segment files beside sled.
//!
//! A body is 5–30 KB written once, read once or twice by the processor, and dropped by retention.
//! In sled each one cost a page rewrite on every insert near it (its tree nodes are split and
//! serialised whole, bodies included) and a place in sled's page cache, so a burst of real-size
//! deliveries spent most of its time and memory there. Here a body is one `write` at the end of
//! the current segment (`<data dir>/bodies/<segment>.log`, a new one every 64 MiB and at every
//! open, so nothing is ever appended after a torn tail), and sled keeps only where it is
//! (`Location`, in the delivery's record). Reads are `pread`s the OS page cache serves while the body is recent.
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

struct Writer {
    segment: u64,
    file: Arc<File>,
    end: u64,
    /// Segments written to since the last `sync` (the current one, and any closed since).
    unsynced: Vec<Arc<File>>,
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

    /// Appends `body`; where it went. Not durable until `sync`.
    pub fn append(&self, body: &[u8]) -> std::io::Result<Location> {
        let len = u32::try_from(body.len())
            .map_err(|_| std::io::Error::other("a delivery body over 4 GiB"))?;
        let mut entry = Vec::with_capacity(8 + body.len());
        entry.extend_from_slice(&len.to_le_bytes());
        entry.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        entry.extend_from_slice(body);
        let mut guard = self
            .writer
            .lock()
            .map_err(|_| std::io::Error::other("the body log's lock is poisoned"))?;
        let roll = match guard.as_ref() {
            None => true,
            Some(w) => w.end >= SEGMENT_BYTES,
        };
        if roll {
            let next = match guard.as_ref() {
                Some(w) => w.segment + 1,
                None => segments(&self.dir)?.last().map_or(1, |n| n + 1),
            };
            let file = self.open_segment(next)?;
            let mut unsynced = guard.take().map(|w| w.unsynced).unwrap_or_default();
            unsynced.push(file.clone());
            *guard = Some(Writer {
                segment: next,
                file,
                end: 0,
                unsynced,
            });
        }
        let w = guard
            .as_mut()
            .ok_or_else(|| std::io::Error::other("no body segment open"))?;
        // At the offset this log keeps (not O_APPEND): the location it hands out is where the
        // bytes are, whatever happened to the file's end.
        if let Err(e) = w.file.write_all_at(&entry, w.end) {
            // Part of it may be there: the next body goes to a new segment.
            w.end = SEGMENT_BYTES;
            return Err(e);
        }
        let at = Location {
            segment: w.segment,
            offset: w.end + 8,
            len,
        };
        w.end += entry.len() as u64;
        if !w.unsynced.iter().any(|f| Arc::ptr_eq(f, &w.file)) {
            w.unsynced.push(w.file.clone());
        }
        Ok(at)
    }

    /// Makes every body appended so far durable.
    pub fn sync(&self) -> std::io::Result<()> {
        let files = match self.writer.lock() {
            Ok(mut guard) => match guard.as_mut() {
                Some(w) => std::mem::take(&mut w.unsynced),
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
        let Some(header_at) = at.offset.checked_sub(8) else {
            return Ok(None);
        };
        let mut buf = vec![0u8; 8 + at.len as usize];
        match file.read_exact_at(&mut buf, header_at) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let body = buf.split_off(8);
        if len != at.len || crc32fast::hash(&body) != crc {
            return Ok(None);
        }
        Ok(Some(body))
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
