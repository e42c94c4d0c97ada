//! GGUF (v2 and v3, little-endian) header parsing.
//!
//! Layout: magic `GGUF`, u32 version, u64 tensor count, u64 KV count, the KV pairs (u64
//! length-prefixed key, u32 value type, value), the tensor infos (name, u32 n_dims, n_dims × u64
//! dims, u32 ggml type, u64 offset relative to the data section), then padding up to
//! `general.alignment` (default 32) where the data section starts.
//!
//! Every count and length in the header is attacker-controlled, so nothing is allocated from a
//! claimed size: counts are checked against the bytes that remain, vectors grow as elements are
//! actually read, and large arrays (tokenizer vocabularies have 100k+ strings) are skipped and
//! kept only as a summary.

use std::collections::BTreeMap;

use super::FormatError;

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml itself allows 4 dimensions; 8 leaves room for future formats while still rejecting
/// garbage early.
pub const MAX_DIMS: u32 = 8;
/// Arrays longer than this are stored as [`GgufValue::ArrayLen`].
pub const MAX_STORED_ARRAY: u64 = 1024;
/// Total array elements kept across all metadata; beyond it arrays are summarised too, so a
/// header made of many mid-sized arrays cannot blow memory up by the size of a `GgufValue`
/// per input byte.
const MAX_STORED_ELEMENTS: u64 = 1 << 16;
/// GGUF allows arrays of arrays; cap nesting so that crafted input cannot overflow the stack.
const MAX_ARRAY_DEPTH: usize = 8;

pub const GGML_TYPE_F32: u32 = 0;
pub const GGML_TYPE_F16: u32 = 1;
pub const GGML_TYPE_Q8_0: u32 = 8;
pub const GGML_TYPE_BF16: u32 = 30;

/// (elements per block, bytes per block) of ggml tensor types, for the types whose layout is
/// fixed; `None` for types this build does not know.
pub fn ggml_block_layout(ggml_type: u32) -> Option<(u64, u64)> {
    Some(match ggml_type {
        0 => (1, 4),      // F32
        1 => (1, 2),      // F16
        2 => (32, 18),    // Q4_0
        3 => (32, 20),    // Q4_1
        6 => (32, 22),    // Q5_0
        7 => (32, 24),    // Q5_1
        8 => (32, 34),    // Q8_0
        9 => (32, 36),    // Q8_1
        10 => (256, 84),  // Q2_K
        11 => (256, 110), // Q3_K
        12 => (256, 144), // Q4_K
        13 => (256, 176), // Q5_K
        14 => (256, 210), // Q6_K
        15 => (256, 292), // Q8_K
        16 => (256, 66),  // IQ2_XXS
        17 => (256, 74),  // IQ2_XS
        18 => (256, 98),  // IQ3_XXS
        19 => (256, 50),  // IQ1_S
        20 => (32, 18),   // IQ4_NL
        21 => (256, 110), // IQ3_S
        22 => (256, 82),  // IQ2_S
        23 => (256, 136), // IQ4_XS
        24 => (1, 1),     // I8
        25 => (1, 2),     // I16
        26 => (1, 4),     // I32
        27 => (1, 8),     // I64
        28 => (1, 8),     // F64
        29 => (256, 56),  // IQ1_M
        30 => (1, 2),     // BF16
        _ => return None,
    })
}

impl GgufTensor {
    /// Bytes of this tensor's data, when its type has a known fixed layout.
    pub fn byte_len(&self) -> Option<u64> {
        let (block, bytes) = ggml_block_layout(self.ggml_type)?;
        let mut elements: u64 = 1;
        for &d in &self.dims {
            elements = elements.checked_mul(d)?;
        }
        if elements % block != 0 {
            return None;
        }
        (elements / block).checked_mul(bytes)
    }
}

/// GGUF metadata value types, as numbered on disk.
pub mod value_type {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
    /// An array too long to keep (e.g. a tokenizer vocabulary): its element type and length.
    ArrayLen {
        elem_type: u32,
        len: u64,
    },
}

