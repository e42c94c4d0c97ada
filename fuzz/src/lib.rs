//! Shared pieces of the mlxfs fuzz targets.
//!
//! [`measure`] runs a closure under a counting global allocator and reports the peak of heap
//! bytes it kept live, so each target can assert (with [`check_heap`]) that a parser never
//! allocates what its input merely claims (a GGUF count of 2^40, a safetensors header length
//! of 2^63, ...): the peak must stay within a fixed slack plus a small multiple of the input.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn note_alloc(size: usize) {
    let live = LIVE.fetch_add(size, Relaxed) + size;
    PEAK.fetch_max(live, Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note_alloc(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note_alloc(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Relaxed);
            note_alloc(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the peak of heap bytes that were live during the call
/// beyond those live before it (the result's own allocations included).
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let r = f();
    (r, PEAK.load(Relaxed).saturating_sub(base))
}

/// Fixed heap slack any parse may use, whatever its input.
pub const HEAP_SLACK: usize = 16 << 20;
/// Heap bytes per input byte a parse may use on top of [`HEAP_SLACK`] (JSON values, maps).
pub const HEAP_PER_INPUT_BYTE: usize = 64;

/// Panics when `peak` heap bytes are more than parsing `input_len` bytes can justify.
pub fn check_heap(what: &str, peak: usize, input_len: usize) {
    let limit = HEAP_SLACK + HEAP_PER_INPUT_BYTE * input_len;
    assert!(
        peak <= limit,
        "{what}: peak heap {peak} bytes for a {input_len}-byte input (limit {limit})"
    );
}

/// The invariants of `store::formats::forced_cuts`: strictly increasing and strictly inside
/// `(0, len)`.
pub fn check_cuts(len: usize, cuts: &[u64]) {
    assert!(
        cuts.windows(2).all(|w| w[0] < w[1]),
        "cuts not strictly increasing: {cuts:?}"
    );
    assert!(
        cuts.iter().all(|&c| c > 0 && c < len as u64),
        "cut outside (0, {len}): {cuts:?}"
    );
}

/// What `forced_cuts` must return given the candidate cut points a parse produced.
pub fn expected_cuts(len: usize, candidates: impl IntoIterator<Item = u64>) -> Vec<u64> {
    let mut v: Vec<u64> = candidates
        .into_iter()
        .filter(|&c| c > 0 && c < len as u64)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}
