//! The read cache: verified chunk bytes, keyed by their BLAKE3 name, bounded in bytes.
//!
//! The mount serves reads from here rather than from mapped packs: the kernel already caches
//! the file's pages, and pack pages cached beside them would hold every byte twice. Chunks are
//! read from packs with pread, checked, kept here while they are being consumed, and their pack
//! pages dropped from the page cache.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::ChunkHash;

struct Entry {
    bytes: Arc<Vec<u8>>,
    last_use: u64,
}

pub struct ChunkCache {
    budget: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<ChunkHash, Entry>,
    bytes: usize,
    clock: u64,
}

impl ChunkCache {
    pub fn new(budget: usize) -> ChunkCache {
        ChunkCache {
            budget,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn get(&self, hash: &ChunkHash) -> Option<Arc<Vec<u8>>> {
        let mut inner = self.inner.lock();
        inner.clock += 1;
        let now = inner.clock;
        let entry = inner.entries.get_mut(hash)?;
        entry.last_use = now;
        Some(entry.bytes.clone())
    }

    pub fn contains(&self, hash: &ChunkHash) -> bool {
        self.inner.lock().entries.contains_key(hash)
    }

    pub fn insert(&self, hash: ChunkHash, bytes: Arc<Vec<u8>>) {
        if bytes.len() > self.budget {
            return;
        }
        let mut inner = self.inner.lock();
        inner.clock += 1;
        let now = inner.clock;
        inner.bytes += bytes.len();
        if let Some(old) = inner.entries.insert(
            hash,
            Entry {
                bytes,
                last_use: now,
            },
        ) {
            inner.bytes -= old.bytes.len();
        }
        while inner.bytes > self.budget {
            let Some(oldest) = inner
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_use)
                .map(|(h, _)| *h)
            else {
                break;
            };
            if let Some(evicted) = inner.entries.remove(&oldest) {
                inner.bytes -= evicted.bytes.len();
            }
        }
    }

    pub fn clear(&self) {
        let mut inner = self.inner.lock();
        inner.entries.clear();
        inner.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_within_budget() {
        let cache = ChunkCache::new(10);
        cache.insert([1; 32], Arc::new(vec![0; 4]));
        cache.insert([2; 32], Arc::new(vec![0; 4]));
        assert!(cache.get(&[1; 32]).is_some());
        cache.insert([3; 32], Arc::new(vec![0; 4]));
        assert!(
            cache.get(&[2; 32]).is_none(),
            "least recently used goes first"
        );
        assert!(cache.get(&[1; 32]).is_some());
        assert!(cache.get(&[3; 32]).is_some());
        cache.insert([4; 32], Arc::new(vec![0; 11]));
        assert!(
            cache.get(&[4; 32]).is_none(),
            "larger than the budget is not kept"
        );
    }
}
