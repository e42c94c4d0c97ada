//! Moving throughput (1 s / 10 s / 60 s) from periodic samples of the filesystem's byte
//! counters. The data path only bumps atomics; a sampler thread reads them every
//! [`PERIOD`] into a ring, and a rate is "live counter now minus the sample one window ago,
//! over the time between them" — so a read that ended a moment ago already shows.
//! Per-file counters are sampled less often ([`FILE_PERIOD`]) for per-model and per-view rates.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::report::{self, Rate};

/// How often the totals are sampled.
pub const PERIOD: Duration = Duration::from_millis(100);
/// How often the per-file counters are sampled.
pub const FILE_PERIOD: Duration = Duration::from_millis(500);
/// The windows reported.
pub const WINDOWS: [Duration; 3] = [
    Duration::from_secs(1),
    Duration::from_secs(10),
    Duration::from_secs(60),
];
/// Samples older than this are dropped (the longest window plus slack).
const HISTORY: Duration = Duration::from_secs(62);

/// Byte counters at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Instant,
    pub read: u64,
    pub written: u64,
}

/// Per-file (inode) counters at one instant: inode → (read, written).
pub type FileCounts = HashMap<u64, (u64, u64)>;

#[derive(Default)]
pub struct Throughput {
    samples: Mutex<VecDeque<Sample>>,
    files: Mutex<VecDeque<(Instant, Arc<FileCounts>)>>,
}

/// Bytes per second between two samples (0 when they are too close to tell).
pub fn rate_between(then: &Sample, now: &Sample) -> Rate {
    let secs = now.at.saturating_duration_since(then.at).as_secs_f64();
    if secs < 0.001 {
        return Rate::default();
    }
    Rate {
        read_bytes_per_sec: now.read.saturating_sub(then.read) as f64 / secs,
        write_bytes_per_sec: now.written.saturating_sub(then.written) as f64 / secs,
    }
}

/// The newest entry at least `window` older than `now`; the oldest entry if none is that old
/// (the daemon is younger than the window).
fn base<T>(
    ring: &VecDeque<T>,
    at: impl Fn(&T) -> Instant,
    now: Instant,
    window: Duration,
) -> Option<&T> {
    ring.iter()
        .rev()
        .find(|s| now.saturating_duration_since(at(s)) >= window)
        .or_else(|| ring.front())
}

impl Throughput {
    pub fn new() -> Throughput {
        Throughput::default()
    }

    pub fn record(&self, sample: Sample) {
        let mut ring = self.samples.lock();
        ring.push_back(sample);
        while ring
            .front()
            .is_some_and(|s| sample.at.saturating_duration_since(s.at) > HISTORY)
        {
            ring.pop_front();
        }
    }

    pub fn record_files(&self, at: Instant, counts: FileCounts) {
        let mut ring = self.files.lock();
        ring.push_back((at, Arc::new(counts)));
        // Only the 1 s window is computed per file; keep a little more than that.
        while ring.len() > 2 && at.saturating_duration_since(ring[1].0) >= WINDOWS[0] + FILE_PERIOD
        {
            ring.pop_front();
        }
    }

    /// Throughput over `window`, ending at the live counters `now`.
    pub fn rate(&self, window: Duration, now: &Sample) -> Rate {
        let ring = self.samples.lock();
        match base(&ring, |s| s.at, now.at, window) {
            Some(then) => rate_between(then, now),
            None => Rate::default(),
        }
    }

    pub fn rates(&self, now: &Sample) -> report::Throughput {
        report::Throughput {
            s1: self.rate(WINDOWS[0], now),
            s10: self.rate(WINDOWS[1], now),
            s60: self.rate(WINDOWS[2], now),
        }
    }

    /// The per-file counters about one second before `now`, to diff live counters against.
    pub fn files_base(&self, now: Instant) -> Option<(Instant, Arc<FileCounts>)> {
        let ring = self.files.lock();
        base(&ring, |e| e.0, now, WINDOWS[0]).cloned()
    }
}

