//! Counting what the kernel reads by passthrough (see `files::Passthrough`): those reads never
//! reach the daemon. Every so often, and before each status report, the pages of each
//! passed-through pack that are in the page cache are counted (`cachestat(2)`, which walks the
//! cache's folios: 0.1 ms for a cached GiB, where mincore takes 15 ms); what became resident
//! since the last look is counted as read from that file. That is the daemon's own measure for
//! every other file too: reads the page cache answers never reach it either.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::metrics::{FileBytes, Metrics};

/// Looks closer together than this are skipped (a look costs a mincore of the whole pack).
const MIN_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Default)]
pub(crate) struct PassthroughMeter {
    packs: Mutex<HashMap<u64, Metered>>,
    last_look: Mutex<Option<Instant>>,
}

struct Metered {
    pack: File,
    resident: u64,
    counter: Arc<FileBytes>,
}

impl PassthroughMeter {
    /// Starts counting inode `ino`'s reads from `pack` (its first passthrough handle opened).
    pub(crate) fn opened(&self, ino: u64, pack: &File, counter: Arc<FileBytes>) {
        let mut packs = self.packs.lock();
        if packs.contains_key(&ino) {
            return;
        }
        let pack = match pack.try_clone() {
            Ok(pack) => pack,
            Err(e) => {
                tracing::debug!(ino, error = %e, "passthrough reads of this file go uncounted");
                return;
            }
        };
        let resident = resident_bytes(&pack);
        packs.insert(
            ino,
            Metered {
                pack,
                resident,
                counter,
            },
        );
    }

    /// Counts what `ino` read since the last look and stops (its last passthrough handle closed).
    pub(crate) fn closed(&self, ino: u64, metrics: &Metrics) {
        if let Some(mut metered) = self.packs.lock().remove(&ino) {
            metered.look(metrics);
        }
    }

    /// Counts what every passed-through file read since the last look, unless one was just
    /// taken (`now`: in any case).
    pub(crate) fn look(&self, metrics: &Metrics, now: bool) {
        {
            let mut last = self.last_look.lock();
            if !now && last.is_some_and(|t| t.elapsed() < MIN_INTERVAL) {
                return;
            }
            *last = Some(Instant::now());
        }
        for metered in self.packs.lock().values_mut() {
            metered.look(metrics);
        }
    }
}

impl Metered {
    fn look(&mut self, metrics: &Metrics) {
        let now = resident_bytes(&self.pack);
        if now > self.resident {
            metrics.add_read(Some(&self.counter), now - self.resident);
        }
        // Pages the kernel dropped count again when they are read again.
        self.resident = now;
    }
}

/// Bytes of `file` in the page cache (0 where the kernel cannot tell: before Linux 6.5).
fn resident_bytes(file: &File) -> u64 {
    #[cfg(target_os = "linux")]
    {
        #[repr(C)]
        struct Range {
            off: u64,
            len: u64,
        }
        #[repr(C)]
        #[derive(Default)]
        struct CacheStat {
            nr_cache: u64,
            nr_dirty: u64,
            nr_writeback: u64,
            nr_evicted: u64,
            nr_recently_evicted: u64,
        }
        // The same number on every Linux architecture (it came after the tables were unified).
        const SYS_CACHESTAT: libc::c_long = 451;
        // len 0: to the end of the file.
        let range = Range { off: 0, len: 0 };
        let mut stat = CacheStat::default();
        // SAFETY: cachestat(2) reads `range` and writes `stat`, both live and laid out as the
        // kernel's structs; the descriptor is ours.
        let rc = unsafe {
            libc::syscall(
                SYS_CACHESTAT,
                std::os::fd::AsRawFd::as_raw_fd(file),
                &range as *const Range,
                &mut stat as *mut CacheStat,
                0u32,
            )
        };
        if rc != 0 {
            return 0;
        }
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
        stat.nr_cache * page
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn pages_that_become_resident_count_as_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pack");
        let data = vec![7u8; 1 << 20];
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&data)
            .unwrap();
        let file = File::open(&path).unwrap();
        let meter = PassthroughMeter::default();
        let metrics = Metrics::default();
        let counter = metrics.file(5);
        // Just written: resident already, so nothing is counted at open.
        meter.opened(5, &file, counter.clone());
        meter.look(&metrics, true);
        assert_eq!(counter.read.load(std::sync::atomic::Ordering::Relaxed), 0);
        // Pages dropped, then read again (as the kernel would for a passthrough read).
        let written = meter.packs.lock()[&5].resident;
        assert!(written > 0);
        file.sync_all().unwrap();
        // SAFETY: advice on a descriptor we own.
        unsafe {
            libc::posix_fadvise(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
                0,
                libc::POSIX_FADV_DONTNEED,
            )
        };
        meter.packs.lock().get_mut(&5).unwrap().look(&metrics);
        std::fs::read(&path).unwrap();
        meter.closed(5, &metrics);
        let read = counter.read.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(read, 1 << 20, "the re-read megabyte, once");
        assert!(meter.packs.lock().is_empty());
    }
}
