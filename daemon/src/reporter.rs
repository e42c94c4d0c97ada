//! Builds the daemon's [`StatusReport`]: live counters from the filesystem's metrics, moving
//! throughput from the sampler, and store figures from a cache that a background thread
//! refreshes (catalog totals every second; the model list when the namespace changed, rate
//! limited), so answering a request never waits on the catalog.
//!
//! Attribution (see docs/STATUS.md): bytes are counted per inode by the filesystem. An inode
//! belongs to the view of the tree it lives in (`huggingface/` → `hf`, `ollama/` → `ollama`);
//! a derived entry in `mlx/` or `lmstudio/` *is* its source inode, so its bytes count under the
//! source tree. Only synthesized files (Ollama manifests and configs made for HF GGUFs, and
//! `/.mlxfs/stats.json`) are counted under the view that shows them. A model's bytes are those
//! of its files' inodes (a blob shared by two models counts for both).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fs::metrics::{Op, LATENCY_BOUNDS_US};
use parking_lot::Mutex;
use store::models::ModelInfo;

use crate::report::{
    Bucket, ModelEntry, ModelUsage, ModelsByLayout, OpReport, StatusReport, ViewUsage,
    PROTOCOL_VERSION,
};
use crate::throughput::{FileCounts, Sample, Throughput};

/// How often the store figures are refreshed.
const REFRESH: Duration = Duration::from_secs(1);
/// The model list is rebuilt at most this often (and at most every 10× its last cost).
const MODELS_MIN_INTERVAL: Duration = Duration::from_secs(2);
/// Serialized reports younger than this are reused (many watch clients, one build).
const REUSE: Duration = Duration::from_millis(20);
/// How long a status report waits for queued commits of closed files.
const STATUS_SETTLE: Duration = Duration::from_secs(5);

/// Who is serving, for the report.
#[derive(Debug, Clone)]
pub struct DaemonInfo {
    pub pid: u32,
    pub mountpoint: PathBuf,
    pub store: PathBuf,
    pub socket: Option<PathBuf>,
    /// Nanoseconds since the epoch.
    pub started: i64,
}

/// Store figures and the inode → model/view maps, as of the last refresh.
#[derive(Default)]
struct StoreCache {
    totals: store::Totals,
    pack_bytes: u64,
    catalog_bytes: u64,
    schema_version: i64,
    models: Vec<ModelInfo>,
    /// inode → indices into `models`.
    model_of: HashMap<u64, Vec<usize>>,
    /// inode → view key.
    view_of: HashMap<u64, &'static str>,
    generation: Option<u64>,
}

pub struct Reporter {
    vfs: Arc<fs::Vfs>,
    info: Mutex<DaemonInfo>,
    started_at: Instant,
    throughput: Arc<Throughput>,
    cache: Mutex<Arc<StoreCache>>,
    last_json: Mutex<Option<(Instant, Arc<String>)>>,
    /// Import and gc one at a time: a gc must not run between an import's commit and the
    /// moment open files forget the content it replaced (`Vfs::changed_outside`).
    jobs: Mutex<()>,
}

/// Bytes of the store's pack files (dead bytes included until `gc`).
pub fn pack_bytes(store: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(store.join("packs")) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| store::pack::is_pack_file_name(&e.file_name().to_string_lossy()))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Bytes of `catalog.db` and its WAL.
pub fn catalog_bytes(store: &Path) -> u64 {
    let len = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    len(store.join("catalog.db")) + len(store.join("catalog.db-wal"))
}

/// The `per_view` key of a top-level directory of the mount.
pub fn view_key(top: Option<&str>) -> &'static str {
    match top {
        Some("huggingface") => "hf",
        Some("ollama") => "ollama",
        Some("mlx") => "mlx",
        Some("lmstudio") => "lmstudio",
        _ => "other",
    }
}

pub fn ops_report(metrics: &fs::metrics::Metrics) -> BTreeMap<String, OpReport> {
    Op::ALL
        .iter()
        .map(|&op| {
            let s = metrics.op(op);
            let count = s.count.load(Ordering::Relaxed);
            let total_us = s.total_us.load(Ordering::Relaxed);
            let latency_us = LATENCY_BOUNDS_US
                .iter()
                .zip(&s.buckets)
                .map(|(bound, n)| Bucket {
                    le_us: (*bound != u64::MAX).then_some(*bound),
                    count: n.load(Ordering::Relaxed),
                })
                .collect();
            let report = OpReport {
                count,
                errors: s.errors.load(Ordering::Relaxed),
                total_us,
                mean_us: if count == 0 {
                    0.0
                } else {
                    total_us as f64 / count as f64
                },
                latency_us,
            };
            (op.name().to_string(), report)
        })
        .collect()
}

