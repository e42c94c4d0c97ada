//! The JSON the daemon reports (status socket, `/.mlxfs/stats.json`, `mlxfs status --json`),
//! one schema whether the numbers come from a running daemon or only from the catalog.
//! Documented field by field in docs/STATUS.md; fields are only ever added.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the socket protocol and of this schema.
pub const PROTOCOL_VERSION: u64 = 1;

/// Views `per_view` always lists (in this order when shown), plus `other`.
pub const VIEWS: [&str; 5] = ["hf", "ollama", "mlx", "lmstudio", "other"];

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ModelsByLayout {
    pub hf: u64,
    pub ollama: u64,
}

/// Bytes per second over one window.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Rate {
    pub read_bytes_per_sec: f64,
    pub write_bytes_per_sec: f64,
}

/// Moving throughput over the last 1, 10 and 60 seconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Throughput {
    #[serde(rename = "1s")]
    pub s1: Rate,
    #[serde(rename = "10s")]
    pub s10: Rate,
    #[serde(rename = "60s")]
    pub s60: Rate,
}

/// Bytes moved through one view (see docs/STATUS.md for how bytes are attributed).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ViewUsage {
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub read_bytes_per_sec: f64,
    pub write_bytes_per_sec: f64,
}

/// One model's size and the bytes read from and written to its files since the mount.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ModelUsage {
    pub layout: String,
    pub name: String,
    pub revision: String,
    pub format: String,
    pub files: u64,
    pub logical_bytes: u64,
    pub stored_bytes: u64,
    pub unique_bytes: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub read_bytes_per_sec: f64,
    pub write_bytes_per_sec: f64,
}

/// One latency bucket: operations that took at most `le_us` microseconds (and more than the
/// previous bucket's bound); `le_us` is null for the last, unbounded bucket.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Bucket {
    pub le_us: Option<u64>,
    pub count: u64,
}

/// Counts and latency histogram of one filesystem operation.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct OpReport {
    pub count: u64,
    pub errors: u64,
    pub total_us: u64,
    pub mean_us: f64,
    pub latency_us: Vec<Bucket>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    /// Schema version ([`PROTOCOL_VERSION`]).
    pub v: u64,
    /// `daemon` (live numbers from the mount) or `catalog` (not mounted: stored totals only).
    pub source: String,
    pub store: String,
    pub exists: bool,
    pub logical_bytes: u64,
    pub physical_bytes: u64,
    pub saved_bytes: u64,
    pub saved_percent: f64,
    pub files: u64,
    pub chunks: u64,
    pub models: u64,
    pub models_by_layout: ModelsByLayout,
    pub pack_bytes: u64,
    pub catalog_bytes: u64,
    pub schema_version: i64,
    pub mounted: bool,
    pub mountpoint: Option<String>,
    pub pid: Option<u32>,
    pub in_use_by_pid: Option<u32>,
    pub socket: Option<String>,
    /// Nanoseconds since the epoch when the daemon mounted.
    pub started: Option<i64>,
    pub uptime_secs: f64,
    /// Whether the kernel reads eligible files straight from their packs (FUSE passthrough;
    /// off with `mount --verify-reads`, or when the kernel lacks it).
    #[serde(default)]
    pub passthrough: bool,
    /// Files closed through the mount whose commit is still queued (or running), and their
    /// bytes: they read back already, and count in the totals once committed.
    #[serde(default)]
    pub commit_queue_files: u64,
    #[serde(default)]
    pub commit_queue_bytes: u64,
    /// Nanoseconds since the epoch when this report was made.
    pub at: i64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    /// Over the last second.
    pub read_bytes_per_sec: f64,
    pub write_bytes_per_sec: f64,
    pub throughput: Throughput,
    pub per_view: BTreeMap<String, ViewUsage>,
    /// Every model, most bytes read first.
    pub per_model: Vec<ModelUsage>,
    pub ops: BTreeMap<String, OpReport>,
}

impl StatusReport {
    /// A report with every view key present and zero.
    pub fn empty(store: String) -> StatusReport {
        StatusReport {
            v: PROTOCOL_VERSION,
            store,
            per_view: VIEWS
                .iter()
                .map(|v| (v.to_string(), ViewUsage::default()))
                .collect(),
            ..StatusReport::default()
        }
    }
}

/// One model as the `models` command answers: its size, where it is visible, its usage.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ModelEntry {
    #[serde(flatten)]
    pub usage: ModelUsage,
    /// Namespace paths (relative to the mount) the model is visible at.
    pub paths: Vec<String>,
}
