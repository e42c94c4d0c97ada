//! The Ollama manifest parser (`store::models::parse_ollama_manifest`) on arbitrary bytes:
//! whatever it accepts names its blobs only by 64 lowercase hex digits, so no manifest can
//! smuggle a path into `blobs/sha256-<digest>`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mlxfs_fuzz::{check_heap, measure};
use serde_json::Value;
use store::models::{is_sha256_hex, parse_ollama_manifest};

/// The definition `is_sha256_hex` must agree with.
fn reference_is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn check_digest(entry: &Value, hex: &str) {
    assert!(reference_is_sha256_hex(hex), "accepted digest {hex:?}");
    assert_eq!(
        entry.get("digest").and_then(Value::as_str),
        Some(format!("sha256:{hex}").as_str())
    );
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        assert_eq!(is_sha256_hex(s), reference_is_sha256_hex(s));
    }

    let (parsed, heap) = measure(|| parse_ollama_manifest(data));
    check_heap("parse_ollama_manifest", heap, data.len());
    match parsed {
        Ok(m) => {
            let v: Value = serde_json::from_slice(data).expect("an accepted manifest is JSON");
            match (&m.config, v.get("config")) {
                (Some(hex), Some(entry)) => check_digest(entry, hex),
                (None, None) => {}
                (config, entry) => panic!("config {config:?} parsed from {entry:?}"),
            }
            let layers = v
                .get("layers")
                .and_then(Value::as_array)
                .expect("an accepted manifest has a layers array");
            assert_eq!(layers.len(), m.layers.len());
            for (entry, (hex, media, size)) in layers.iter().zip(&m.layers) {
                check_digest(entry, hex);
                let want_media = entry.get("mediaType").and_then(Value::as_str);
                assert_eq!(media.as_str(), want_media.unwrap_or_default());
                assert_eq!(
                    *size,
                    entry.get("size").and_then(Value::as_u64).unwrap_or(0)
                );
            }
        }
        Err(e) => assert!(!e.is_empty()),
    }
});
