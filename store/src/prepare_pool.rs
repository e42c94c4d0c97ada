//! Worker threads that prepare an import's big files (chunk, hash, store; see `ingest`) while
//! the walk goes on, so one file's hashing overlaps the next file's reads from a cold disk.
//!
//! A single file keeps both cores busy only while its pages are in memory: reading a cold file
//! through its mapping stalls both of its hashing threads at once, and a second file in
//! flight fills those stalls (docs/PERFORMANCE.md, seventh round). Results come back through
//! a [`Preparing`] handle per file, which the importer waits on in walk order, so the catalog
//! sees the files in the same order as before.

use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::Scope;

use parking_lot::Mutex;

use crate::content::PreparedContent;
use crate::error::{Result, StoreError};
use crate::ingest::MappedFile;
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
    pub(crate) fn wait(&self) -> Result<PreparedContent> {
        self.done.recv().unwrap_or_else(|_| Err(worker_stopped()))
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
}

impl PreparePool {
    /// Starts `workers` threads in `scope`; they stop when the pool is dropped and every file
    /// handed to them is done.
    pub(crate) fn start<'scope>(
        scope: &'scope Scope<'scope, '_>,
        store: &'scope Store,
        workers: usize,
    ) -> PreparePool {
        let (jobs, queue) = channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let workers = workers.max(1);
        for _ in 0..workers {
            let queue = queue.clone();
            scope.spawn(move || loop {
                let job = queue.lock().recv();
                let Ok(job) = job else { return };
                // The importer may have stopped waiting (an earlier error); nothing to tell.
                let _ = job.done.send(store.prepare(&job.data));
            });
        }
        PreparePool { jobs, workers }
    }

    /// Files that may be in flight at once: one more than the workers, so the next file is
    /// queued before a worker finishes its current one.
    pub(crate) fn capacity(&self) -> usize {
        self.workers + 1
    }

    /// Queues `data` for preparing.
    pub(crate) fn submit(&self, data: MappedFile) -> Preparing {
        let (done, result) = sync_channel(1);
        if let Err(unsent) = self.jobs.send(Job { data, done }) {
            // No worker is left (they only stop with the pool): the handle reports it.
            drop(unsent);
        }
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
