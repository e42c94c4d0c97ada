//! Worker threads that prepare an import's big files (chunk, hash, store; see `ingest`) while
//! the walk goes on, so one file's hashing overlaps the next file's reads from a cold disk.
//!
//! A single file keeps both cores busy only while its pages are in memory: reading a cold file
//! through its mapping stalls both of its hashing threads at once, and a second file in
//! flight fills those stalls (docs/PERFORMANCE.md, seventh round). Results come back through
//! a [`Preparing`] handle per file, which the importer waits on in walk order, so the catalog
//! sees the files in the same order as before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{
    channel, sync_channel, Receiver, RecvTimeoutError, Sender, SyncSender, TryRecvError,
};
use std::sync::Arc;
use std::thread::Scope;
use std::time::Duration;

use parking_lot::Mutex;

use crate::content::PreparedContent;
use crate::deferred_sync::Durability;
use crate::error::{Result, StoreError};
use crate::mapped::MappedFile;
use crate::store::Store;

struct Job {
    data: MappedFile,
    done: SyncSender<Result<PreparedContent>>,
}

/// A file handed to the pool; [`Preparing::wait`] gives its prepared content.
pub(crate) struct Preparing {
    done: Receiver<Result<PreparedContent>>,
}

impl Preparing {
    /// Waits for the prepared content, calling `tick` every `every` meanwhile.
    pub(crate) fn wait(&self, every: Duration, mut tick: impl FnMut()) -> Result<PreparedContent> {
        loop {
            match self.done.recv_timeout(every) {
                Ok(prepared) => return prepared,
                Err(RecvTimeoutError::Timeout) => tick(),
                Err(RecvTimeoutError::Disconnected) => return Err(worker_stopped()),
            }
        }
    }

    /// The prepared content if the worker is done with it.
    pub(crate) fn try_wait(&self) -> Option<Result<PreparedContent>> {
        match self.done.try_recv() {
            Ok(prepared) => Some(prepared),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(Err(worker_stopped())),
        }
    }
}

fn worker_stopped() -> StoreError {
    StoreError::io(
        "preparing a file on a worker thread",
        std::io::Error::other("the worker stopped before finishing it"),
    )
}

pub(crate) struct PreparePool {
    jobs: Sender<Job>,
    workers: usize,
    /// Bytes the workers have hashed, over all files.
    hashed: Arc<AtomicU64>,
}

impl PreparePool {
    /// Starts `workers` threads in `scope`; they stop when the pool is dropped and every file
    /// handed to them is done.
    pub(crate) fn start<'scope>(
        scope: &'scope Scope<'scope, '_>,
        store: &'scope Store,
        workers: usize,
        durability: Durability,
    ) -> PreparePool {
        let (jobs, queue) = channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let hashed = Arc::new(AtomicU64::new(0));
        let workers = workers.max(1);
        for _ in 0..workers {
            let queue = queue.clone();
            let hashed = hashed.clone();
            scope.spawn(move || loop {
                let job = queue.lock().recv();
                let Ok(job) = job else { return };
                // The importer may have stopped waiting (an earlier error); nothing to tell.
                let _ = job
                    .done
                    .send(store.prepare_import(&job.data, &hashed, durability));
            });
        }
        PreparePool {
            jobs,
            workers,
            hashed,
        }
    }

    /// Files that may be in flight at once: one more than the workers, so the next file is
    /// queued before a worker finishes its current one.
    pub(crate) fn capacity(&self) -> usize {
        self.workers + 1
    }

    /// Bytes of the files handed to the pool hashed so far: each file's size once it is done.
    pub(crate) fn hashed_bytes(&self) -> u64 {
        self.hashed.load(Ordering::Relaxed)
    }

    /// Queues `data` for preparing.
    pub(crate) fn submit(&self, data: MappedFile) -> Preparing {
        let (done, result) = sync_channel(1);
        // Fails only with no worker left (they stop with the pool): the handle reports it.
        let _ = self.jobs.send(Job { data, done });
        Preparing { done: result }
    }
}

/// Files an import keeps in flight at once: enough for two cores, more where there are more.
pub(crate) fn workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().div_ceil(2))
        .unwrap_or(1)
        .max(2)
}
