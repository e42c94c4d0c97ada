//! Which pack pages the daemon read for its readers have been served, so that each is dropped
//! from the page cache once, when nothing will ask for it again.
//!
//! The kernel caches what a reader of the mount got as that file's pages; the pack pages the
//! daemon read them from would hold the same bytes a second time. But a pack page cannot be
//! dropped as soon as some of its bytes are served: the daemon reads whole chunks or 128 KiB
//! blocks to check them, and readahead brings in the bytes after them, which the next requests
//! (often in flight on other workers at the same moment) ask for; dropping those read the same
//! bytes from the disk twice (docs/PERFORMANCE.md, eleventh round). And the kernel drops only
//! whole folios, which for a pack read sequentially are up to 2 MiB: a range covering part of
//! one drops nothing. So served bytes are counted per 2 MiB region (a bit per 4 KiB), and a
//! region is dropped once every byte in it has been served, and again whenever its pages are
//! read back in (a chunk read whole to check the part of it a request wants). A whole page
//! served a second time means its reader no longer holds it (the kernel dropped the file's
//! pages, or another file shares the chunk): the region's count starts over. Regions never
//! served in full (the edges of a partial read, other files' chunks beside a small file's) are
//! dropped whole when too many are remembered, oldest first.

use std::collections::HashMap;

use parking_lot::Mutex;

/// Bytes per region: the largest folio the page cache makes on x86-64 and arm64 with 4 KiB
/// pages, and naturally aligned, so a region holds whole folios.
const REGION: u64 = 2 << 20;
/// Bytes per bit of a region's map.
const PAGE: u64 = 4096;
const PAGES_PER_REGION: usize = (REGION / PAGE) as usize;
const WORDS: usize = PAGES_PER_REGION / 64;
/// Regions remembered (8 GiB of packs, ~80 bytes each); past this the one served longest ago
/// is forgotten, and dropped whole if it was served only in part.
const MAX_REGIONS: usize = 4096;

/// A byte range of a pack whose pages should be dropped: (offset, length).
pub(crate) type DropRange = (u64, u64);

#[derive(Default)]
pub(crate) struct ServedPages {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// (pack, region index) -> pages served so far, and when it was last served.
    pending: HashMap<(u64, u64), Pending>,
    clock: u64,
}

struct Pending {
    served: [u64; WORDS],
    last_served: u64,
    /// Every byte was served and the region dropped. Kept (while there is room) because a
    /// chunk read whole to check a part of it reads the region's pages back in, and those are
    /// then dropped again at once (see [`ServedPages::read_back`]).
    complete: bool,
}

impl ServedPages {
    /// Records that `len` bytes from `offset` of `pack` (`pack_len` bytes long) were served,
    /// and returns the ranges whose pages can now be dropped: regions whose every byte has
    /// been served, this time or before (their pages may have been read back since).
    pub(crate) fn serve(&self, pack: u64, offset: u64, len: u64, pack_len: u64) -> Vec<DropRange> {
        let end = offset.saturating_add(len).min(pack_len);
        let mut drops = Vec::new();
        if offset >= end {
            return drops;
        }
        let mut state = self.state.lock();
        state.clock += 1;
        let now = state.clock;
        for region in offset / REGION..=(end - 1) / REGION {
            let start = region * REGION;
            let region_end = (start + REGION).min(pack_len);
            let first = ((offset.max(start) - start) / PAGE) as usize;
            let last = (end.min(region_end) - start).div_ceil(PAGE) as usize;
            let pending = state.pending.entry((pack, region)).or_insert(Pending {
                served: [0; WORDS],
                last_served: now,
                complete: false,
            });
            pending.last_served = now;
            // A whole page served before is being asked for again: whoever got it then (the
            // kernel's cache of a file, or another file sharing the chunk) no longer holds
            // it. The earlier serving says nothing about what this reader still needs, so
            // the region starts over; counting on it dropped pages a re-read's neighbouring
            // requests were about to take (a cold re-read of a file read before read 1.5x
            // its size from the disk). Pages only partly inside the piece are shared with
            // the neighbouring request and prove nothing.
            let whole_first = (offset.max(start) - start).div_ceil(PAGE) as usize;
            let whole_last = if end >= region_end {
                last
            } else {
                ((end - start) / PAGE) as usize
            };
            if (whole_first..whole_last)
                .any(|page| pending.served[page / 64] & (1 << (page % 64)) != 0)
            {
                pending.served = [0; WORDS];
                pending.complete = false;
            }
            for page in first..last {
                pending.served[page / 64] |= 1 << (page % 64);
            }
            let pages = (region_end - start).div_ceil(PAGE) as usize;
            if pending.complete || all_set(&pending.served, pages) {
                pending.complete = true;
                drops.push((start, region_end - start));
            }
        }
        state.evict(&mut drops);
        drops
    }