impl GgufValue {
    /// The on-disk type tag of this value.
    pub fn type_tag(&self) -> u32 {
        use value_type as t;
        match self {
            GgufValue::U8(_) => t::U8,
            GgufValue::I8(_) => t::I8,
            GgufValue::U16(_) => t::U16,
            GgufValue::I16(_) => t::I16,
            GgufValue::U32(_) => t::U32,
            GgufValue::I32(_) => t::I32,
            GgufValue::U64(_) => t::U64,
            GgufValue::I64(_) => t::I64,
            GgufValue::F32(_) => t::F32,
            GgufValue::F64(_) => t::F64,
            GgufValue::Bool(_) => t::BOOL,
            GgufValue::String(_) => t::STRING,
            GgufValue::Array(_) | GgufValue::ArrayLen { .. } => t::ARRAY,
        }
    }

    /// Any non-negative integer value, whatever its width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensor {
    pub name: String,
    pub ggml_type: u32,
    pub dims: Vec<u64>,
    /// Absolute file offset of the tensor's first byte.
    pub start: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GgufHeader {
    pub version: u32,
    /// Absolute offset of the (aligned) data section.
    pub data_start: u64,
    pub alignment: u64,
    /// In header order.
    pub tensors: Vec<GgufTensor>,
    pub metadata: BTreeMap<String, GgufValue>,
}

impl GgufHeader {
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// A string value, e.g. `general.architecture` or `general.name`.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    /// A non-negative integer value of any width, e.g. `general.file_type`.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }
}

pub fn has_magic(data: &[u8]) -> bool {
    data.starts_with(MAGIC)
}

/// Parse and validate the header of a whole GGUF file.
pub fn parse(data: &[u8]) -> Result<GgufHeader, FormatError> {
    let mut r = Reader { data, pos: 0 };
    if r.bytes(4)? != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = r.u32()?;
    // v1 used 32-bit counts; a big-endian file shows up here as a huge version number.
    if !(2..=3).contains(&version) {
        return Err(FormatError::UnsupportedVersion(version));
    }
    let tensor_count = r.u64()?;
    let kv_count = r.u64()?;
    // Smallest possible KV: empty key (8) + type (4) + 1-byte value.
    r.check_count("KV", kv_count, 13)?;

    let mut stored_budget = MAX_STORED_ELEMENTS;
    let mut metadata = BTreeMap::new();
    for _ in 0..kv_count {
        let key = r.string()?;
        let ty = r.u32()?;
        let value = r.value(ty, 0, &mut stored_budget)?;
        if metadata.contains_key(&key) {
            return Err(FormatError::Duplicate {
                what: "key",
                name: key,
            });
        }
        metadata.insert(key, value);
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() => a,
            Some(a) => return Err(FormatError::BadAlignment(a)),
            None => {
                return Err(FormatError::Invalid(format!(
                    "general.alignment is not an unsigned integer: {v:?}"
                )))
            }
        },
    };

    // Smallest possible tensor info: empty name (8) + n_dims (4) + type (4) + offset (8).
    r.check_count("tensor", tensor_count, 24)?;
    let mut infos = Vec::with_capacity(tensor_count.min(4096) as usize);
    let mut names = std::collections::HashSet::new();
    for _ in 0..tensor_count {
        let name = r.string()?;
        let n_dims = r.u32()?;
        if n_dims > MAX_DIMS {
            return Err(FormatError::TooManyDims {
                name,
                n_dims,
                max: MAX_DIMS,
            });
        }
        let dims = (0..n_dims)
            .map(|_| r.u64())
            .collect::<Result<Vec<_>, _>>()?;
        let ggml_type = r.u32()?;
        let offset = r.u64()?;
        if !names.insert(name.clone()) {
            return Err(FormatError::Duplicate {
                what: "tensor",
                name,
            });
        }
        infos.push((name, dims, ggml_type, offset));
    }

