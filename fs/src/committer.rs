//! Commits of closed files, in the background.
//!
//! Chunking and hashing a closed file costs about a second per GiB of CPU. Doing it inside
//! close(2) made `cp` into the mount several times slower than `cp` to a disk, whose close
//! returns once the bytes are in the page cache. So the last close of a written file queues its
//! commit and returns: until the commit lands, the file's open state (its staging copy) stays,
//! and every open, read and stat sees the new bytes from it. `fsync` still commits before it
//! returns.
//!
//! A queued file leaves a record beside its staging file. If the daemon dies before the
//! commit, the next start commits the staging bytes the record names: the staging file sat in
//! the page cache, which outlives the process. A record of another write session (written
//! before the machine last booted, or before the store's file system was last mounted: see
//! `store::deferred_sync::write_session`) is dropped instead (its bytes may never have reached
//! the disk); like a file closed on a disk and not fsynced before a power cut, that file keeps
//! what it had before.
//!
//! Files are committed in the order they were closed. Queued bytes are bounded (staging holds a
//! second copy of them until their commit), and a close only queues while the store's disk has
//! room for the commit, so a full disk is still reported by the close that hit it.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::files::OpenFile;

/// At most this many bytes wait in the queue ...
pub const MAX_QUEUED_BYTES: u64 = 4 << 30;
/// ... in at most this many files; further closes commit before they return.
pub const MAX_QUEUED_FILES: usize = 64;
/// A close queues only while the disk keeps this much free beyond the file's own size.
pub const FREE_SPACE_MARGIN: u64 = 256 << 20;

/// Suffix of the record that names a staging file queued for commit.
const RECORD_SUFFIX: &str = "commit";
const RECORD_MAGIC: &str = "mlxfs-commit 1";

/// The files whose commit is queued, and the thread that commits them.
#[derive(Default)]
pub(crate) struct Committer {
    queue: Mutex<Queue>,
    changed: Condvar,
}

#[derive(Default)]
struct Queue {
    files: VecDeque<(Arc<OpenFile>, u64)>,
    bytes: u64,
    /// Taken from `files` and being committed now.
    running: usize,
    /// A commit thread runs: closes may queue.
    enabled: bool,
    stopping: bool,
}

impl Committer {
    /// Whether a close of `size` staged bytes may leave its commit to the thread.
    pub(crate) fn has_room(&self, size: u64, disk_free: impl FnOnce() -> Option<u64>) -> bool {
        {
            let queue = self.queue.lock();
            if !queue.enabled
                || queue.stopping
                || queue.files.len() >= MAX_QUEUED_FILES
                || queue.bytes.saturating_add(size) > MAX_QUEUED_BYTES
            {
                return false;
            }
        }
        disk_free().is_some_and(|free| free >= size.saturating_add(FREE_SPACE_MARGIN))
    }

    /// Queues `file`, which carries one handle count for the queue until its commit.
    pub(crate) fn push(&self, file: Arc<OpenFile>, size: u64) {
        let mut queue = self.queue.lock();
        queue.bytes += size;
        queue.files.push_back((file, size));
        self.changed.notify_all();
    }

    /// Allows queueing; the caller then runs [`Committer::next`] in a loop on its own thread.
    pub(crate) fn enable(&self) {
        let mut queue = self.queue.lock();
        queue.enabled = true;
        queue.stopping = false;
    }

    /// The next queued file, waiting for one; `None` once [`Committer::stop`] was called.
    pub(crate) fn next(&self) -> Option<(Arc<OpenFile>, u64)> {
        let mut queue = self.queue.lock();
        loop {
            if queue.stopping {
                return None;
            }
            if let Some(entry) = queue.files.pop_front() {
                queue.running += 1;
                return Some(entry);
            }
            self.changed.wait(&mut queue);
        }
    }

    /// The thread finished the file [`Committer::next`] gave it.
    pub(crate) fn done(&self, size: u64) {
        let mut queue = self.queue.lock();
        queue.running -= 1;
        queue.bytes = queue.bytes.saturating_sub(size);
        self.changed.notify_all();
    }

    /// Waits until every queued commit has landed (or the thread stopped), for at most
    /// `limit`; returns whether none is left.
    pub(crate) fn settle(&self, limit: Option<std::time::Duration>) -> bool {
        let deadline = limit.map(|l| std::time::Instant::now() + l);
        let mut queue = self.queue.lock();
        while queue.enabled && !queue.stopping && (!queue.files.is_empty() || queue.running > 0) {
            match deadline {
                Some(deadline) => {
                    if self.changed.wait_until(&mut queue, deadline).timed_out() {
                        return queue.files.is_empty() && queue.running == 0;
                    }
                }
                None => self.changed.wait(&mut queue),
            }
        }
        true
    }

    /// Stops the thread after its current commit; later closes commit themselves. Files still
    /// queued keep their staging and records (the caller commits them: see `Vfs::commit_all`).
    pub(crate) fn stop(&self) {
        let mut queue = self.queue.lock();
        queue.stopping = true;
        queue.enabled = false;
        self.changed.notify_all();
    }

