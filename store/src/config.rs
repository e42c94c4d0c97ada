//! Every tunable size of the store in one place, so tests and benchmarks can shrink them.

/// Content-defined chunking parameters (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkerConfig {
    pub min_size: usize,
    pub avg_size: usize,
    pub max_size: usize,
    /// Force cut points at safetensors/GGUF header end and tensor starts.
    pub tensor_aware: bool,
}

impl ChunkerConfig {
    /// A config with the usual min = avg/4, max = avg*4 ratios around `avg_size`.
    pub fn with_avg(avg_size: usize) -> Self {
        ChunkerConfig {
            min_size: (avg_size / 4).max(fastcdc::v2020::MINIMUM_MIN),
            avg_size,
            max_size: (avg_size * 4).min(fastcdc::v2020::MAXIMUM_MAX),
            tensor_aware: true,
        }
    }
}

impl Default for ChunkerConfig {
    fn default() -> Self {
        ChunkerConfig::with_avg(DEFAULT_AVG_CHUNK)
    }
}

/// Default average chunk size; chosen from the chunk-size sweep in docs/PERFORMANCE.md.
pub const DEFAULT_AVG_CHUNK: usize = 1 << 20;

/// A pack file is closed and a new one started once it grows past this size.
pub const DEFAULT_PACK_TARGET: u64 = 1 << 30;

/// Files at least this big keep their new chunks in a raw pack of their own (pack.rs): their
/// chunks stay contiguous, and a file whose chunks were all new can be read by the kernel
/// straight from that pack (FUSE passthrough). Smaller files share record packs.
pub const DEFAULT_RAW_PACK_MIN_FILE: u64 = 16 << 20;

/// Verified chunk bytes kept in the daemon for reads in progress (bounds its memory).
pub const CHUNK_CACHE_BYTES: usize = 64 << 20;

/// Granularity of partial verification: a random read reads and checks whole blocks of this
/// size (a power of two, at least BLAKE3's 1 KiB chunk) rather than whole chunks.
pub const VERIFY_BLOCK: u64 = 128 << 10;
