//! Header parsers for model weight formats, used to force chunk boundaries at tensor starts.
//!
//! Identical tensors then always begin a fresh chunk, so they dedup no matter where they sit in
//! a file (DESIGN.md §2). The parsers are total: any input, however hostile, yields `Ok` or
//! `Err` without panicking and without allocating sizes that the input merely claims. A
//! malformed header is never fatal for the caller: [`forced_cuts`] just returns no cuts.

pub mod gguf;
pub mod safetensors;
#[doc(hidden)]
pub mod testgen;

/// Why a header could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("truncated: needed {needed} bytes at offset {offset}, but the file has {file_len}")]
    Truncated {
        offset: u64,
        needed: u64,
        file_len: u64,
    },
    #[error("header length {len} is too large (file has {file_len} bytes, limit is {limit})")]
    HeaderTooLarge { len: u64, file_len: u64, limit: u64 },
    #[error("header is not valid JSON: {0}")]
    BadJson(String),
    #[error("tensor {name:?} has bad data offsets: {reason}")]
    BadOffsets { name: String, reason: String },
    #[error("bad magic number")]
    BadMagic,
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u32),
    #[error("{what} count {count} cannot fit in the remaining {remaining} bytes")]
    CountTooLarge {
        what: &'static str,
        count: u64,
        remaining: u64,
    },
    #[error("unknown GGUF value type {0}")]
    UnknownValueType(u32),
    #[error("GGUF arrays nested deeper than {0} levels")]
    NestingTooDeep(usize),
    #[error("tensor {name:?} has {n_dims} dimensions (at most {max} allowed)")]
    TooManyDims { name: String, n_dims: u32, max: u32 },
    #[error("alignment {0} is not a nonzero power of two")]
    BadAlignment(u64),
    #[error("duplicate {what} {name:?}")]
    Duplicate { what: &'static str, name: String },
    #[error("{0}")]
    Invalid(String),
}

/// The weight formats we know how to cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileFormat {
    Safetensors,
    Gguf,
    Other,
}

/// Classify a whole file. GGUF is recognised by its magic alone; safetensors has no magic, so
/// it is recognised only by a header that parses and validates completely.
pub fn detect(data: &[u8]) -> FileFormat {
    if gguf::has_magic(data) {
        FileFormat::Gguf
    } else if safetensors::parse(data).is_ok() {
        FileFormat::Safetensors
    } else {
        FileFormat::Other
    }
}

