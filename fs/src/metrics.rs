//! Counters the daemon reports: per-operation counts and latency histograms, bytes read and
//! written, per model-tree and per file. Lock-free on the data path: plain atomics, so reading
//! them costs the hot path nothing but a few relaxed increments.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

/// Operations that are counted and timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Lookup,
    Getattr,
    Open,
    Read,
    Write,
    Flush,
    Release,
    Fsync,
    Readdir,
    Create,
    Mkdir,
    Unlink,
    Rename,
    Setattr,
    Other,
}

impl Op {
    pub const ALL: [Op; 15] = [
        Op::Lookup,
        Op::Getattr,
        Op::Open,
        Op::Read,
        Op::Write,
        Op::Flush,
        Op::Release,
        Op::Fsync,
        Op::Readdir,
        Op::Create,
        Op::Mkdir,
        Op::Unlink,
        Op::Rename,
        Op::Setattr,
        Op::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Getattr => "getattr",
            Op::Open => "open",
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Release => "release",
            Op::Fsync => "fsync",
            Op::Readdir => "readdir",
            Op::Create => "create",
            Op::Mkdir => "mkdir",
            Op::Unlink => "unlink",
            Op::Rename => "rename",
            Op::Setattr => "setattr",
            Op::Other => "other",
        }
    }
}

/// Latency buckets: upper bounds in microseconds (the last catches everything slower).
pub const LATENCY_BOUNDS_US: [u64; 12] = [
    10,
    25,
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    10_000,
    100_000,
    1_000_000,
    u64::MAX,
];

#[derive(Default)]
pub struct OpStats {
    pub count: AtomicU64,
    pub errors: AtomicU64,
    pub total_us: AtomicU64,
    pub buckets: [AtomicU64; 12],
}

/// Bytes moved through one file (keyed by inode); the daemon maps inodes to models.
#[derive(Default)]
pub struct FileBytes {
    pub read: AtomicU64,
    pub written: AtomicU64,
}

#[derive(Default)]
pub struct Metrics {
    ops: [OpStats; 15],
    pub read_bytes: AtomicU64,
    pub written_bytes: AtomicU64,
    /// Per-inode byte counts, created on first open (not on the read path).
    per_file: Mutex<HashMap<u64, std::sync::Arc<FileBytes>>>,
}

fn op_index(op: Op) -> usize {
    Op::ALL
        .iter()
        .position(|o| *o == op)
        .unwrap_or(Op::ALL.len() - 1)
}

impl Metrics {
    pub fn record(&self, op: Op, started: Instant, ok: bool) {
        let stats = &self.ops[op_index(op)];
        let us = started.elapsed().as_micros() as u64;
        stats.count.fetch_add(1, Ordering::Relaxed);
        stats.total_us.fetch_add(us, Ordering::Relaxed);
        if !ok {
            stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        let bucket = LATENCY_BOUNDS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(LATENCY_BOUNDS_US.len() - 1);
        stats.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    pub fn op(&self, op: Op) -> &OpStats {
        &self.ops[op_index(op)]
    }

    /// The counters of a file, made on open so reads and writes only touch atomics.
    pub fn file(&self, ino: u64) -> std::sync::Arc<FileBytes> {
        self.per_file.lock().entry(ino).or_default().clone()
    }

    pub fn add_read(&self, file: Option<&FileBytes>, bytes: u64) {
        self.read_bytes.fetch_add(bytes, Ordering::Relaxed);
        if let Some(f) = file {
            f.read.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    pub fn add_written(&self, file: Option<&FileBytes>, bytes: u64) {
        self.written_bytes.fetch_add(bytes, Ordering::Relaxed);
        if let Some(f) = file {
            f.written.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// (inode, bytes read, bytes written) of every file seen so far.
    pub fn files(&self) -> Vec<(u64, u64, u64)> {
        self.per_file
            .lock()
            .iter()
            .map(|(ino, f)| {
                (
                    *ino,
                    f.read.load(Ordering::Relaxed),
                    f.written.load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}
