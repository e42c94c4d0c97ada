//! The safetensors header parser (`store::formats::safetensors::parse`) and what the chunker
//! does with it (`forced_cuts`, `detect`) on arbitrary file bytes.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use mlxfs_fuzz::{check_cuts, check_heap, expected_cuts, measure};
use store::formats::{self, gguf, safetensors, FileFormat};

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    let (parsed, heap) = measure(|| safetensors::parse(data));
    check_heap("safetensors::parse", heap, data.len());

    match &parsed {
        Ok(h) => {
            // The header: an 8-byte length, then that many bytes of UTF-8 JSON object.
            let n = u64::from_le_bytes(data[..8].try_into().unwrap());
            assert_eq!(h.header_end, 8 + n);
            assert!(
                (2..=safetensors::MAX_HEADER_LEN).contains(&n),
                "header length {n}"
            );
            assert!(h.header_end <= len);
            let header = &data[8..h.header_end as usize];
            assert_eq!(header[0], b'{');
            assert!(std::str::from_utf8(header).is_ok());

            // Every tensor inside the data section; in file order; no overlaps; unique names.
            let mut names = HashSet::new();
            for t in &h.tensors {
                assert!(
                    h.header_end <= t.start && t.start <= t.end && t.end <= len,
                    "tensor {:?} at {}..{} outside {}..{len}",
                    t.name,
                    t.start,
                    t.end,
                    h.header_end
                );
                assert!(names.insert(t.name.as_str()), "duplicate {:?}", t.name);
                assert_ne!(t.name, "__metadata__");
            }
            for w in h.tensors.windows(2) {
                assert!(w[0].start <= w[1].start, "not in file order");
                assert!(w[0].end <= w[1].start, "{:?} overlaps {:?}", w[0], w[1]);
            }

            // Data after the last tensor does not matter: a longer file has the same header.
            let mut longer = data.to_vec();
            longer.extend_from_slice(&[0xa5; 7]);
            assert_eq!(safetensors::parse(&longer).as_ref(), Ok(h));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }

    // The chunker's view of the same bytes.
    let (cuts, heap) = measure(|| formats::forced_cuts(data));
    check_heap("forced_cuts", heap, data.len());
    check_cuts(data.len(), &cuts);
    let format = formats::detect(data);
    if !gguf::has_magic(data) {
        assert_eq!(format == FileFormat::Safetensors, parsed.is_ok());
        match &parsed {
            Ok(h) => {
                let candidates = std::iter::once(h.header_end)
                    .chain(h.tensors.iter().flat_map(|t| [t.start, t.end]));
                assert_eq!(cuts, expected_cuts(data.len(), candidates));
            }
            Err(_) => assert!(
                cuts.is_empty(),
                "cuts {cuts:?} for a file that does not parse"
            ),
        }
    }
});
