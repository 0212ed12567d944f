//! The data dir's free space, and the reserve Gantry keeps below sled.
//!
//! sled 0.34 does not fail cleanly when its disk fills (spacejam/sled#376): a writer spins in
//! its log reservation and a flush waits for ever. So sled must never see a full disk. The store
//! reads the free space of the data dir's file system (`statvfs`) at most once a second, sooner
//! when what was written since the last reading could have eaten half the margin, and refuses
//! new work below the reserve (`[storage] min_free`). Writes that carry on already accepted work
//! (run and step records, reports) are not refused: the reserve is what they use.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use crate::spec::values::MinFree;

/// Why new work is refused: the data dir's file system is below its reserve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} free for the data dir {}, below its [storage] min_free of {}: Gantry takes no new work \
     until space is freed, and takes it again by itself then",
    show_bytes(*free),
    dir.display(),
    show_bytes(*reserve)
)]
pub struct LowSpace {
    pub dir: PathBuf,
    pub free: u64,
    pub reserve: u64,
}

/// A size for people: `812.0 KiB`, `38.5 MiB`, `1.0 GiB`.
pub fn show_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// One look at the file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// Bytes an unprivileged writer may still use (`f_bavail`), less what was written since.
    pub free: u64,
    pub total: u64,
    /// The reserve on this file system.
    pub reserve: u64,
}

impl Reading {
    pub fn low(&self) -> bool {
        self.free < self.reserve
    }
}

/// How long a reading is trusted.
const FRESH: Duration = Duration::from_secs(1);

/// The guard: the last reading and what was written since.
pub struct Space {
    dir: PathBuf,
    min_free: Mutex<MinFree>,
    started: Instant,
    /// When the last reading was taken, in ms since `started`; `u64::MAX` before the first.
    read_at: AtomicU64,
    free: AtomicU64,
    total: AtomicU64,
    /// Bytes noted as written since the last reading.
    written: AtomicU64,
    /// The last check found the file system below its reserve (logged once per change).
    low: AtomicBool,
    refreshing: Mutex<()>,
}

impl Space {
    pub fn new(dir: &Path) -> Space {
        Space {
            dir: dir.to_path_buf(),
            min_free: Mutex::new(MinFree::Default),
            started: Instant::now(),
            read_at: AtomicU64::new(u64::MAX),
            free: AtomicU64::new(u64::MAX),
            total: AtomicU64::new(0),
            written: AtomicU64::new(0),
            low: AtomicBool::new(false),
            refreshing: Mutex::new(()),
        }
    }

    pub fn set_min_free(&self, min_free: MinFree) {
        if let Ok(mut m) = self.min_free.lock() {
            *m = min_free;
        }
        self.refresh();
    }

    fn min_free(&self) -> MinFree {
        self.min_free.lock().map(|m| *m).unwrap_or_default()
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Takes a reading now. A file system that cannot be read (gone, no permission) leaves the
    /// last reading in place: the store's own I/O then says what is wrong.
    pub fn refresh(&self) {
        let Ok(_turn) = self.refreshing.try_lock() else {
            return; // another thread is reading it right now
        };
        if let Ok((free, total)) = crate::executor::local::disk_space(&self.dir) {
            self.free.store(free, Ordering::Relaxed);
            self.total.store(total, Ordering::Relaxed);
            self.written.store(0, Ordering::Relaxed);
        }
        self.read_at.store(self.now_ms(), Ordering::Release);
    }

    /// The current figures: fresh enough for a decision.
    pub fn reading(&self) -> Reading {
        let at = self.read_at.load(Ordering::Acquire);
        let now = self.now_ms();
        let stale = at == u64::MAX || now.saturating_sub(at) >= FRESH.as_millis() as u64;
        let min_free = self.min_free();
        let total = self.total.load(Ordering::Relaxed);
        let reserve = min_free.bytes(total);
        let free = self.free.load(Ordering::Relaxed);
        let written = self.written.load(Ordering::Relaxed);
        // What was written since the reading may have eaten half the margin: look again.
        let margin = free.saturating_sub(reserve);
        if stale || written.saturating_mul(2) >= margin {
            self.refresh();
        }
        let total = self.total.load(Ordering::Relaxed);
        Reading {
            free: self
                .free
                .load(Ordering::Relaxed)
                .saturating_sub(self.written.load(Ordering::Relaxed)),
            total,
            reserve: min_free.bytes(total),
        }
    }

    /// Whether new work may be taken; the answer names the data dir and the figures when not.
    pub fn check(&self) -> Result<(), LowSpace> {
        let r = self.reading();
        let low = r.low();
        if self.low.swap(low, Ordering::Relaxed) != low {
            if low {
                tracing::warn!(
                    "{}",
                    LowSpace {
                        dir: self.dir.clone(),
                        free: r.free,
                        reserve: r.reserve
                    }
                );
            } else {
                tracing::info!(
                    "the data dir {} has {} free again (reserve {}): taking new work",
                    self.dir.display(),
                    show_bytes(r.free),
                    show_bytes(r.reserve)
                );
            }
        }
        if low {
            Err(LowSpace {
                dir: self.dir.clone(),
                free: r.free,
                reserve: r.reserve,
            })
        } else {
            Ok(())
        }
    }

    /// Counts `bytes` about to be written against the free space of the last reading.
    pub fn note_write(&self, bytes: usize) {
        self.written.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_free_takes_sizes_and_percentages() {
        assert_eq!(MinFree::parse("1GiB"), Some(MinFree::Bytes(1 << 30)));
        assert_eq!(MinFree::parse("512 MiB"), Some(MinFree::Bytes(512 << 20)));
        assert_eq!(MinFree::parse("0"), Some(MinFree::Bytes(0)));
        assert_eq!(MinFree::parse("5%"), Some(MinFree::Percent(5)));
        assert_eq!(MinFree::parse("0%"), None);
        assert_eq!(MinFree::parse("95%"), None);
        assert_eq!(MinFree::parse("lots"), None);
        // The default: 5% of a small disk, 1 GiB of a big one.
        assert_eq!(MinFree::Default.bytes(40 << 20), 2 << 20);
        assert_eq!(MinFree::Default.bytes(1 << 40), 1 << 30);
        assert_eq!(MinFree::Percent(10).bytes(1000), 100);
    }

    #[test]
    fn a_reserve_larger_than_the_disk_refuses_with_the_figures() {
        let dir = std::env::temp_dir();
        let space = Space::new(&dir);
        assert!(space.check().is_ok() || space.reading().low());
        space.set_min_free(MinFree::Bytes(u64::MAX));
        let refused = space.check().unwrap_err();
        assert_eq!(refused.reserve, u64::MAX);
        let text = refused.to_string();
        assert!(text.contains(&dir.display().to_string()), "{text}");
        assert!(text.contains("[storage] min_free"), "{text}");
        // Space "returns" (the reserve is lowered): taken again at once.
        space.set_min_free(MinFree::Bytes(0));
        assert!(space.check().is_ok());
    }

    #[test]
    fn a_write_that_may_eat_the_margin_makes_a_new_reading() {
        let space = Space::new(&std::env::temp_dir());
        space.set_min_free(MinFree::Bytes(0));
        // Counted against the last reading, the write would leave nothing free; a fresh look
        // at the file system replaces the estimate instead.
        space.note_write(usize::MAX / 2);
        assert!(space.reading().free > 0);
        assert!(space.check().is_ok());
        assert_eq!(show_bytes(1536), "1.5 KiB");
        assert_eq!(show_bytes(40 << 20), "40.0 MiB");
        assert_eq!(show_bytes(12), "12 B");
    }
}