    let file_len = data.len() as u64;
    let infos_end = r.pos as u64;
    let data_start = infos_end
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| FormatError::Invalid("data start overflows".into()))?;
    let tensors = infos
        .into_iter()
        .map(|(name, dims, ggml_type, offset)| {
            // Tensor sizes depend on ggml's block-type table, which keeps growing, so only the
            // start is checked; that is what a forced cut needs.
            match data_start.checked_add(offset) {
                Some(start) if start <= file_len => Ok(GgufTensor {
                    name,
                    ggml_type,
                    dims,
                    start,
                }),
                _ => Err(FormatError::BadOffsets {
                    name,
                    reason: format!(
                        "offset {offset} from data start {data_start} is past the end of the \
                         file ({file_len} bytes)"
                    ),
                }),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;

    Ok(GgufHeader {
        version,
        data_start,
        alignment,
        tensors,
        metadata,
    })
}

/// A bounds-checked little-endian cursor over the file.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.data.len() - self.pos) as u64
    }

    fn truncated(&self, needed: u64) -> FormatError {
        FormatError::Truncated {
            offset: self.pos as u64,
            needed,
            file_len: self.data.len() as u64,
        }
    }

    fn bytes(&mut self, n: u64) -> Result<&'a [u8], FormatError> {
        if n > self.remaining() {
            return Err(self.truncated(n));
        }
        // `n <= remaining`, which fits in usize.
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.data[start..self.pos])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let b = self.bytes(N as u64)?;
        // Cannot fail: `bytes` returned exactly N bytes.
        b.try_into().map_err(|_| self.truncated(N as u64))
    }

    fn u32(&mut self) -> Result<u32, FormatError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, FormatError> {
        self.array().map(u64::from_le_bytes)
    }

    /// Reject a claimed element count that could not fit in the rest of the file even if every
    /// element had its minimal encoded size. This turns 2^40-style counts into an immediate
    /// error instead of a long loop (or a huge allocation).
    fn check_count(
        &self,
        what: &'static str,
        count: u64,
        min_size: u64,
    ) -> Result<(), FormatError> {
        if count > self.remaining() / min_size {
            return Err(FormatError::CountTooLarge {
                what,
                count,
                remaining: self.remaining(),
            });
        }
        Ok(())
    }

    fn raw_string(&mut self) -> Result<&'a [u8], FormatError> {
        let len = self.u64()?;
        self.bytes(len)
    }

    /// Strings are not required to be UTF-8 by all writers (tokenizer pieces can be raw
    /// bytes); decoding lossily keeps such files usable.
    fn string(&mut self) -> Result<String, FormatError> {
        Ok(String::from_utf8_lossy(self.raw_string()?).into_owned())
    }

    fn value(&mut self, ty: u32, depth: usize, budget: &mut u64) -> Result<GgufValue, FormatError> {
        use value_type as t;
        Ok(match ty {
            t::U8 => GgufValue::U8(u8::from_le_bytes(self.array()?)),
            t::I8 => GgufValue::I8(i8::from_le_bytes(self.array()?)),
            t::U16 => GgufValue::U16(u16::from_le_bytes(self.array()?)),
            t::I16 => GgufValue::I16(i16::from_le_bytes(self.array()?)),
            t::U32 => GgufValue::U32(self.u32()?),
            t::I32 => GgufValue::I32(i32::from_le_bytes(self.array()?)),
            t::U64 => GgufValue::U64(self.u64()?),
            t::I64 => GgufValue::I64(i64::from_le_bytes(self.array()?)),
            t::F32 => GgufValue::F32(f32::from_le_bytes(self.array()?)),
            t::F64 => GgufValue::F64(f64::from_le_bytes(self.array()?)),
            t::BOOL => GgufValue::Bool(self.array::<1>()?[0] != 0),
            t::STRING => GgufValue::String(self.string()?),
            t::ARRAY => self.array_value(depth, budget)?,
            other => return Err(FormatError::UnknownValueType(other)),
        })
    }

    fn array_value(&mut self, depth: usize, budget: &mut u64) -> Result<GgufValue, FormatError> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(FormatError::NestingTooDeep(MAX_ARRAY_DEPTH));
        }
        let elem_type = self.u32()?;
        let len = self.u64()?;
        let min_size = min_encoded_size(elem_type)?;
        self.check_count("array element", len, min_size)?;
        if len <= MAX_STORED_ARRAY && len <= *budget {
            *budget -= len;
            // `len` is at most MAX_STORED_ARRAY here, so this allocation is small.
            let mut items = Vec::with_capacity(len as usize);
            for _ in 0..len {
                items.push(self.value(elem_type, depth + 1, budget)?);
            }
            return Ok(GgufValue::Array(items));
        }
        if let Some(size) = fixed_size(elem_type) {
            // check_count guaranteed len * size <= remaining.
            self.bytes(len * size)?;
        } else {
            // Strings and arrays must be walked one by one; each step consumes at least
            // `min_size` bytes, which check_count already bounded by the file size.
            for _ in 0..len {
                self.skip_value(elem_type, depth + 1)?;
            }
        }
        Ok(GgufValue::ArrayLen { elem_type, len })
    }

    fn skip_value(&mut self, ty: u32, depth: usize) -> Result<(), FormatError> {
        if let Some(size) = fixed_size(ty) {
            self.bytes(size)?;
            return Ok(());
        }
        match ty {
            value_type::STRING => {
                self.raw_string()?;
            }
            value_type::ARRAY => {
                // Keeps nothing, so no budget is consumed; the depth limit still applies.
                let mut none = 0;
                self.array_value(depth, &mut none)?;
            }
            other => return Err(FormatError::UnknownValueType(other)),
        }
        Ok(())
    }
}