    /// The ranges to drop after `len` bytes from `offset` of `pack` were read from the disk:
    /// the regions among them whose every byte has been served already.
    pub(crate) fn read_back(&self, pack: u64, offset: u64, len: u64) -> Vec<DropRange> {
        if len == 0 {
            return Vec::new();
        }
        let state = self.state.lock();
        let end = offset.saturating_add(len);
        (offset / REGION..=(end - 1) / REGION)
            .filter(|region| {
                state
                    .pending
                    .get(&(pack, *region))
                    .is_some_and(|pending| pending.complete)
            })
            .map(|region| (region * REGION, REGION))
            .collect()
    }

    /// Forgets a pack (deleted or rewritten by gc, cut back by recovery).
    pub(crate) fn forget(&self, pack: u64) {
        self.state.lock().pending.retain(|(p, _), _| *p != pack);
    }
}

impl State {
    /// Past the limit, forgets the regions served longest ago; one never served in full is
    /// dropped whole (its unserved bytes are read again if they are asked for).
    fn evict(&mut self, drops: &mut Vec<DropRange>) {
        while self.pending.len() > MAX_REGIONS {
            let Some((key, complete)) = self
                .pending
                .iter()
                .min_by_key(|(_, pending)| pending.last_served)
                .map(|(key, pending)| (*key, pending.complete))
            else {
                break;
            };
            self.pending.remove(&key);
            if !complete {
                drops.push((key.1 * REGION, REGION));
            }
        }
    }
}

