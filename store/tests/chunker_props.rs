//! Property tests of tensor-aware chunking over randomly generated model files.

use proptest::prelude::*;
use store::chunker::{chunk_spans, ChunkSpan};
use store::config::ChunkerConfig;
use store::formats::gguf::{self, GgufValue};
use store::formats::testgen::{make_gguf, make_safetensors};
use store::formats::{forced_cuts, safetensors};

fn assert_covers(data: &[u8], spans: &[ChunkSpan]) {
    let mut pos = 0u64;
    for s in spans {
        assert_eq!(s.offset, pos);
        assert!(s.len > 0);
        pos += u64::from(s.len);
    }
    assert_eq!(pos, data.len() as u64);
}

fn config() -> impl Strategy<Value = ChunkerConfig> {
    (6u32..15).prop_map(|bits| ChunkerConfig::with_avg(1 << bits))
}

/// Tensor byte contents: sizes from empty to a few chunks, filled with a per-tensor pattern.
fn tensor_bytes() -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec((0usize..20_000, any::<u8>()), 0..6).prop_map(|ts| {
        ts.into_iter()
            .map(|(len, seed)| {
                (0..len)
                    .map(|i| (i as u8).wrapping_mul(31) ^ seed ^ (i >> 8) as u8)
                    .collect()
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn safetensors_tensor_starts_are_span_starts(ts in tensor_bytes(), cfg in config()) {
        let names: Vec<String> = (0..ts.len()).map(|i| format!("layer.{i}.weight")).collect();
        let tensors: Vec<_> = names
            .iter()
            .zip(&ts)
            .map(|(n, b)| (n.as_str(), "U8", vec![b.len() as u64], b.clone()))
            .collect();
        let f = make_safetensors(&tensors);
        let h = safetensors::parse(&f).unwrap();
        let spans = chunk_spans(&f, &cfg);
        assert_covers(&f, &spans);
        let starts: std::collections::HashSet<u64> = spans.iter().map(|s| s.offset).collect();
        for c in forced_cuts(&f) {
            prop_assert!(starts.contains(&c), "forced cut {} is not a span start", c);
        }
        for t in &h.tensors {
            prop_assert!(t.start == f.len() as u64 || starts.contains(&t.start));
        }
        prop_assert_eq!(spans, chunk_spans(&f, &cfg));
    }

    #[test]
    fn gguf_tensor_starts_are_span_starts(
        ts in tensor_bytes(),
        cfg in config(),
        align_bits in 0u32..8,
        vocab in 0u64..3000,
    ) {
        let names: Vec<String> = (0..ts.len()).map(|i| format!("blk.{i}.ffn_up.weight")).collect();
        let tensors: Vec<_> = names
            .iter()
            .zip(&ts)
            .map(|(n, b)| (n.as_str(), gguf::GGML_TYPE_F32, vec![b.len() as u64], b.clone()))
            .collect();
        let kvs = [
            ("general.architecture", GgufValue::String("llama".into())),
            ("general.alignment", GgufValue::U32(1 << align_bits)),
            (
                "tokenizer.ggml.tokens",
                GgufValue::ArrayLen { elem_type: gguf::value_type::STRING, len: vocab },
            ),
        ];
        let f = make_gguf(&kvs, &tensors);
        let h = gguf::parse(&f).unwrap();
        prop_assert_eq!(h.tensors.len(), ts.len());
        let spans = chunk_spans(&f, &cfg);
        assert_covers(&f, &spans);
        let starts: std::collections::HashSet<u64> = spans.iter().map(|s| s.offset).collect();
        for (t, bytes) in h.tensors.iter().zip(&ts) {
            prop_assert_eq!(&f[t.start as usize..][..bytes.len()], &bytes[..]);
            prop_assert!(t.start == f.len() as u64 || starts.contains(&t.start));
        }
    }

    #[test]
    fn arbitrary_bytes_are_covered(
        data in proptest::collection::vec(any::<u8>(), 0..50_000),
        cfg in config(),
    ) {
        let spans = chunk_spans(&data, &cfg);
        assert_covers(&data, &spans);
    }
}