/// Encoded size of fixed-width value types; `None` for strings, arrays and unknown types.
fn fixed_size(ty: u32) -> Option<u64> {
    use value_type as t;
    match ty {
        t::U8 | t::I8 | t::BOOL => Some(1),
        t::U16 | t::I16 => Some(2),
        t::U32 | t::I32 | t::F32 => Some(4),
        t::U64 | t::I64 | t::F64 => Some(8),
        _ => None,
    }
}

fn min_encoded_size(ty: u32) -> Result<u64, FormatError> {
    match ty {
        value_type::STRING => Ok(8),
        value_type::ARRAY => Ok(12),
        other => fixed_size(other).ok_or(FormatError::UnknownValueType(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testgen::make_gguf;
    use super::*;

    fn kvs() -> Vec<(&'static str, GgufValue)> {
        vec![
            ("general.architecture", GgufValue::String("llama".into())),
            ("general.name", GgufValue::String("tiny".into())),
            ("general.file_type", GgufValue::U32(1)),
            ("general.alignment", GgufValue::U32(16)),
            ("llama.rope.freq_base", GgufValue::F32(10000.0)),
            ("tokenizer.ggml.add_bos_token", GgufValue::Bool(true)),
            (
                "tokenizer.ggml.tokens",
                GgufValue::Array(vec![
                    GgufValue::String("<s>".into()),
                    GgufValue::String("é".into()),
                    GgufValue::String(String::new()),
                ]),
            ),
            (
                "tokenizer.ggml.scores",
                GgufValue::Array(vec![GgufValue::F32(0.5), GgufValue::F32(-1.0)]),
            ),
            (
                "nested",
                GgufValue::Array(vec![GgufValue::Array(vec![GgufValue::I64(-3)])]),
            ),
        ]
    }

    fn tensors() -> Vec<(&'static str, u32, Vec<u64>, Vec<u8>)> {
        vec![
            ("tok_embd.weight", GGML_TYPE_F16, vec![3, 7], vec![0xa1; 42]),
            ("norm.weight", GGML_TYPE_F32, vec![5], vec![0xb2; 20]),
            ("out.weight", GGML_TYPE_Q8_0, vec![32], vec![0xc3; 34]),
        ]
    }

    fn sample() -> Vec<u8> {
        make_gguf(&kvs(), &tensors())
    }

    #[test]
    fn parses_generated_file() {
        let f = sample();
        let h = parse(&f).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.alignment, 16);
        assert_eq!(h.data_start % 16, 0);
        assert_eq!(h.get_str("general.architecture"), Some("llama"));
        assert_eq!(h.get_str("general.name"), Some("tiny"));
        assert_eq!(h.get_u64("general.file_type"), Some(1));
        assert_eq!(h.get_u64("general.name"), None);
        for (k, v) in kvs() {
            assert_eq!(h.get(k), Some(&v), "{k}");
        }
        assert_eq!(h.tensors.len(), 3);
        for (t, (name, ty, dims, bytes)) in h.tensors.iter().zip(tensors()) {
            assert_eq!((t.name.as_str(), t.ggml_type, &t.dims), (name, ty, &dims));
            assert_eq!(t.start % 16, 0);
            assert_eq!(&f[t.start as usize..][..bytes.len()], &bytes[..]);
        }
        assert_eq!(h.tensors[0].start, h.data_start);
    }

    #[test]
    fn version_2_parses_and_others_do_not() {
        let mut f = sample();
        f[4..8].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(parse(&f).unwrap().version, 2);
        for v in [0u32, 1, 4, 0x0300_0000] {
            f[4..8].copy_from_slice(&v.to_le_bytes());
            assert_eq!(parse(&f), Err(FormatError::UnsupportedVersion(v)));
        }
        assert_eq!(parse(b"GGUZ\x03\0\0\0"), Err(FormatError::BadMagic));
    }

    #[test]
    fn default_alignment_is_32() {
        let f = make_gguf(&kvs()[..3], &tensors());
        let h = parse(&f).unwrap();
        assert_eq!(h.alignment, 32);
        assert!(h.tensors.iter().all(|t| t.start % 32 == 0));
    }

    #[test]
    fn truncation_anywhere_before_the_last_tensor_is_an_error() {
        let f = sample();
        let last = parse(&f)
            .unwrap()
            .tensors
            .iter()
            .map(|t| t.start)
            .max()
            .unwrap();
        for k in 0..last as usize {
            assert!(parse(&f[..k]).is_err(), "prefix of {k} bytes parsed");
        }
    }

    #[test]
    fn long_arrays_are_summarised_but_skipped_correctly() {
        let mut kv = vec![
            (
                "big.tokens",
                GgufValue::ArrayLen {
                    elem_type: value_type::STRING,
                    len: 5000,
                },
            ),
            (
                "big.token_type",
                GgufValue::ArrayLen {
                    elem_type: value_type::I32,
                    len: 5000,
                },
            ),
        ];
        kv.extend(kvs());
        let f = make_gguf(&kv, &tensors());
        let h = parse(&f).unwrap();
        assert_eq!(h.get("big.tokens"), Some(&kv[0].1));
        assert_eq!(h.get("big.token_type"), Some(&kv[1].1));
        // The KVs after the big arrays were found, so the skipping consumed the right bytes.
        assert_eq!(h.get_str("general.name"), Some("tiny"));
        assert_eq!(h.tensors.len(), 3);
    }

    #[test]
    fn total_stored_elements_are_bounded() {
        let big: Vec<_> = (0..1000).map(GgufValue::U32).collect();
        let names: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
        let kv: Vec<_> = names
            .iter()
            .map(|n| (n.as_str(), GgufValue::Array(big.clone())))
            .collect();
        let h = parse(&make_gguf(&kv, &[])).unwrap();
        let stored: usize = h
            .metadata
            .values()
            .map(|v| match v {
                GgufValue::Array(a) => a.len(),
                _ => 0,
            })
            .sum();
        assert!(stored as u64 <= MAX_STORED_ELEMENTS, "{stored}");
        assert!(h
            .metadata
            .values()
            .any(|v| matches!(v, GgufValue::ArrayLen { len: 1000, .. })));
    }

    /// Hand-built header prefix: magic, version 3, counts.
    fn head(tensor_count: u64, kv_count: u64) -> Vec<u8> {
        let mut f = b"GGUF".to_vec();
        f.extend_from_slice(&3u32.to_le_bytes());
        f.extend_from_slice(&tensor_count.to_le_bytes());
        f.extend_from_slice(&kv_count.to_le_bytes());
        f
    }

    fn push_str(f: &mut Vec<u8>, s: &str) {
        f.extend_from_slice(&(s.len() as u64).to_le_bytes());
        f.extend_from_slice(s.as_bytes());
    }

    #[test]
    fn huge_counts_are_rejected_immediately() {
        for (tc, kc) in [
            (1u64 << 40, 0u64),
            (0, 1 << 40),
            (u64::MAX, 0),
            (0, u64::MAX),
        ] {
            let mut f = head(tc, kc);
            f.resize(4096, 0);
            let r = parse(&f);
            assert!(
                matches!(r, Err(FormatError::CountTooLarge { .. })),
                "{tc} {kc}: {r:?}"
            );
        }
    }

    #[test]
    fn huge_string_lengths_are_rejected() {
        // As a key length.
        let mut f = head(0, 1);
        f.extend_from_slice(&(1u64 << 63).to_le_bytes());
        f.resize(200, b'x');
        assert!(matches!(parse(&f), Err(FormatError::Truncated { .. })));
        // As a string value inside a skipped array.
        let mut f = head(0, 1);
        push_str(&mut f, "a");
        f.extend_from_slice(&value_type::ARRAY.to_le_bytes());
        f.extend_from_slice(&value_type::STRING.to_le_bytes());
        f.extend_from_slice(&2000u64.to_le_bytes());
        f.extend_from_slice(&u64::MAX.to_le_bytes());
        f.resize(20_000, 0);
        assert!(matches!(parse(&f), Err(FormatError::Truncated { .. })));
        // As a tensor name.
        let mut f = head(1, 0);
        f.extend_from_slice(&(1u64 << 63).to_le_bytes());
        f.resize(200, 0);
        assert!(matches!(parse(&f), Err(FormatError::Truncated { .. })));
    }

    #[test]
    fn huge_array_lengths_are_rejected() {
        for ty in [
            value_type::U8,
            value_type::U64,
            value_type::STRING,
            value_type::ARRAY,
        ] {
            let mut f = head(0, 1);
            push_str(&mut f, "a");
            f.extend_from_slice(&value_type::ARRAY.to_le_bytes());
            f.extend_from_slice(&ty.to_le_bytes());
            f.extend_from_slice(&(1u64 << 62).to_le_bytes());
            f.resize(4096, 0);
            let r = parse(&f);
            assert!(
                matches!(r, Err(FormatError::CountTooLarge { .. })),
                "{ty}: {r:?}"
            );
        }
    }

    #[test]
    fn too_many_dims_are_rejected() {
        let mut f = head(1, 0);
        push_str(&mut f, "t");
        f.extend_from_slice(&1000u32.to_le_bytes());
        f.resize(100_000, 0);
        assert!(matches!(
            parse(&f),
            Err(FormatError::TooManyDims { n_dims: 1000, .. })
        ));
    }

    #[test]
    fn unknown_value_types_are_rejected() {
        for (outer, inner) in [
            (13u32, None),
            (u32::MAX, None),
            (value_type::ARRAY, Some(99u32)),
        ] {
            let mut f = head(0, 1);
            push_str(&mut f, "a");
            f.extend_from_slice(&outer.to_le_bytes());
            if let Some(i) = inner {
                f.extend_from_slice(&i.to_le_bytes());
                f.extend_from_slice(&1u64.to_le_bytes());
            }
            f.resize(256, 0);
            let r = parse(&f);
            assert!(matches!(r, Err(FormatError::UnknownValueType(_))), "{r:?}");
        }
    }

    #[test]
    fn deep_array_nesting_is_rejected() {
        let mut f = head(0, 1);
        push_str(&mut f, "a");
        f.extend_from_slice(&value_type::ARRAY.to_le_bytes());
        for _ in 0..10_000 {
            f.extend_from_slice(&value_type::ARRAY.to_le_bytes());
            f.extend_from_slice(&1u64.to_le_bytes());
        }
        f.resize(f.len() + 4096, 0);
        assert!(matches!(parse(&f), Err(FormatError::NestingTooDeep(_))));
    }

    #[test]
    fn bad_alignment_is_rejected() {
        for a in [0u32, 3, 48] {
            let f = make_gguf(&[("general.alignment", GgufValue::U32(a))], &[]);
            assert_eq!(parse(&f), Err(FormatError::BadAlignment(a.into())));
        }
        let f = make_gguf(&[("general.alignment", GgufValue::String("x".into()))], &[]);
        assert!(matches!(parse(&f), Err(FormatError::Invalid(_))));
    }

    #[test]
    fn offsets_past_eof_are_rejected() {
        let mut f = sample();
        let h = parse(&f).unwrap();
        f.truncate(h.tensors[2].start as usize - 1);
        assert!(matches!(parse(&f), Err(FormatError::BadOffsets { .. })));
        // An offset that overflows when added to the data start.
        let mut f = head(1, 0);
        push_str(&mut f, "t");
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&1u64.to_le_bytes());
        f.extend_from_slice(&GGML_TYPE_F32.to_le_bytes());
        f.extend_from_slice(&u64::MAX.to_le_bytes());
        f.resize(256, 0);
        assert!(matches!(parse(&f), Err(FormatError::BadOffsets { .. })));
    }

    #[test]
    fn duplicates_are_rejected() {
        let f = make_gguf(&[("a", GgufValue::U8(1)), ("a", GgufValue::U8(2))], &[]);
        assert!(matches!(
            parse(&f),
            Err(FormatError::Duplicate { what: "key", .. })
        ));
        let f = make_gguf(
            &[],
            &[
                ("t", GGML_TYPE_F32, vec![1], vec![0; 4]),
                ("t", GGML_TYPE_F32, vec![1], vec![0; 4]),
            ],
        );
        assert!(matches!(
            parse(&f),
            Err(FormatError::Duplicate { what: "tensor", .. })
        ));
    }
}
