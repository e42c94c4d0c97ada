//! Chunking with cut points forced at tensor boundaries (DESIGN.md §2).
//!
//! The file is first split at [`formats::forced_cuts`] (header end, tensor starts). The header
//! (and any file that is not safetensors or GGUF) is cut by FastCDC v2020. Tensor data is cut
//! every `avg` bytes from the tensor's start: because every tensor starts a fresh chunk, an
//! identical tensor produces identical chunks wherever it sits in whichever file, which lets
//! chunks stay large without losing dedup. Inside a tensor, where nothing is ever inserted,
//! content-defined cuts would find those same chunks at the price of scanning every byte (29%
//! of an import's CPU); fixed cuts also keep a tensor that is changed in place aligned.

use fastcdc::v2020::{
    FastCDC, AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
};

use crate::config::ChunkerConfig;
use crate::formats;

/// One chunk: `data[offset .. offset + len]`. FastCDC caps chunks at 16 MiB, so `u32` suffices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSpan {
    pub offset: u64,
    pub len: u32,
}

impl ChunkSpan {
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

/// FastCDC parameters `(min, avg, max)` adjusted to what FastCDC accepts: each within its
/// documented bounds (its debug assertions enforce them), even (its two-bytes-at-a-time scan
/// silently shifts odd boundaries), and ordered `min <= avg <= max`.
pub fn effective_params(cfg: &ChunkerConfig) -> (usize, usize, usize) {
    // All bounds are even, so rounding down to even after clamping stays within them.
    let even = |x: usize| x & !1;
    let min = even(cfg.min_size.clamp(MINIMUM_MIN, MINIMUM_MAX));
    let avg = even(cfg.avg_size.clamp(AVERAGE_MIN, AVERAGE_MAX)).max(min);
    let max = even(cfg.max_size.clamp(MAXIMUM_MIN, MAXIMUM_MAX)).max(avg);
    (min, avg, max)
}

/// Split `data` into chunks. The spans are contiguous, cover `data` exactly (none for empty
/// data), and, when `cfg.tensor_aware`, every forced cut is a span start. Deterministic.
///
/// Works on the slice in place (it is normally a memory map of a multi-GB file): nothing is
/// copied, and memory use is the output vector.
pub fn chunk_spans(data: &[u8], cfg: &ChunkerConfig) -> Vec<ChunkSpan> {
    let (_, avg, _) = effective_params(cfg);
    let mut spans = Vec::with_capacity(data.len() / avg + 1);
    let done: Result<(), std::convert::Infallible> = for_each_chunk_span(data, cfg, |s| {
        spans.push(s);
        Ok(())
    });
    let Ok(()) = done;
    spans
}

/// [`chunk_spans`], handing each span to `each` as soon as it is cut (in order), so the caller's
/// work on a chunk overlaps with reading the next from disk. Stops at `each`'s first error.
pub fn for_each_chunk_span<E>(
    data: &[u8],
    cfg: &ChunkerConfig,
    mut each: impl FnMut(ChunkSpan) -> Result<(), E>,
) -> Result<(), E> {
    if data.is_empty() {
        return Ok(());
    }
    let (min, avg, max) = effective_params(cfg);
    let cuts = if cfg.tensor_aware {
        formats::forced_cuts(data)
    } else {
        Vec::new()
    };
    let mut cdc = FastCDC::new(&data[..0], min, avg, max);
    let mut seg_start = 0usize;
    // forced_cuts are sorted and strictly inside (0, len), so the segments are non-empty and
    // in range; the conversion cannot fail for an offset below `data.len()`.
    let ends = cuts
        .iter()
        .filter_map(|&c| usize::try_from(c).ok())
        .chain(std::iter::once(data.len()));
    for seg_end in ends {
        let seg = &data[seg_start..seg_end];
        if seg.len() <= min {
            // FastCDC would return the same single chunk; this skips its setup.
            each(span(seg_start, seg.len()))?;
        } else if seg_start > 0 {
            // Past the first forced cut: tensor data (or padding between tensors).
            let mut offset = 0;
            while offset < seg.len() {
                let len = fixed_cut(seg.len() - offset, avg);
                each(span(seg_start + offset, len))?;
                offset += len;
            }
        } else {
            for c in cdc.rechunk(seg) {
                each(span(seg_start + c.offset, c.length))?;
            }
        }
        seg_start = seg_end;
    }
    Ok(())
}

/// The next chunk's length where `rest` bytes of a tensor remain: `avg`, or all of `rest` up to
/// 1.5 `avg` (`<= max`). So a tensor of `n` bytes makes about `n / avg` chunks, as FastCDC's,
/// and none is shorter than `avg / 2` unless the tensor is.
fn fixed_cut(rest: usize, avg: usize) -> usize {
    if rest <= avg + avg / 2 {
        rest
    } else {
        avg
    }
}

fn span(offset: usize, len: usize) -> ChunkSpan {
    ChunkSpan {
        offset: offset as u64,
        // Chunks are at most `max <= MAXIMUM_MAX` (16 MiB) long, and short segments are
        // shorter than `min`.
        len: u32::try_from(len).unwrap_or(u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rand::{Rng, RngCore, SeedableRng};

    use super::*;
    use crate::formats::gguf::{GgufValue, GGML_TYPE_F16, GGML_TYPE_F32};
    use crate::formats::testgen::{make_gguf, make_safetensors};

    fn cfg(avg: usize, tensor_aware: bool) -> ChunkerConfig {
        ChunkerConfig {
            tensor_aware,
            ..ChunkerConfig::with_avg(avg)
        }
    }

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut v = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
        v
    }

    fn assert_covers(data: &[u8], spans: &[ChunkSpan]) {
        let mut pos = 0u64;
        for s in spans {
            assert_eq!(s.offset, pos, "gap or overlap at {pos}");
            assert!(s.len > 0, "empty span at {pos}");
            pos = s.end();
        }
        assert_eq!(pos, data.len() as u64, "spans do not reach the end");
    }

    fn starts(spans: &[ChunkSpan]) -> HashSet<u64> {
        spans.iter().map(|s| s.offset).collect()
    }

    fn hashes(data: &[u8], spans: &[ChunkSpan]) -> Vec<blake3::Hash> {
        spans
            .iter()
            .map(|s| blake3::hash(&data[s.offset as usize..s.end() as usize]))
            .collect()
    }

    #[test]
    fn empty_and_tiny_inputs() {
        let c = ChunkerConfig::default();
        assert!(chunk_spans(&[], &c).is_empty());
        assert_eq!(chunk_spans(b"x", &c), vec![ChunkSpan { offset: 0, len: 1 }]);
        let d = random(1000, 1);
        assert_eq!(
            chunk_spans(&d, &c),
            vec![ChunkSpan {
                offset: 0,
                len: 1000
            }]
        );
    }

    #[test]
    fn params_are_clamped_even_and_ordered() {
        for (min, avg, max) in [
            (0, 0, 0),
            (1, 3, 5),
            (usize::MAX, usize::MAX, usize::MAX),
            (1 << 20, 1000, 2000),
            (4097, 16385, 65537),
        ] {
            let c = ChunkerConfig {
                min_size: min,
                avg_size: avg,
                max_size: max,
                tensor_aware: false,
            };
            let (a, b, m) = effective_params(&c);
            assert!((MINIMUM_MIN..=MINIMUM_MAX).contains(&a));
            assert!((AVERAGE_MIN..=AVERAGE_MAX).contains(&b));
            assert!((MAXIMUM_MIN..=MAXIMUM_MAX).contains(&m));
            assert!(a <= b && b <= m);
            assert_eq!((a % 2, b % 2, m % 2), (0, 0, 0));
            // And FastCDC (with its debug assertions) accepts them.
            let d = random(100_000, 2);
            assert_covers(&d, &chunk_spans(&d, &c));
        }
    }

    #[test]
    fn deterministic_and_covering() {
        let d = random(3 << 20, 3);
        let c = cfg(16 << 10, true);
        let a = chunk_spans(&d, &c);
        let b = chunk_spans(&d, &c);
        assert_eq!(a, b);
        assert_covers(&d, &a);
        let (min, _, max) = effective_params(&c);
        assert!(a.len() > 50, "expected many chunks, got {}", a.len());
        // All but the last chunk respect the size bounds.
        for s in &a[..a.len() - 1] {
            assert!(s.len as usize >= min && s.len as usize <= max, "{s:?}");
        }
    }

    #[test]
    fn zero_data_is_cut_at_max() {
        let d = vec![0u8; 1 << 20];
        let c = cfg(4096, false);
        let spans = chunk_spans(&d, &c);
        assert_covers(&d, &spans);
        let (_, _, max) = effective_params(&c);
        assert!(spans.iter().all(|s| s.len as usize <= max));
    }

    fn st_tensors() -> Vec<(&'static str, &'static str, Vec<u64>, Vec<u8>)> {
        vec![
            ("a.weight", "F16", vec![40_001], random(80_002, 10)),
            ("b.bias", "U8", vec![333], random(333, 11)),
            ("c.weight", "F32", vec![25_003], random(100_012, 12)),
            ("d.weight", "U8", vec![7], random(7, 13)),
        ]
    }

    #[test]
    fn tensor_data_is_cut_every_avg_bytes_from_the_tensor_start() {
        let tensors = st_tensors();
        let f = make_safetensors(&tensors);
        let c = cfg(4096, true);
        let (_, avg, _) = effective_params(&c);
        let spans = chunk_spans(&f, &c);
        assert_covers(&f, &spans);
        // a.weight: 80,002 bytes = 19 chunks of avg and 2,178 bytes, more than avg / 2: a
        // chunk of their own.
        let n = 80_002;
        let mut expected = vec![avg; n / avg];
        if n % avg <= avg / 2 {
            *expected.last_mut().unwrap() += n % avg;
        } else {
            expected.push(n % avg);
        }
        let start = (f.len() - tensors.iter().map(|t| t.3.len()).sum::<usize>()) as u64;
        let first = spans.iter().position(|s| s.offset == start).unwrap();
        let lens: Vec<usize> = spans[first..first + expected.len()]
            .iter()
            .map(|s| s.len as usize)
            .collect();
        assert_eq!(lens, expected);
        // The same tensor bytes elsewhere (another file, another offset) cut the same way.
        let other = make_safetensors(&[
            ("z.first", "U8", vec![12_345], random(12_345, 99)),
            tensors[0].clone(),
        ]);
        let spans_other = chunk_spans(&other, &c);
        let ours: HashSet<blake3::Hash> = hashes(&f, &spans).into_iter().collect();
        let shared = hashes(&other, &spans_other)
            .into_iter()
            .filter(|h| ours.contains(h))
            .count();
        assert_eq!(shared, expected.len());
    }

    #[test]
    fn safetensors_tensor_starts_are_span_starts() {
        let tensors = st_tensors();
        let f = make_safetensors(&tensors);
        let total: usize = tensors.iter().map(|t| t.3.len()).sum();
        // Expected starts computed from the layout, independently of the parser.
        let mut expected = vec![(f.len() - total) as u64];
        for t in &tensors[..tensors.len() - 1] {
            expected.push(expected.last().unwrap() + t.3.len() as u64);
        }
        for (e, t) in expected.iter().zip(&tensors) {
            assert_eq!(&f[*e as usize..][..t.3.len()], &t.3[..]);
        }
        for avg in [256, 4096, 65536] {
            let spans = chunk_spans(&f, &cfg(avg, true));
            assert_covers(&f, &spans);
            let s = starts(&spans);
            for e in &expected {
                assert!(
                    s.contains(e),
                    "avg {avg}: tensor start {e} is not a span start"
                );
            }
            // Without tensor awareness, at least one start is missed (the small tensors sit
            // inside a chunk): the test would notice if the cuts were not applied.
            let plain = starts(&chunk_spans(&f, &cfg(avg, false)));
            assert!(!expected.iter().all(|e| plain.contains(e)), "avg {avg}");
        }
    }

    #[test]
    fn gguf_tensor_starts_are_span_starts() {
        let tensors = vec![
            (
                "tok_embd.weight",
                GGML_TYPE_F16,
                vec![1001, 3],
                random(6006, 20),
            ),
            (
                "blk.0.attn_norm.weight",
                GGML_TYPE_F32,
                vec![13],
                random(52, 21),
            ),
            (
                "output.weight",
                GGML_TYPE_F16,
                vec![50_003],
                random(100_006, 22),
            ),
        ];
        let kvs = vec![
            ("general.architecture", GgufValue::String("llama".into())),
            ("general.alignment", GgufValue::U32(64)),
            (
                "tokenizer.ggml.tokens",
                GgufValue::Array(vec![
                    GgufValue::String("<unk>".into()),
                    GgufValue::String("hello".into()),
                ]),
            ),
        ];
        let f = make_gguf(&kvs, &tensors);
        let padded: Vec<u64> = tensors
            .iter()
            .map(|t| (t.3.len() as u64).next_multiple_of(64))
            .collect();
        let mut expected = vec![f.len() as u64 - padded.iter().sum::<u64>()];
        for p in &padded[..padded.len() - 1] {
            expected.push(expected.last().unwrap() + p);
        }
        for (e, t) in expected.iter().zip(&tensors) {
            assert_eq!(e % 64, 0);
            assert_eq!(&f[*e as usize..][..t.3.len()], &t.3[..]);
        }
        for avg in [256, 4096, 65536] {
            let spans = chunk_spans(&f, &cfg(avg, true));
            assert_covers(&f, &spans);
            let s = starts(&spans);
            for e in &expected {
                assert!(
                    s.contains(e),
                    "avg {avg}: tensor start {e} is not a span start"
                );
            }
        }
    }

    #[test]
    fn identical_tensor_dedups_wherever_it_sits() {
        // The same big tensor after differently sized neighbours: its chunks must be identical.
        let shared = random(300_000, 30);
        let f1 = make_safetensors(&[
            ("x", "U8", vec![1234], random(1234, 31)),
            ("shared", "U8", vec![300_000], shared.clone()),
        ]);
        let f2 = make_safetensors(&[
            ("longer.name.x", "U8", vec![77_777], random(77_777, 32)),
            ("shared", "U8", vec![300_000], shared.clone()),
            ("y", "U8", vec![5], random(5, 33)),
        ]);
        let c = cfg(16 << 10, true);
        let tensor_chunks = |f: &[u8]| -> Vec<blake3::Hash> {
            let h = crate::formats::safetensors::parse(f).unwrap();
            let t = h.tensors.iter().find(|t| t.name == "shared").unwrap();
            let spans: Vec<_> = chunk_spans(f, &c)
                .into_iter()
                .filter(|s| s.offset >= t.start && s.end() <= t.end)
                .collect();
            assert_eq!(
                spans.iter().map(|s| u64::from(s.len)).sum::<u64>(),
                t.end - t.start
            );
            hashes(f, &spans)
        };
        let a = tensor_chunks(&f1);
        assert!(a.len() > 5);
        assert_eq!(a, tensor_chunks(&f2));
    }

    #[test]
    fn insertion_at_front_changes_few_chunks() {
        let d = random(8 << 20, 40);
        let mut rng = rand::rngs::StdRng::seed_from_u64(41);
        let mut e: Vec<u8> = (0..rng.random_range(1..5000))
            .map(|_| rng.random())
            .collect();
        e.extend_from_slice(&d);
        let c = cfg(64 << 10, true);
        let (a, b) = (chunk_spans(&d, &c), chunk_spans(&e, &c));
        assert!(a.len() > 60, "{}", a.len());
        let old: HashSet<_> = hashes(&d, &a).into_iter().collect();
        let new_chunks = hashes(&e, &b)
            .into_iter()
            .filter(|h| !old.contains(h))
            .count();
        assert!(
            new_chunks <= 3,
            "{new_chunks} of {} chunks changed",
            b.len()
        );
    }
}