    /// Number of files queued or being committed, and their bytes.
    pub(crate) fn backlog(&self) -> (usize, u64) {
        let queue = self.queue.lock();
        (queue.files.len() + queue.running, queue.bytes)
    }
}

/// What a commit record says: the staged bytes of `ino` to commit with these attributes, in
/// place of the content `base` the staging copy started from (if the inode's content is no
/// longer `base`, something else committed over it since, and the record is stale).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// The write session the staged bytes were written in (the key stays `boot`: records of
    /// builds before sessions hold the boot id alone).
    pub boot: String,
    pub ino: u64,
    pub base: Option<i64>,
    pub size: u64,
    pub mtime: i64,
    pub ctime: i64,
}

/// Where the record of a staging file goes.
pub(crate) fn record_path(staging: &Path) -> PathBuf {
    let mut name = staging.as_os_str().to_owned();
    name.push(".");
    name.push(RECORD_SUFFIX);
    PathBuf::from(name)
}

/// The staging file a record names, if `path` is a record.
pub(crate) fn staging_of_record(path: &Path) -> Option<PathBuf> {
    let name = path.to_str()?;
    let staging = name.strip_suffix(RECORD_SUFFIX)?.strip_suffix('.')?;
    Some(PathBuf::from(staging))
}

impl Record {
    fn encode(&self) -> String {
        format!(
            "{RECORD_MAGIC}\nboot {}\nino {}\nbase {}\nsize {}\nmtime {}\nctime {}\n",
            self.boot,
            self.ino,
            self.base.map_or("none".to_string(), |b| b.to_string()),
            self.size,
            self.mtime,
            self.ctime
        )
    }

    /// Parses a record; `None` for anything not written whole by [`Record::write`].
    pub(crate) fn parse(text: &str) -> Option<Record> {
        let mut lines = text.lines();
        if lines.next()? != RECORD_MAGIC {
            return None;
        }
        let mut field = |key: &str| -> Option<String> {
            let line = lines.next()?;
            let (k, v) = line.split_once(' ')?;
            (k == key).then(|| v.to_string())
        };
        let record = Record {
            boot: field("boot")?,
            ino: field("ino")?.parse().ok()?,
            base: match field("base")?.as_str() {
                "none" => None,
                n => Some(n.parse().ok()?),
            },
            size: field("size")?.parse().ok()?,
            mtime: field("mtime")?.parse().ok()?,
            ctime: field("ctime")?.parse().ok()?,
        };
        // The last line ends the record: a torn write lacks it.
        text.ends_with('\n').then_some(record)
    }

    /// Writes the record for `staging` whole or not at all (rename over a temporary file).
    pub(crate) fn write(&self, staging: &Path) -> std::io::Result<()> {
        let path = record_path(staging);
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, self.encode())?;
        std::fs::rename(&tmp, &path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_refuse_torn_text() {
        let record = Record {
            boot: "b0e1".into(),
            ino: 42,
            base: Some(7),
            size: 1 << 30,
            mtime: -5,
            ctime: 1_700_000_000_000_000_000,
        };
        let text = record.encode();
        assert_eq!(Record::parse(&text), Some(record.clone()));
        for cut in 0..text.len() - 1 {
            assert_eq!(Record::parse(&text[..cut]), None, "cut at {cut}");
        }
        assert_eq!(Record::parse(&text.replace("ino 42", "ino x")), None);
        let fresh = Record {
            base: None,
            ..record
        };
        assert_eq!(Record::parse(&fresh.encode()), Some(fresh));
        assert_eq!(Record::parse("something else\n"), None);
    }

    #[test]
    fn record_paths_name_their_staging_file() {
        let staging = Path::new("/s/staging/12-345");
        let record = record_path(staging);
        assert_eq!(record, Path::new("/s/staging/12-345.commit"));
        assert_eq!(staging_of_record(&record).as_deref(), Some(staging));
        assert_eq!(staging_of_record(staging), None);
    }

    #[test]
    fn room_is_bounded_by_bytes_files_and_disk() {
        let committer = Committer::default();
        assert!(!committer.has_room(1, || Some(u64::MAX)), "disabled");
        committer.enable();
        assert!(committer.has_room(1 << 20, || Some(u64::MAX)));
        assert!(!committer.has_room(1 << 20, || Some(FREE_SPACE_MARGIN)));
        assert!(!committer.has_room(1 << 20, || None));
        assert!(!committer.has_room(MAX_QUEUED_BYTES + 1, || Some(u64::MAX)));
        for _ in 0..MAX_QUEUED_FILES {
            committer.push(Arc::new(OpenFile::new(1)), 1);
        }
        assert!(!committer.has_room(1, || Some(u64::MAX)), "queue full");
        assert_eq!(
            committer.backlog(),
            (MAX_QUEUED_FILES, MAX_QUEUED_FILES as u64)
        );
        let (_, size) = committer.next().unwrap();
        committer.done(size);
        assert!(committer.has_room(1, || Some(u64::MAX)));
        committer.stop();
        assert!(committer.next().is_none());
        assert!(!committer.has_room(1, || Some(u64::MAX)));
    }
}
