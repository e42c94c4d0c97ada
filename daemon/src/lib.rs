//! The mount daemon: checks that a mount can work, mounts the filesystem, records itself in the
//! store (`daemon.json`) so the CLI can find it, commits open files and unmounts on
//! SIGINT/SIGTERM, and cleans up after itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use store::{Store, StoreOptions};

pub mod client;
pub mod mounts;
pub mod prometheus;
pub mod report;
pub mod reporter;
pub mod status;
pub mod throughput;

pub use mounts::{is_mountpoint, unmount};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(
        "/dev/fuse is missing: install FUSE (e.g. `apt-get install fuse3`) or load the fuse module"
    )]
    NoFuse,
    #[error("{0} is already a mount point (unmount it first with `mlxfs unmount {0}`)")]
    MountpointBusy(String),
    #[error("mount point {path}: {source}")]
    Mountpoint {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("filesystem: {0}")]
    Fs(fs::Errno),
    #[error("mounting {path}: {source}")]
    Mount {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What `mlxfs mount` asks for.
#[derive(Debug, Clone)]
pub struct MountRequest {
    pub store: PathBuf,
    pub mountpoint: PathBuf,
    pub allow_other: bool,
    /// Every read is served and checked by the daemon: no FUSE passthrough.
    pub verify_reads: bool,
    pub store_options: StoreOptions,
    /// Serve Prometheus text at `/metrics` on this address.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Allow `metrics_addr` to be a non-loopback address.
    pub metrics_allow_remote: bool,
}

/// What a running daemon writes into its store so other commands can find it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DaemonRecord {
    pub pid: u32,
    pub mountpoint: PathBuf,
    pub store: PathBuf,
    /// Nanoseconds since the epoch.
    pub started: i64,
    /// The status socket (absent when it could not be created, or from older daemons).
    #[serde(default)]
    pub socket: Option<PathBuf>,
}

pub const RECORD_FILE: &str = "daemon.json";

/// The record of the daemon serving `store`, if one is running.
pub fn running_daemon(store: &Path) -> Option<DaemonRecord> {
    let bytes = std::fs::read(store.join(RECORD_FILE)).ok()?;
    let record: DaemonRecord = serde_json::from_slice(&bytes).ok()?;
    // SAFETY: kill with signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(record.pid as libc::pid_t, 0) } == 0;
    (alive && store::lock_holder(store).is_some()).then_some(record)
}

/// Everything that can be checked before touching the store, with a clear reason on failure.
pub fn preflight(mountpoint: &Path) -> Result<(), DaemonError> {
    if !Path::new("/dev/fuse").exists() {
        return Err(DaemonError::NoFuse);
    }
    let shown = mountpoint.display().to_string();
    match std::fs::metadata(mountpoint) {
        Ok(meta) if !meta.is_dir() => {
            return Err(DaemonError::Mountpoint {
                path: shown,
                source: std::io::Error::from_raw_os_error(libc::ENOTDIR),
            })
        }
        Ok(_) => {}
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)) => {
            // A daemon died without unmounting: clear the dead mount so we can take its place.
            tracing::warn!(mountpoint = %shown, "clearing a stale mount left by a dead daemon");
            mounts::unmount_lazy(mountpoint)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(mountpoint).map_err(|source| DaemonError::Mountpoint {
                path: shown.clone(),
                source,
            })?;
        }
        Err(source) => {
            return Err(DaemonError::Mountpoint {
                path: shown,
                source,
            })
        }
    }
    if is_mountpoint(mountpoint) {
        // A FUSE mount whose daemon died still shows in the mount table, and stat may even
        // answer from the kernel's attribute cache; statfs always asks the daemon, so it tells.
        match mounts::statfs_error(mountpoint) {
            Some(code) if code == libc::ENOTCONN || code == libc::ECONNABORTED => {
                tracing::warn!(mountpoint = %shown, "clearing a stale mount left by a dead daemon");
                mounts::unmount_lazy(mountpoint)?;
            }
            _ => return Err(DaemonError::MountpointBusy(shown)),
        }
    }
    Ok(())
}

/// Mounts and serves until unmounted or signalled. `ready` is called once the mount answers
/// (or with the error that stopped it), so a parent waiting on `--daemon` can exit.
pub fn run(
    request: &MountRequest,
    ready: impl FnOnce(Result<(), String>),
) -> Result<(), DaemonError> {
    let mut ready = Some(ready);
    let mut report = |r: Result<(), String>| {
        if let Some(f) = ready.take() {
            f(r)
        }
    };
    let result = serve(request, &mut report);
    if let Err(e) = &result {
        report(Err(e.to_string()));
    }
    result
}

