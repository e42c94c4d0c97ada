//! Verifying part of a chunk without reading all of it.
//!
//! A chunk's id is its BLAKE3 hash, and BLAKE3 is a Merkle tree over 1 KiB pieces. Every
//! aligned [`VERIFY_BLOCK`]-byte block of a chunk is a whole subtree of that tree, so the
//! catalog keeps each block's chaining value ("CV", 32 bytes) beside the chunk. A read that
//! needs a few KiB of a 1 MiB chunk then reads and hashes only the blocks it touches and
//! compares them with their CVs; the CV list itself is proven by folding it back into the
//! chunk id, so a damaged catalog row is caught as surely as a damaged pack.
//!
//! Computing the CVs costs nothing extra: the chunk id is folded from them.

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};

use crate::config::VERIFY_BLOCK;
use crate::ChunkHash;

/// Bytes of one chaining value in a stored CV list.
pub const CV_LEN: usize = 32;

/// The BLAKE3 hash of a chunk and, when it spans more than one block, the CVs of its blocks
/// (concatenated, [`CV_LEN`] bytes each; empty for a chunk of one block or less).
pub fn hash_chunk(data: &[u8]) -> (ChunkHash, Vec<u8>) {
    if data.len() as u64 <= VERIFY_BLOCK {
        return (*blake3::hash(data).as_bytes(), Vec::new());
    }
    let mut cvs = Vec::with_capacity(data.len().div_ceil(VERIFY_BLOCK as usize) * CV_LEN);
    for (index, block) in data.chunks(VERIFY_BLOCK as usize).enumerate() {
        cvs.extend_from_slice(&block_cv(block, index));
    }
    let root = root_from_cvs(&cvs, data.len() as u64).unwrap_or_else(|| blake3::hash(data));
    (*root.as_bytes(), cvs)
}

/// The CV of block `index` of a chunk, given its bytes.
pub fn block_cv(block: &[u8], index: usize) -> ChainingValue {
    blake3::Hasher::new()
        .set_input_offset(index as u64 * VERIFY_BLOCK)
        .update(block)
        .finalize_non_root()
}

/// The chunk id a CV list folds into, for a chunk of `len` bytes; `None` when the list has the
/// wrong length for `len` (or `len` fits in one block, which has no CV list).
pub fn root_from_cvs(cvs: &[u8], len: u64) -> Option<blake3::Hash> {
    if len <= VERIFY_BLOCK || cvs.len() as u64 != len.div_ceil(VERIFY_BLOCK) * CV_LEN as u64 {
        return None;
    }
    let left = left_subtree_len(len);
    let left_cv = subtree_cv(cvs, 0, left);
    let right_cv = subtree_cv(cvs, left, len - left);
    Some(merge_subtrees_root(&left_cv, &right_cv, Mode::Hash))
}

/// The CV of the subtree covering `len` bytes from `start` (a multiple of the block size, as
/// every split of a BLAKE3 tree above block size is).
fn subtree_cv(cvs: &[u8], start: u64, len: u64) -> ChainingValue {
    if len <= VERIFY_BLOCK {
        let at = (start / VERIFY_BLOCK) as usize * CV_LEN;
        let mut cv = [0u8; CV_LEN];
        cv.copy_from_slice(&cvs[at..at + CV_LEN]);
        return cv;
    }
    let left = left_subtree_len(len);
    merge_subtrees_non_root(
        &subtree_cv(cvs, start, left),
        &subtree_cv(cvs, start + left, len - left),
        Mode::Hash,
    )
}

/// Whether a chunk's stored CV list belongs to it.
pub fn cvs_match(cvs: &[u8], len: u64, hash: &ChunkHash) -> bool {
    root_from_cvs(cvs, len).is_some_and(|root| root.as_bytes() == hash)
}

/// Whether `block` (block `index` of its chunk) has the CV stored for it.
pub fn block_matches(cvs: &[u8], index: usize, block: &[u8]) -> bool {
    let at = index * CV_LEN;
    cvs.get(at..at + CV_LEN)
        .is_some_and(|stored| stored == block_cv(block, index))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
            .collect()
    }

    #[test]
    fn folded_cvs_give_the_plain_blake3_hash() {
        let b = VERIFY_BLOCK as usize;
        for len in [
            0,
            1,
            1024,
            b - 1,
            b,
            b + 1,
            b + 1024,
            2 * b,
            3 * b + 7,
            (1 << 20) - 1,
            1 << 20,
            (1 << 20) + 1,
            (4 << 20) + 12_345,
        ] {
            let data = bytes(len, len as u8);
            let (hash, cvs) = hash_chunk(&data);
            assert_eq!(&hash, blake3::hash(&data).as_bytes(), "len {len}");
            assert_eq!(cvs.is_empty(), len <= b, "len {len}");
            if !cvs.is_empty() {
                assert!(cvs_match(&cvs, len as u64, &hash));
            }
        }
    }

    #[test]
    fn each_block_checks_alone_and_damage_is_caught() {
        let b = VERIFY_BLOCK as usize;
        let data = bytes(5 * b + 300, 9);
        let (hash, mut cvs) = hash_chunk(&data);
        for (index, block) in data.chunks(b).enumerate() {
            assert!(block_matches(&cvs, index, block));
            let mut damaged = block.to_vec();
            damaged[block.len() / 2] ^= 1;
            assert!(!block_matches(&cvs, index, &damaged));
        }
        // A block checked against another block's CV fails (offsets are bound into the CV).
        assert!(!block_matches(&cvs, 1, &data[..b]));
        assert!(!block_matches(&cvs, 99, &data[..b]));
        // A damaged or truncated CV list no longer folds into the chunk id.
        cvs[40] ^= 1;
        assert!(!cvs_match(&cvs, data.len() as u64, &hash));
        assert!(!cvs_match(&cvs[..CV_LEN * 2], data.len() as u64, &hash));
    }
}