/// Whether the first `pages` bits are set.
fn all_set(served: &[u64; WORDS], pages: usize) -> bool {
    let full_words = pages / 64;
    if served[..full_words].iter().any(|word| *word != u64::MAX) {
        return false;
    }
    let rest = pages % 64;
    rest == 0 || served[full_words] & ((1u64 << rest) - 1) == (1u64 << rest) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_region_is_dropped_once_every_byte_of_it_was_served_in_any_order() {
        let served = ServedPages::default();
        let pack_len = 64 * MIB;
        // Region 1 (2..4 MiB) served in three pieces, the last one in the middle; a page only
        // partly served counts (its other bytes come with the neighbouring request).
        assert!(served
            .serve(7, 2 * MIB, MIB - 8192 - 100, pack_len)
            .is_empty());
        assert!(served.serve(7, 3 * MIB + 50, MIB - 50, pack_len).is_empty());
        assert_eq!(
            served.serve(7, 3 * MIB - 8192, 8192, pack_len),
            vec![(2 * MIB, 2 * MIB)]
        );
        // Another pack's bytes at the same offsets are its own.
        assert!(served.serve(8, 2 * MIB, MIB, pack_len).is_empty());
    }

    #[test]
    fn a_piece_spanning_regions_completes_the_ones_it_covers() {
        let served = ServedPages::default();
        let drops = served.serve(1, MIB, 4 * MIB, 64 * MIB);
        // 1..5 MiB: region 1 (2..4) whole; regions 0 and 2 only in part.
        assert_eq!(drops, vec![(2 * MIB, 2 * MIB)]);
        assert_eq!(served.serve(1, 0, MIB, 64 * MIB), vec![(0, 2 * MIB)]);
        assert_eq!(
            served.serve(1, 5 * MIB, 2 * MIB, 64 * MIB),
            vec![(4 * MIB, 2 * MIB)]
        );
    }

    #[test]
    fn the_last_region_of_a_pack_ends_with_the_pack() {
        let served = ServedPages::default();
        let pack_len = 4 * MIB + 5000; // the last region is 5000 bytes: two pages
        assert!(served.serve(3, 4 * MIB, 4096, pack_len).is_empty());
        assert_eq!(
            served.serve(3, 4 * MIB + 4096, 1000, pack_len),
            vec![(4 * MIB, 5000)]
        );
        // Bytes past the end of the pack are no bytes.
        assert!(served.serve(3, pack_len, 100, pack_len).is_empty());
    }

    #[test]
    fn regions_never_served_in_full_are_dropped_oldest_first_past_the_limit() {
        let served = ServedPages::default();
        let pack_len = u64::MAX / 2;
        for region in 0..MAX_REGIONS as u64 {
            assert!(served.serve(1, region * REGION, 4096, pack_len).is_empty());
        }
        // Region 0 is served again: region 1 is now the oldest.
        assert!(served.serve(1, 8192, 4096, pack_len).is_empty());
        let next = MAX_REGIONS as u64 * REGION;
        assert_eq!(
            served.serve(1, next, 4096, pack_len),
            vec![(REGION, REGION)]
        );
        served.forget(1);
        assert!(served.state.lock().pending.is_empty());
    }

    #[test]
    fn a_served_region_read_back_in_is_dropped_again() {
        let served = ServedPages::default();
        let pack_len = 64 * MIB;
        assert_eq!(served.serve(4, 0, 2 * MIB, pack_len), vec![(0, 2 * MIB)]);
        // A chunk over 1.5..3 MiB read whole (to check its part in region 1): its pages in
        // region 0, served already, go again; region 1 waits for its bytes to be served.
        assert_eq!(
            served.read_back(4, 3 * MIB / 2, 3 * MIB / 2),
            vec![(0, 2 * MIB)]
        );
        assert!(served.read_back(4, 2 * MIB, MIB).is_empty());
        // Serving a byte of a complete region again drops it again too.
        assert_eq!(served.serve(4, 100, 1, pack_len), vec![(0, 2 * MIB)]);
        // A complete region forgotten past the limit is not dropped again (nothing to drop).
        for region in 1..=MAX_REGIONS as u64 {
            let drops = served.serve(5, region * REGION, 4096, u64::MAX / 2);
            assert!(drops.iter().all(|d| *d != (0, 2 * MIB)), "{drops:?}");
        }
        assert!(served.read_back(4, 0, MIB).is_empty());
    }

    #[test]
    fn a_region_served_again_in_whole_pages_starts_over() {
        let served = ServedPages::default();
        let pack_len = 64 * MIB;
        assert_eq!(served.serve(6, 0, 2 * MIB, pack_len), vec![(0, 2 * MIB)]);
        // The reader's cache lost the file; it reads it again out of order. Its first
        // requests must not drop the pages the next ones read around them.
        assert!(served.serve(6, MIB, 64 << 10, pack_len).is_empty());
        assert!(served.serve(6, 0, MIB, pack_len).is_empty());
        assert!(served.read_back(6, 0, 2 * MIB).is_empty());
        assert_eq!(
            served.serve(6, MIB + (64 << 10), MIB - (64 << 10), pack_len),
            vec![(0, 2 * MIB)]
        );
        // Two pieces meeting inside a page both serve it: that starts nothing over.
        assert!(served.serve(6, 2 * MIB, MIB + 100, pack_len).is_empty());
        assert_eq!(
            served.serve(6, 3 * MIB + 100, MIB - 100, pack_len),
            vec![(2 * MIB, 2 * MIB)]
        );
        // A partly served region is not completed by a second pass's other half.
        assert!(served.serve(6, 4 * MIB, MIB, pack_len).is_empty());
        assert!(served.serve(6, 4 * MIB, 4096, pack_len).is_empty());
        assert!(served.serve(6, 5 * MIB, MIB, pack_len).is_empty());
        assert_eq!(
            served.serve(6, 4 * MIB + 4096, MIB - 4096, pack_len),
            vec![(4 * MIB, 2 * MIB)]
        );
    }

    #[test]
    fn serving_the_same_bytes_twice_does_not_complete_a_region() {
        let served = ServedPages::default();
        for _ in 0..4 {
            assert!(served.serve(2, 0, MIB, 64 * MIB).is_empty());
        }
        assert_eq!(served.serve(2, MIB, MIB, 64 * MIB), vec![(0, 2 * MIB)]);
    }
}
