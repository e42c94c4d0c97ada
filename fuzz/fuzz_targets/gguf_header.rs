//! The GGUF header parser (`store::formats::gguf::parse`), the chunker's use of it
//! (`forced_cuts`, `detect`) and the metadata reading behind the Ollama config the views
//! synthesize (`get_str`/`get_u64` → `fs::views::ollama::config_json`), on arbitrary bytes.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use mlxfs_fuzz::{check_cuts, check_heap, expected_cuts, measure};
use store::formats::gguf::{self, GgufValue};
use store::formats::{self, FileFormat, FormatError};

/// Array elements a header may keep in total (gguf.rs `MAX_STORED_ELEMENTS`).
const MAX_STORED_ELEMENTS: u64 = 1 << 16;
/// Array nesting the parser accepts (gguf.rs `MAX_ARRAY_DEPTH`).
const MAX_ARRAY_DEPTH: usize = 8;

/// Checks one metadata value: kept arrays are short, homogeneous and not nested too deep.
/// Returns the number of array elements kept in it.
fn check_value(v: &GgufValue, depth: usize) -> u64 {
    match v {
        GgufValue::Array(items) => {
            assert!(depth < MAX_ARRAY_DEPTH, "array nested {depth} deep");
            assert!(items.len() as u64 <= gguf::MAX_STORED_ARRAY);
            if let Some(first) = items.first() {
                let tag = first.type_tag();
                assert!(items.iter().all(|i| i.type_tag() == tag), "mixed array");
            }
            items.len() as u64 + items.iter().map(|i| check_value(i, depth + 1)).sum::<u64>()
        }
        GgufValue::ArrayLen { elem_type, .. } => {
            assert!(depth < MAX_ARRAY_DEPTH, "array nested {depth} deep");
            assert!(
                *elem_type <= gguf::value_type::F64,
                "unknown type {elem_type}"
            );
            0
        }
        _ => 0,
    }
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().unwrap())
}

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    let (parsed, heap) = measure(|| gguf::parse(data));
    check_heap("gguf::parse", heap, data.len());

    match &parsed {
        Ok(h) => {
            assert!(gguf::has_magic(data));
            assert!(h.version == 2 || h.version == 3, "version {}", h.version);
            assert_eq!(h.tensors.len() as u64, le_u64(&data[8..16]));
            assert_eq!(h.metadata.len() as u64, le_u64(&data[16..24]));

            assert!(h.alignment.is_power_of_two());
            match h.get("general.alignment") {
                None => assert_eq!(h.alignment, gguf::DEFAULT_ALIGNMENT),
                Some(v) => assert_eq!(v.as_u64(), Some(h.alignment)),
            }
            assert_eq!(h.data_start % h.alignment, 0);
            assert!(h.data_start >= 24);

            let mut names = HashSet::new();
            for t in &h.tensors {
                assert!(
                    h.data_start <= t.start && t.start <= len,
                    "tensor {:?} starts at {} outside {}..={len}",
                    t.name,
                    t.start,
                    h.data_start
                );
                assert!(t.dims.len() <= gguf::MAX_DIMS as usize);
                assert!(
                    names.insert(t.name.as_str()),
                    "duplicate tensor {:?}",
                    t.name
                );
                let _ = t.byte_len();
            }
            let kept: u64 = h.metadata.values().map(|v| check_value(v, 0)).sum();
            assert!(kept <= MAX_STORED_ELEMENTS, "{kept} array elements kept");

            // Bytes past the header do not change it (f32 NaNs make `==` useless: compare
            // the Debug forms).
            let mut longer = data.to_vec();
            longer.extend_from_slice(&[0x5a; 9]);
            let again = gguf::parse(&longer).expect("a longer file must parse too");
            assert_eq!(format!("{again:?}"), format!("{h:?}"));

            // What the Ollama view reads from the header to synthesize a model config.
            let summary = fs::views::ollama::GgufSummary {
                architecture: h.get_str("general.architecture").map(str::to_string),
                file_type: h.get_u64("general.file_type"),
                size_label: h.get_str("general.size_label").map(str::to_string),
            };
            let config = fs::views::ollama::config_json(&summary, "Q4_K_M");
            let config: serde_json::Value =
                serde_json::from_slice(&config).expect("config_json must be JSON");
            let family = summary.architecture.as_deref().unwrap_or("unknown");
            assert_eq!(config["model_family"].as_str(), Some(family));
        }
        Err(e) => {
            let _ = e.to_string();
            if !gguf::has_magic(data) {
                assert!(
                    matches!(e, FormatError::BadMagic | FormatError::Truncated { .. }),
                    "{e:?}"
                );
            }
        }
    }

    let (cuts, heap) = measure(|| formats::forced_cuts(data));
    check_heap("forced_cuts", heap, data.len());
    check_cuts(data.len(), &cuts);
    if gguf::has_magic(data) {
        assert_eq!(formats::detect(data), FileFormat::Gguf);
        match &parsed {
            Ok(h) => {
                let candidates =
                    std::iter::once(h.data_start).chain(h.tensors.iter().flat_map(|t| {
                        let end = t.byte_len().and_then(|n| t.start.checked_add(n));
                        std::iter::once(t.start).chain(end)
                    }));
                assert_eq!(cuts, expected_cuts(data.len(), candidates));
            }
            Err(_) => assert!(
                cuts.is_empty(),
                "cuts {cuts:?} for a file that does not parse"
            ),
        }
    }
});