/// Samples `totals` every [`PERIOD`] and `files` every [`FILE_PERIOD`] until `stop` receives
/// (or its sender is dropped).
pub fn run_sampler(
    throughput: Arc<Throughput>,
    totals: impl Fn() -> (u64, u64),
    files: impl Fn() -> FileCounts,
    stop: Receiver<()>,
) {
    let mut last_files: Option<Instant> = None;
    loop {
        let at = Instant::now();
        let (read, written) = totals();
        throughput.record(Sample { at, read, written });
        if last_files.is_none_or(|t| at.duration_since(t) >= FILE_PERIOD) {
            throughput.record_files(at, files());
            last_files = Some(at);
        }
        match stop.recv_timeout(PERIOD) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t0: Instant, ms: u64, read: u64, written: u64) -> Sample {
        Sample {
            at: t0 + Duration::from_millis(ms),
            read,
            written,
        }
    }

    #[test]
    fn rates_use_the_sample_one_window_back() {
        let t = Throughput::new();
        let t0 = Instant::now();
        // 1 MB/s of reads for 70 s, sampled every 100 ms; writes stop after 30 s.
        for i in 0..=700u64 {
            let ms = i * 100;
            t.record(sample(t0, ms, ms * 1000, ms.min(30_000) * 500));
        }
        let now = sample(t0, 70_000, 70_000_000, 15_000_000);
        let rates = t.rates(&now);
        for r in [rates.s1, rates.s10, rates.s60] {
            assert!((r.read_bytes_per_sec - 1e6).abs() < 1.0, "{r:?}");
        }
        assert_eq!(rates.s1.write_bytes_per_sec, 0.0);
        assert_eq!(rates.s10.write_bytes_per_sec, 0.0);
        // The 60 s window starts at 10 s: 20 s of 500 kB/s writes over 60 s.
        assert!((rates.s60.write_bytes_per_sec - 10e6 / 60.0).abs() < 1.0);
        // History is bounded.
        assert!(t.samples.lock().len() <= 630);
    }

    #[test]
    fn a_burst_that_just_ended_shows_in_the_1s_window() {
        let t = Throughput::new();
        let t0 = Instant::now();
        for i in 0..50u64 {
            t.record(sample(t0, i * 100, 0, 0));
        }
        // 256 MiB read between the last sample and now (50 ms later).
        let now = sample(t0, 4_950, 256 << 20, 0);
        let r = t.rate(WINDOWS[0], &now);
        assert!(r.read_bytes_per_sec > 200e6, "{r:?}");
        // The 60 s window of a young daemon uses the oldest sample.
        assert!(t.rate(WINDOWS[2], &now).read_bytes_per_sec > 0.0);
    }

    #[test]
    fn empty_and_degenerate() {
        let t = Throughput::new();
        let t0 = Instant::now();
        assert_eq!(t.rate(WINDOWS[0], &sample(t0, 0, 5, 5)), Rate::default());
        t.record(sample(t0, 0, 10, 10));
        // Same instant, or counters that went backwards: no rate, no panic.
        assert_eq!(t.rate(WINDOWS[0], &sample(t0, 0, 20, 20)), Rate::default());
        assert_eq!(t.rate(WINDOWS[0], &sample(t0, 1000, 0, 0)), Rate::default());
    }

    #[test]
    fn file_snapshots_keep_about_a_second() {
        let t = Throughput::new();
        let t0 = Instant::now();
        for i in 0..20u64 {
            let mut m = FileCounts::new();
            m.insert(7, (i * 100, 0));
            t.record_files(t0 + Duration::from_millis(i * 500), m);
        }
        assert!(t.files.lock().len() <= 4);
        let now = t0 + Duration::from_millis(19 * 500 + 100);
        let (at, counts) = t.files_base(now).unwrap();
        assert!(now.duration_since(at) >= WINDOWS[0]);
        assert_eq!(counts[&7], (1700, 0));
    }

    #[test]
    fn sampler_stops_when_asked() {
        let t = Arc::new(Throughput::new());
        let (tx, rx) = std::sync::mpsc::channel();
        let t2 = t.clone();
        let h = std::thread::spawn(move || run_sampler(t2, || (1, 2), FileCounts::new, rx));
        std::thread::sleep(Duration::from_millis(250));
        tx.send(()).unwrap();
        h.join().unwrap();
        assert!(t.samples.lock().len() >= 2);
    }
}