fn serve(
    request: &MountRequest,
    report: &mut dyn FnMut(Result<(), String>),
) -> Result<(), DaemonError> {
    preflight(&request.mountpoint)?;
    fs::platform::tune_allocator();
    let metrics_listener = match request.metrics_addr {
        Some(addr) => {
            prometheus::check_addr(addr, request.metrics_allow_remote)
                .map_err(|e| DaemonError::Io(std::io::Error::other(e)))?;
            let listener = std::net::TcpListener::bind(addr).map_err(|e| {
                DaemonError::Io(std::io::Error::new(
                    e.kind(),
                    format!("--metrics-addr {addr}: {e}"),
                ))
            })?;
            listener.set_nonblocking(true)?;
            Some(listener)
        }
        None => None,
    };
    let mountpoint = request.mountpoint.canonicalize()?;
    let store = Arc::new(Store::open(&request.store, request.store_options.clone())?);
    let vfs = Arc::new(fs::Vfs::new(store.clone()).map_err(DaemonError::Fs)?);
    let config = fs::fuse::MountConfig {
        allow_other: request.allow_other,
        passthrough: !request.verify_reads,
        threads: fs::platform::worker_threads(),
    };
    let session = fs::fuse::mount(vfs.clone(), &mountpoint, &config).map_err(|source| {
        DaemonError::Mount {
            path: mountpoint.display().to_string(),
            source,
        }
    })?;
    // The mount answers once a stat through it succeeds.
    let started = std::time::Instant::now();
    while std::fs::metadata(mountpoint.join("huggingface")).is_err() {
        if started.elapsed() > std::time::Duration::from_secs(10) || session.guard.is_finished() {
            return Err(DaemonError::Mount {
                path: mountpoint.display().to_string(),
                source: std::io::Error::other("the mount did not answer"),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    match fs::platform::match_disk_readahead(&mountpoint, &request.store) {
        Ok(kb) => tracing::info!(kb, "mount readahead set"),
        Err(why) => tracing::info!(%why, "mount readahead left at the kernel's default"),
    }
    let mut record = DaemonRecord {
        pid: std::process::id(),
        mountpoint: mountpoint.clone(),
        store: request.store.clone(),
        started: store::namespace::now_ns(),
        socket: None,
    };
    let mut reporting = Reporting::start(&vfs, &record, metrics_listener);
    record.socket = reporting.socket();
    let record_path = request.store.join(RECORD_FILE);
    std::fs::write(
        &record_path,
        serde_json::to_vec_pretty(&record).unwrap_or_default(),
    )?;
    tracing::info!(mountpoint = %mountpoint.display(), pid = record.pid, "mounted");
    report(Ok(()));

    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])?;
    let handle = signals.handle();
    let signal_vfs = vfs.clone();
    let signal_mountpoint = mountpoint.clone();
    let watcher = std::thread::spawn(move || {
        let mut signals = signals;
        if let Some(signal) = signals.forever().next() {
            tracing::info!(
                signal,
                "signal received: committing open files and unmounting"
            );
            if let Err(e) = signal_vfs.commit_all() {
                tracing::error!(error = %e, "committing open files");
            }
            if let Err(e) = unmount(&signal_mountpoint) {
                tracing::warn!(error = %e, "unmount busy; detaching lazily");
                let _ = mounts::unmount_lazy(&signal_mountpoint);
            }
        }
    });
    let served = session.join();
    handle.close();
    let _ = watcher.join();
    reporting.stop();
    vfs.commit_all().map_err(DaemonError::Fs)?;
    // An import's packs committed unsynced become durable now rather than at the next open.
    if let Err(e) = vfs.store().settle_unsynced() {
        tracing::warn!(error = %e, "syncing the packs of an import");
    }
    let _ = std::fs::remove_file(&record_path);
    tracing::info!("unmounted");
    served.map_err(DaemonError::Io)
}

/// The status socket, its sampler and refresher threads, and `/.mlxfs/stats.json`.
struct Reporting {
    server: Option<status::StatusServer>,
    stop: Vec<std::sync::mpsc::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Reporting {
    fn start(
        vfs: &Arc<fs::Vfs>,
        record: &DaemonRecord,
        metrics: Option<std::net::TcpListener>,
    ) -> Reporting {
        let throughput = Arc::new(throughput::Throughput::new());
        let info = reporter::DaemonInfo {
            pid: record.pid,
            mountpoint: record.mountpoint.clone(),
            store: record.store.clone(),
            socket: None,
            started: record.started,
        };
        let reporter = Arc::new(reporter::Reporter::new(
            vfs.clone(),
            info,
            throughput.clone(),
        ));
        let mut reporting = Reporting {
            server: None,
            stop: Vec::new(),
            threads: Vec::new(),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let r = reporter.clone();
        let spawned = std::thread::Builder::new()
            .name("mlxfs-sampler".into())
            .spawn(move || {
                throughput::run_sampler(throughput, || r.totals(), || r.file_counts(), rx)
            });
        reporting.track(tx, spawned);
        let (tx, rx) = std::sync::mpsc::channel();
        let r = reporter.clone();
        let spawned = std::thread::Builder::new()
            .name("mlxfs-refresh".into())
            .spawn(move || r.run_refresher(rx));
        reporting.track(tx, spawned);

        let path = status::default_socket_path(&record.store);
        let path = std::path::absolute(&path).unwrap_or(path);
        match status::start(&path, reporter.clone(), metrics) {
            Ok(server) => {
                reporter.set_socket(Some(server.path().to_path_buf()));
                tracing::info!(socket = %path.display(), "status socket ready");
                reporting.server = Some(server);
            }
            Err(e) => {
                tracing::error!(socket = %path.display(), error = %e, "no status socket");
            }
        }
        vfs.set_stats_provider(reporter);
        reporting
    }

    fn track(
        &mut self,
        stop: std::sync::mpsc::Sender<()>,
        thread: std::io::Result<std::thread::JoinHandle<()>>,
    ) {
        match thread {
            Ok(t) => {
                self.stop.push(stop);
                self.threads.push(t);
            }
            Err(e) => tracing::error!(error = %e, "starting a metrics thread"),
        }
    }

    fn socket(&self) -> Option<PathBuf> {
        self.server.as_ref().map(|s| s.path().to_path_buf())
    }

    fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.stop();
        }
        for tx in self.stop.drain(..) {
            let _ = tx.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Reporting {
    fn drop(&mut self) {
        self.stop();
    }
}