/// Offsets where a chunk boundary should be forced: the header end / data start and every
/// tensor start (and, for safetensors, every tensor end, which only differs from the next start
/// when there are gaps). Sorted, deduplicated, and strictly inside `(0, data.len())`.
/// Unrecognised or malformed files yield no cuts.
pub fn forced_cuts(data: &[u8]) -> Vec<u64> {
    let mut cuts = Vec::new();
    if gguf::has_magic(data) {
        match gguf::parse(data) {
            Ok(h) => {
                cuts.reserve(2 * h.tensors.len() + 1);
                cuts.push(h.data_start);
                for t in &h.tensors {
                    cuts.push(t.start);
                    // Alignment padding follows each tensor; cutting at the data's end keeps the
                    // padding out of the chunk, so the tensor dedups against safetensors copies.
                    if let Some(end) = t.byte_len().and_then(|n| t.start.checked_add(n)) {
                        cuts.push(end);
                    }
                }
            }
            Err(e) => tracing::debug!("GGUF magic but unparsable header, no forced cuts: {e}"),
        }
    } else {
        match safetensors::parse(data) {
            Ok(h) => {
                cuts.reserve(2 * h.tensors.len() + 1);
                cuts.push(h.header_end);
                for t in &h.tensors {
                    cuts.push(t.start);
                    cuts.push(t.end);
                }
            }
            // Most files are not safetensors at all, so this is the common, boring case.
            Err(e) => tracing::debug!("not a safetensors file, no forced cuts: {e}"),
        }
    }
    let len = data.len() as u64;
    cuts.retain(|&c| c > 0 && c < len);
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

#[cfg(test)]
mod tests {
    use super::gguf::{GgufValue, GGML_TYPE_F16, GGML_TYPE_F32};
    use super::testgen::{make_gguf, make_safetensors};
    use super::*;
    use proptest::prelude::*;

    fn sample_safetensors() -> Vec<u8> {
        make_safetensors(&[
            ("a", "F16", vec![3, 5], vec![1; 30]),
            ("b", "U8", vec![7], vec![2; 7]),
            ("c", "F32", vec![1], vec![3; 4]),
        ])
    }

    fn sample_gguf() -> Vec<u8> {
        make_gguf(
            &[
                ("general.architecture", GgufValue::String("llama".into())),
                ("general.alignment", GgufValue::U32(64)),
                (
                    "tokenizer.ggml.tokens",
                    GgufValue::Array(vec![
                        GgufValue::String("a".into()),
                        GgufValue::String("bc".into()),
                    ]),
                ),
            ],
            &[
                ("t0", GGML_TYPE_F32, vec![3], vec![1; 12]),
                ("t1", GGML_TYPE_F16, vec![5, 1], vec![2; 10]),
            ],
        )
    }

    fn check_cuts(data: &[u8], cuts: &[u64]) {
        assert!(
            cuts.windows(2).all(|w| w[0] < w[1]),
            "not sorted/dedup: {cuts:?}"
        );
        assert!(
            cuts.iter().all(|&c| c > 0 && c < data.len() as u64),
            "out of range: {cuts:?} for len {}",
            data.len()
        );
    }

    #[test]
    fn detect_formats() {
        assert_eq!(detect(&sample_safetensors()), FileFormat::Safetensors);
        assert_eq!(detect(&sample_gguf()), FileFormat::Gguf);
        assert_eq!(detect(b""), FileFormat::Other);
        assert_eq!(detect(b"hello world, this is text"), FileFormat::Other);
        // GGUF is detected by magic even when the rest is garbage...
        assert_eq!(detect(b"GGUF\xff\xff"), FileFormat::Gguf);
        // ...but then yields no cuts.
        assert!(forced_cuts(b"GGUF\xff\xff").is_empty());
    }

    #[test]
    fn safetensors_cuts_are_header_end_and_tensor_starts() {
        let f = sample_safetensors();
        let data_len = 30 + 7 + 4;
        let header_end = (f.len() - data_len) as u64;
        let cuts = forced_cuts(&f);
        assert_eq!(cuts, vec![header_end, header_end + 30, header_end + 37]);
        check_cuts(&f, &cuts);
    }

    #[test]
    fn gguf_cuts_are_data_start_tensor_starts_and_ends() {
        let f = sample_gguf();
        // Each tensor is padded to 64 bytes, and the data section is the file's tail; the cut at
        // each tensor's end keeps the padding out of the tensor's last chunk.
        let data_start = (f.len() - 128) as u64;
        assert_eq!(
            forced_cuts(&f),
            vec![
                data_start,
                data_start + 12,
                data_start + 64,
                data_start + 64 + 10
            ]
        );
        assert_eq!(&f[data_start as usize..][..12], &[1; 12]);
        assert_eq!(&f[data_start as usize + 64..][..10], &[2; 10]);
    }

    #[test]
    fn cuts_of_unknown_data_are_empty() {
        assert!(forced_cuts(&[]).is_empty());
        assert!(forced_cuts(&[0u8; 100]).is_empty());
        assert!(forced_cuts(&[0xffu8; 100]).is_empty());
    }

    #[test]
    fn header_only_safetensors_has_no_out_of_range_cut() {
        // No tensors: the only candidate cut is the header end, which is the file end.
        let f = make_safetensors(&[]);
        assert_eq!(detect(&f), FileFormat::Safetensors);
        assert!(forced_cuts(&f).is_empty());
    }

    /// Apply `(position, byte)` overwrites and an optional truncation to a valid file.
    fn mutate(mut f: Vec<u8>, edits: &[(usize, u8)], truncate: Option<usize>) -> Vec<u8> {
        if !f.is_empty() {
            for &(i, b) in edits {
                let n = f.len();
                f[i % n] = b;
            }
        }
        if let Some(t) = truncate {
            f.truncate(t % (f.len() + 1));
        }
        f
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let cuts = forced_cuts(&data);
            check_cuts(&data, &cuts);
            let _ = safetensors::parse(&data);
            let _ = gguf::parse(&data);
            let _ = detect(&data);
        }

        #[test]
        fn random_bytes_behind_magic_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut f = b"GGUF\x03\0\0\0".to_vec();
            f.extend_from_slice(&data);
            check_cuts(&f, &forced_cuts(&f));
        }

        #[test]
        fn mutated_safetensors_never_panic(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            truncate in proptest::option::of(any::<usize>()),
        ) {
            // Only mutate the header: mutations in the tensor bytes are uninteresting.
            let f = sample_safetensors();
            let header_end = f.len() - 41;
            let edits: Vec<_> = edits.into_iter().map(|(i, b)| (i % header_end, b)).collect();
            let f = mutate(f, &edits, truncate);
            check_cuts(&f, &forced_cuts(&f));
        }

        #[test]
        fn mutated_gguf_never_panic(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            truncate in proptest::option::of(any::<usize>()),
        ) {
            let f = sample_gguf();
            let header_end = f.len() - 128;
            let edits: Vec<_> = edits.into_iter().map(|(i, b)| (i % header_end, b)).collect();
            let f = mutate(f, &edits, truncate);
            check_cuts(&f, &forced_cuts(&f));
        }
    }
}