fn percent(part: u64, whole: u64) -> f64 {
    store::import::percent(part, whole)
}

impl Reporter {
    pub fn new(vfs: Arc<fs::Vfs>, info: DaemonInfo, throughput: Arc<Throughput>) -> Reporter {
        Reporter {
            vfs,
            info: Mutex::new(info),
            started_at: Instant::now(),
            throughput,
            cache: Mutex::new(Arc::new(StoreCache::default())),
            last_json: Mutex::new(None),
            jobs: Mutex::new(()),
        }
    }

    pub fn set_socket(&self, socket: Option<PathBuf>) {
        self.info.lock().socket = socket;
    }

    pub fn throughput(&self) -> &Arc<Throughput> {
        &self.throughput
    }

    /// Total bytes read and written so far.
    pub fn totals(&self) -> (u64, u64) {
        self.vfs.count_passthrough_reads(false);
        let m = &self.vfs.metrics;
        (
            m.read_bytes.load(Ordering::Relaxed),
            m.written_bytes.load(Ordering::Relaxed),
        )
    }

    pub fn file_counts(&self) -> FileCounts {
        self.vfs
            .metrics
            .files()
            .into_iter()
            .map(|(ino, r, w)| (ino, (r, w)))
            .collect()
    }

    /// Refreshes the store figures; the model list only when the namespace moved and enough
    /// time has passed. Runs on the refresher thread.
    pub fn refresh(&self, force_models: bool, models_due: &mut Instant) {
        let old = self.cache.lock().clone();
        let store = self.vfs.store();
        let dir = store.root().to_path_buf();
        let (totals, schema_version) = match store
            .catalog()
            .read(|tx| Ok((tx.totals()?, tx.schema_version()?)))
        {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "status: reading catalog totals");
                (old.totals, old.schema_version)
            }
        };
        let generation = self.vfs.namespace_generation();
        let now = Instant::now();
        let stale = old.generation != Some(generation);
        let mut models = None;
        if force_models || (stale && now >= *models_due) {
            let began = Instant::now();
            match store.list_models() {
                Ok(mut list) => {
                    // Where each model also shows in the derived views (mlx/, lmstudio/, …).
                    if let Err(e) = fs::views::paths::add_view_paths(store, &mut list) {
                        tracing::warn!(error = %e, "status: derived paths of models");
                    }
                    models = Some(list)
                }
                Err(e) => tracing::warn!(error = %e, "status: listing models"),
            }
            let took = began.elapsed();
            *models_due = Instant::now() + MODELS_MIN_INTERVAL.max(took * 10);
        }
        let mut next = StoreCache {
            totals,
            pack_bytes: pack_bytes(&dir),
            catalog_bytes: catalog_bytes(&dir),
            schema_version,
            ..StoreCache::default()
        };
        match models {
            Some(list) => {
                for (i, m) in list.iter().enumerate() {
                    let mut seen = HashSet::new();
                    for &ino in &m.inodes {
                        if seen.insert(ino) {
                            next.model_of.entry(ino).or_default().push(i);
                        }
                    }
                }
                next.models = list;
                next.generation = Some(generation);
                // Names may have moved between trees: map inodes afresh.
            }
            None => {
                next.models = old.models.clone();
                next.model_of = old.model_of.clone();
                next.generation = old.generation;
                next.view_of = old.view_of.clone();
            }
        }
        for (ino, _, _) in self.vfs.metrics.files() {
            if let std::collections::hash_map::Entry::Vacant(slot) = next.view_of.entry(ino) {
                slot.insert(view_key(self.vfs.top_dir_of(ino).as_deref()));
            }
        }
        *self.cache.lock() = Arc::new(next);
    }

    /// Runs [`Reporter::refresh`] every second until `stop` receives or is dropped.
    pub fn run_refresher(&self, stop: Receiver<()>) {
        let mut due = Instant::now();
        self.refresh(true, &mut due);
        loop {
            match stop.recv_timeout(REFRESH) {
                Err(RecvTimeoutError::Timeout) => self.refresh(false, &mut due),
                _ => return,
            }
        }
    }

    /// The report, as of now.
    pub fn status(&self) -> StatusReport {
        // Files closed just before count as stored: wait for their queued commits (a while:
        // `top` asks every second, and a queue of big files takes seconds).
        self.vfs.settle_within(STATUS_SETTLE);
        self.vfs.count_passthrough_reads(true);
        let info = self.info.lock().clone();
        // Totals are one row kept by triggers: read them afresh when the namespace moved, so a
        // file just closed counts at once (the model list keeps its own, slower refresh).
        if self.cache.lock().generation != Some(self.vfs.namespace_generation()) {
            let mut not_models = Instant::now() + Duration::from_secs(3600);
            self.refresh(false, &mut not_models);
        }
        let cache = self.cache.lock().clone();
        let now = Instant::now();
        let (read, written) = self.totals();
        let live = Sample {
            at: now,
            read,
            written,
        };
        let throughput = self.throughput.rates(&live);

        let mut r = StatusReport::empty(info.store.display().to_string());
        r.v = PROTOCOL_VERSION;
        r.source = "daemon".into();
        r.exists = true;
        r.logical_bytes = cache.totals.logical_bytes;
        r.physical_bytes = cache.totals.physical_bytes;
        r.saved_bytes = r.logical_bytes.saturating_sub(r.physical_bytes);
        r.saved_percent = percent(r.saved_bytes, r.logical_bytes);
        r.files = cache.totals.files;
        r.chunks = cache.totals.chunks;
        r.models = cache.models.len() as u64;
        r.models_by_layout = ModelsByLayout {
            hf: cache.models.iter().filter(|m| m.layout == "hf").count() as u64,
            ollama: cache.models.iter().filter(|m| m.layout == "ollama").count() as u64,
        };
        r.pack_bytes = cache.pack_bytes;
        r.catalog_bytes = cache.catalog_bytes;
        r.schema_version = cache.schema_version;
        r.mounted = true;
        r.mountpoint = Some(info.mountpoint.display().to_string());
        r.pid = Some(info.pid);
        r.in_use_by_pid = Some(info.pid);
        r.socket = info.socket.as_ref().map(|p| p.display().to_string());
        r.started = Some(info.started);
        r.uptime_secs = now.duration_since(self.started_at).as_secs_f64();
        r.passthrough = self.vfs.passthrough_enabled();
        let (queued_files, queued_bytes) = self.vfs.commit_backlog();
        r.commit_queue_files = queued_files as u64;
        r.commit_queue_bytes = queued_bytes;
        r.at = store::namespace::now_ns();
        r.read_bytes = read;
        r.written_bytes = written;
        r.read_bytes_per_sec = throughput.s1.read_bytes_per_sec;
        r.write_bytes_per_sec = throughput.s1.write_bytes_per_sec;
        r.throughput = throughput;

        // Per file: totals now, and the change over about the last second.
        let files = self.vfs.metrics.files();
        let base = self.throughput.files_base(now);
        let secs = base
            .as_ref()
            .map(|(at, _)| now.duration_since(*at).as_secs_f64())
            .unwrap_or(0.0);
        let delta = |ino: u64, read: u64, written: u64| -> (u64, u64) {
            let (r0, w0) = base
                .as_ref()
                .and_then(|(_, m)| m.get(&ino).copied())
                .unwrap_or((0, 0));
            (read.saturating_sub(r0), written.saturating_sub(w0))
        };
        let per_sec = |bytes: u64| {
            if secs < 0.001 {
                0.0
            } else {
                bytes as f64 / secs
            }
        };

        let mut model_rows: Vec<ModelUsage> = cache.models.iter().map(model_row).collect();
        let mut model_delta = vec![(0u64, 0u64); model_rows.len()];
        let mut view_delta: HashMap<&'static str, (u64, u64)> = HashMap::new();
        for (ino, read, written) in files {
            let (dr, dw) = delta(ino, read, written);
            let view = cache.view_of.get(&ino).copied().unwrap_or("other");
            let v = r.per_view.entry(view.to_string()).or_default();
            v.read_bytes += read;
            v.written_bytes += written;
            let d = view_delta.entry(view).or_default();
            d.0 += dr;
            d.1 += dw;
            for &i in cache.model_of.get(&ino).into_iter().flatten() {
                model_rows[i].read_bytes += read;
                model_rows[i].written_bytes += written;
                model_delta[i].0 += dr;
                model_delta[i].1 += dw;
            }
        }
        for (view, (dr, dw)) in view_delta {
            let v: &mut ViewUsage = r.per_view.entry(view.to_string()).or_default();
            v.read_bytes_per_sec = per_sec(dr);
            v.write_bytes_per_sec = per_sec(dw);
        }
        for (row, (dr, dw)) in model_rows.iter_mut().zip(model_delta) {
            row.read_bytes_per_sec = per_sec(dr);
            row.write_bytes_per_sec = per_sec(dw);
        }
        model_rows.sort_by(|a, b| {
            b.read_bytes.cmp(&a.read_bytes).then_with(|| {
                (&a.layout, &a.name, &a.revision).cmp(&(&b.layout, &b.name, &b.revision))
            })
        });
        r.per_model = model_rows;
        r.ops = ops_report(&self.vfs.metrics);
        r
    }

    /// The report as one line of JSON, reused for [`REUSE`] so many watchers cost one build,
    /// unless a file was closed since (its commit must count, see [`Reporter::status`]).
    pub fn status_json(&self) -> Arc<String> {
        let mut last = self.last_json.lock();
        if let Some((at, json)) = last.as_ref() {
            if at.elapsed() < REUSE && self.vfs.commits_settled() {
                return json.clone();
            }
        }
        let json = Arc::new(serde_json::to_string(&self.status()).unwrap_or_default());
        *last = Some((Instant::now(), json.clone()));
        json
    }

    /// Imports caches into the mounted store, then tells the kernel what changed under it.
    pub fn import(
        &self,
        paths: &[PathBuf],
        options: store::import::ImportOptions,
        progress: &std::sync::atomic::AtomicU64,
    ) -> Result<String, String> {
        let _one_job = self.jobs.lock();
        // A file closed in the mount before the import is committed before it.
        self.vfs.settle();
        let store = self.vfs.store();
        let options = store::import::ImportOptions {
            leave_replaced_inodes: true,
            ..options
        };
        let report = store
            .import_with(paths, options, &|n| {
                progress.fetch_add(n, Ordering::Relaxed);
            })
            .map_err(|e| e.to_string());
        // Even a failed import may have committed batches: caches must learn of them.
        let roots: Vec<&str> = vec![store::models::HF_ROOT, store::models::OLLAMA_ROOT];
        let replaced = report.as_ref().ok().map(|r| r.replaced_entries.as_slice());
        if let Err(e) = self.vfs.changed_outside(&roots, replaced) {
            tracing::warn!(error = %e, "invalidating kernel caches after an import");
        }
        // Files the import replaced: deleted unless open or still known to the kernel.
        if let Err(e) = self.vfs.release_unlinked_inodes() {
            tracing::warn!(error = %e, "releasing the files an import replaced");
        }
        // The import committed before its packs reached the disk (deferred_sync.rs): they are
        // made durable behind the reply, as `cp` leaves its copy to the kernel.
        let settling = store.clone();
        let spawned = std::thread::Builder::new()
            .name("mlxfs-import-sync".into())
            .spawn(move || match settling.settle_unsynced() {
                Ok(marks) => tracing::debug!(marks, "an import's packs are on disk"),
                Err(e) => tracing::warn!(error = %e, "syncing the packs of an import"),
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no thread to sync an import's packs; the next start will");
        }
        let report = report?;
        if let Err(e) = store.refresh_models() {
            tracing::warn!(error = %e, "refreshing the model registry after an import");
        }
        serde_json::to_string(&report).map_err(|e| e.to_string())
    }

    /// Collects garbage in the mounted store (the `gc` command): reads and writes through the
    /// mount go on meanwhile (see store/src/gc.rs for how they stay correct).
    pub fn gc(&self, progress: &std::sync::atomic::AtomicU64) -> Result<String, String> {
        let _one_job = self.jobs.lock();
        self.vfs.settle();
        let report = self
            .vfs
            .store()
            .gc(&|n| {
                progress.fetch_add(n, Ordering::Relaxed);
            })
            .map_err(|e| e.to_string())?;
        tracing::info!(?report, "gc through the status socket");
        serde_json::to_string(&report).map_err(|e| e.to_string())
    }

    /// Every model with its paths and usage (the `models` command).
    pub fn models(&self) -> Vec<ModelEntry> {
        // `ls` must see what was just written: list afresh when the namespace moved.
        let stale = self.cache.lock().generation != Some(self.vfs.namespace_generation());
        if stale {
            self.refresh(true, &mut Instant::now());
        }
        let status = self.status();
        let cache = self.cache.lock().clone();
        let mut usage: HashMap<(String, String, String), ModelUsage> = status
            .per_model
            .into_iter()
            .map(|m| ((m.layout.clone(), m.name.clone(), m.revision.clone()), m))
            .collect();
        cache
            .models
            .iter()
            .map(|m| ModelEntry {
                usage: usage
                    .remove(&(m.layout.clone(), m.name.clone(), m.revision.clone()))
                    .unwrap_or_else(|| model_row(m)),
                paths: m.paths.clone(),
            })
            .collect()
    }
}

