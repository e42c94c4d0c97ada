//! Counting what the kernel reads by passthrough (see `files::Passthrough`): those reads never
//! reach the daemon. Every so often, and before each status report, the pages of each
//! passed-through pack that are in the page cache are counted (mincore); what became resident
//! since the last look is counted as read from that file. That is the daemon's own measure for
//! every other file too: reads the page cache answers never reach it either.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use memmap2::Mmap;
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
    /// The pack, mapped only to ask which of its pages are resident (never touched).
    map: Mmap,
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
        // SAFETY: a read-only mapping of a pack that is never written again (raw packs are
        // complete once committed; gc deletes, never rewrites, them); its bytes are not read.
        let map = match unsafe { Mmap::map(pack) } {
            Ok(map) => map,
            Err(e) => {
                tracing::debug!(ino, error = %e, "passthrough reads of this file go uncounted");
                return;
            }
        };
        let resident = resident_bytes(&map);
        packs.insert(
            ino,
            Metered {
                map,
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
        let now = resident_bytes(&self.map);
        if now > self.resident {
            metrics.add_read(Some(&self.counter), now - self.resident);
        }
        // Pages the kernel dropped count again when they are read again.
        self.resident = now;
    }
}

/// Bytes of `map` in the page cache.
fn resident_bytes(map: &Mmap) -> u64 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let pages = map.len().div_ceil(page);
        let mut vec = vec![0u8; pages];
        // SAFETY: `map` is a live mapping of `map.len()` bytes starting on a page boundary, and
        // `vec` has one byte per page of it.
        let rc = unsafe {
            libc::mincore(
                map.as_ptr() as *mut libc::c_void,
                map.len(),
                vec.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return 0;
        }
        let resident = vec.iter().filter(|&&b| b & 1 != 0).count() as u64;
        (resident * page as u64).min(map.len() as u64)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = map;
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
