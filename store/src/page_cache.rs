//! Writing big buffers through the page cache in pieces.
//!
//! A single write(2) of 1 MiB or more into an ext4 file (Linux 6.18, large folios) has the
//! kernel allocate page-cache folios as large as the write, 1 MiB and up. On a VM whose host
//! takes back free memory (virtio free page reporting, which reports free blocks of 2 MiB
//! and more), those allocations often land on memory the host has to fault back in: measured
//! (docs/PERFORMANCE.md, twelfth round) `dd bs=1M` of 1 GiB from tmpfs into ext4 took
//! 0.27 s or 0.9-1.8 s, run to run, where `bs=512K` took 0.28-0.33 s every time. So big
//! buffers go down in pieces of [`PAGE_CACHE_WRITE_PIECE`].

use std::fs::File;
use std::os::unix::fs::FileExt;

/// The largest single write into the page cache.
pub const PAGE_CACHE_WRITE_PIECE: usize = 512 << 10;

/// `file.write_all_at(data, offset)`, in pieces of at most [`PAGE_CACHE_WRITE_PIECE`].
pub fn write_all_at(file: &File, data: &[u8], offset: u64) -> std::io::Result<()> {
    let mut at = offset;
    for piece in data.chunks(PAGE_CACHE_WRITE_PIECE) {
        file.write_all_at(piece, at)?;
        at += piece.len() as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_every_byte_where_asked_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        let data: Vec<u8> = (0..3 * PAGE_CACHE_WRITE_PIECE + 12345)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        write_all_at(&file, &data, 100).unwrap();
        write_all_at(&file, &[], 5).unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back.len(), data.len() + 100);
        assert!(back[..100].iter().all(|b| *b == 0));
        assert_eq!(&back[100..], &data[..]);
    }
}
