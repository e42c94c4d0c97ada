//! What the kernel holds: how many lookups of each inode it has not forgotten yet, and the
//! unlinked inodes kept for it until it does.
//!
//! A path the kernel has looked up stays usable to it after the name is gone: an `open` that
//! resolved a name just before a rename replaced it opens the inode it found, as on a disk
//! file system. Deleting an unlinked inode at its last close alone answered such an open with
//! ESTALE; the kernel retries once, so a file replaced twice in a row failed the open. An
//! unlinked inode is now deleted when it is closed *and* forgotten (FORGET brings its lookup
//! count to zero), whichever comes last. A daemon that dies meanwhile leaves it unlinked in the
//! catalog, and the next start releases it (as for an unlinked file left open).

use std::collections::{HashMap, HashSet};

use parking_lot::Mutex;

#[derive(Default)]
pub(crate) struct KernelRefs {
    inner: Mutex<Refs>,
}

#[derive(Default)]
struct Refs {
    /// Lookups of each inode the kernel was told of (entry replies) and has not forgotten.
    lookups: HashMap<u64, u64>,
    /// Unlinked, closed inodes kept until the kernel forgets them.
    kept: HashSet<u64>,
}

impl KernelRefs {
    /// The kernel was given an entry for `ino` (lookup, create, mkdir, mknod, symlink, link,
    /// or a readdirplus entry other than `.` and `..`): one lookup more.
    pub(crate) fn looked_up(&self, ino: u64) {
        *self.inner.lock().lookups.entry(ino).or_insert(0) += 1;
    }

    /// FORGET: the kernel drops `count` lookups of `ino`. Returns true when that was the last
    /// and the inode was kept for it: the caller deletes it now.
    pub(crate) fn forget(&self, ino: u64, count: u64) -> bool {
        let mut refs = self.inner.lock();
        let Some(left) = refs.lookups.get_mut(&ino) else {
            return false;
        };
        *left = left.saturating_sub(count);
        if *left > 0 {
            return false;
        }
        refs.lookups.remove(&ino);
        refs.kept.remove(&ino)
    }

    /// Whether the kernel still holds `ino`; if it does and `unlinked`, the inode is kept
    /// until the kernel forgets it (see [`KernelRefs::forget`]).
    pub(crate) fn keep_if_held(&self, ino: u64, unlinked: impl FnOnce() -> bool) -> bool {
        let mut refs = self.inner.lock();
        if !refs.lookups.contains_key(&ino) {
            refs.kept.remove(&ino);
            return false;
        }
        if unlinked() {
            refs.kept.insert(ino);
        }
        true
    }

    /// The inodes kept for the kernel, which forgets everything when the mount goes away.
    pub(crate) fn take_kept(&self) -> Vec<u64> {
        let mut refs = self.inner.lock();
        refs.lookups.clear();
        refs.kept.drain().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unlinked_inode_is_kept_until_its_last_lookup_is_forgotten() {
        let refs = KernelRefs::default();
        refs.looked_up(7);
        refs.looked_up(7);
        assert!(refs.keep_if_held(7, || true));
        assert!(!refs.forget(7, 1), "one lookup is still held");
        assert!(
            refs.forget(7, 1),
            "the last forget hands the kept inode back"
        );
        assert!(!refs.forget(7, 1), "nothing is left to hand back twice");
        assert!(!refs.keep_if_held(7, || true), "forgotten: delete at once");
    }

    #[test]
    fn a_linked_inode_is_never_handed_back() {
        let refs = KernelRefs::default();
        refs.looked_up(3);
        assert!(refs.keep_if_held(3, || false));
        assert!(!refs.forget(3, 1));
        assert!(!refs.forget(99, 1), "an inode never looked up");
    }

    #[test]
    fn unmount_hands_back_every_kept_inode() {
        let refs = KernelRefs::default();
        for ino in [1, 2, 3] {
            refs.looked_up(ino);
        }
        assert!(refs.keep_if_held(1, || true));
        assert!(refs.keep_if_held(2, || true));
        let mut kept = refs.take_kept();
        kept.sort();
        assert_eq!(kept, vec![1, 2]);
        assert!(!refs.keep_if_held(3, || true));
    }
}