fn model_row(m: &ModelInfo) -> ModelUsage {
    ModelUsage {
        layout: m.layout.clone(),
        name: m.name.clone(),
        revision: m.revision.clone(),
        format: m.format.clone(),
        files: m.files,
        logical_bytes: m.logical_bytes,
        stored_bytes: m.stored_bytes,
        unique_bytes: m.unique_bytes,
        ..ModelUsage::default()
    }
}

impl fs::StatsProvider for Reporter {
    fn stats_json(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(&self.status()).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_keys() {
        assert_eq!(view_key(Some("huggingface")), "hf");
        assert_eq!(view_key(Some("ollama")), "ollama");
        assert_eq!(view_key(Some("mlx")), "mlx");
        assert_eq!(view_key(Some("lmstudio")), "lmstudio");
        assert_eq!(view_key(Some(".mlxfs")), "other");
        assert_eq!(view_key(None), "other");
    }

    #[test]
    fn report_from_a_vfs_without_mount() {
        let dir = tempfile::tempdir().unwrap();
        let store = store::Store::open(dir.path(), Default::default()).unwrap();
        let vfs = Arc::new(fs::Vfs::new(Arc::new(store)).unwrap());
        let throughput = Arc::new(Throughput::new());
        let reporter = Reporter::new(
            vfs.clone(),
            DaemonInfo {
                pid: 42,
                mountpoint: "/mnt".into(),
                store: dir.path().to_path_buf(),
                socket: Some("/s".into()),
                started: 0,
            },
            throughput.clone(),
        );
        // A file written and read through the core Vfs.
        let caller = fs::Caller {
            uid: 0,
            gid: 0,
            pid: 1,
        };
        let hf = vfs.lookup(store::ROOT_INO, b"huggingface").unwrap().ino;
        let hub = vfs.lookup(hf, b"hub").unwrap().ino;
        let (attr, opened) = vfs
            .create(hub, b"f", 0o644, 0o022, libc::O_RDWR, caller)
            .unwrap();
        throughput.record(Sample {
            at: Instant::now(),
            read: 0,
            written: 0,
        });
        throughput.record_files(Instant::now(), FileCounts::new());
        vfs.write(attr.ino, opened.fh, 0, &[7u8; 4096], false)
            .unwrap();
        assert_eq!(vfs.read(attr.ino, opened.fh, 0, 4096).unwrap().len(), 4096);
        vfs.release(opened.fh).unwrap();
        let mut due = Instant::now();
        reporter.refresh(true, &mut due);
        std::thread::sleep(Duration::from_millis(5));

        let r = reporter.status();
        assert_eq!(r.source, "daemon");
        assert!(r.mounted);
        assert_eq!(r.pid, Some(42));
        assert_eq!(r.socket.as_deref(), Some("/s"));
        assert_eq!(r.read_bytes, 4096);
        assert_eq!(r.written_bytes, 4096);
        assert!(r.read_bytes_per_sec > 0.0 && r.write_bytes_per_sec > 0.0);
        assert_eq!(r.per_view["hf"].read_bytes, 4096);
        assert!(r.per_view["hf"].read_bytes_per_sec > 0.0);
        for v in crate::report::VIEWS {
            assert!(r.per_view.contains_key(v), "{v}");
        }
        assert_eq!(
            r.ops["read"].count, 0,
            "the core Vfs is not timed, the adapter is"
        );
        assert_eq!(r.ops["read"].latency_us.len(), LATENCY_BOUNDS_US.len());
        assert_eq!(r.ops["read"].latency_us.last().unwrap().le_us, None);
        assert_eq!(r.logical_bytes, 4096);

        // The same JSON shows up as /.mlxfs/stats.json.
        let reporter = Arc::new(reporter);
        vfs.set_stats_provider(reporter.clone());
        let d = vfs.lookup(store::ROOT_INO, b".mlxfs").unwrap().ino;
        let f = vfs.lookup(d, b"stats.json").unwrap().ino;
        let opened = vfs.open(f, libc::O_RDONLY).unwrap();
        let bytes = vfs.read(f, opened.fh, 0, 1 << 20).unwrap();
        let parsed: StatusReport = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(parsed.pid, Some(42));
        assert!(parsed.read_bytes >= 4096);
        vfs.release(opened.fh).unwrap();
        let line = reporter.status_json();
        assert!(!line.contains('\n'));
    }
}
