//! Generators of small valid safetensors and GGUF files, for tests in this and other crates.
//!
//! Always compiled (they are tiny) so that other crates' tests can use them without a feature.
//! Not meant for production writers: they panic on unrepresentable input.

use super::gguf::{value_type, GgufValue};

/// A safetensors file with tensors `(name, dtype, shape, bytes)` laid out contiguously in the
/// given order, and `__metadata__ = {"format": "pt"}`. The header is space-padded to a multiple
/// of 8 bytes like the reference writer does.
pub fn make_safetensors(tensors: &[(&str, &str, Vec<u64>, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0u64;
    for (name, dtype, shape, bytes) in tensors {
        let end = offset + bytes.len() as u64;
        header.insert(
            (*name).to_owned(),
            serde_json::json!({ "dtype": dtype, "shape": shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut json = serde_json::to_vec(&header).expect("serialising a JSON map cannot fail");
    while (8 + json.len()) % 8 != 0 {
        json.push(b' ');
    }
    let mut f = Vec::with_capacity(8 + json.len() + offset as usize);
    f.extend_from_slice(&(json.len() as u64).to_le_bytes());
    f.extend_from_slice(&json);
    for (_, _, _, bytes) in tensors {
        f.extend_from_slice(bytes);
    }
    f
}

/// A GGUF v3 file with the given KV pairs and tensors `(name, ggml_type, dims, bytes)`.
///
/// The alignment is taken from a `general.alignment` KV if it holds a usable `U32`, else 32.
/// Each tensor's data is padded to the alignment, as llama.cpp's and gguf-py's writers do.
/// `GgufValue::ArrayLen { elem_type, len }` is written as `len` zero-valued elements (empty
/// strings, empty `U8` arrays), handy for producing vocabulary-sized arrays. Arrays take their
/// element type from their first element (empty arrays are written as `U32` arrays).
pub fn make_gguf(kvs: &[(&str, GgufValue)], tensors: &[(&str, u32, Vec<u64>, Vec<u8>)]) -> Vec<u8> {
    let alignment = kvs
        .iter()
        .find(|(k, _)| *k == "general.alignment")
        .and_then(|(_, v)| match v {
            GgufValue::U32(a) if a.is_power_of_two() => Some(u64::from(*a)),
            _ => None,
        })
        .unwrap_or(32);
    let mut f = b"GGUF".to_vec();
    f.extend_from_slice(&3u32.to_le_bytes());
    f.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    f.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        put_str(&mut f, k.as_bytes());
        f.extend_from_slice(&v.type_tag().to_le_bytes());
        put_value(&mut f, v);
    }
    let mut offset = 0u64;
    for (name, ty, dims, bytes) in tensors {
        put_str(&mut f, name.as_bytes());
        f.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            f.extend_from_slice(&d.to_le_bytes());
        }
        f.extend_from_slice(&ty.to_le_bytes());
        f.extend_from_slice(&offset.to_le_bytes());
        offset = (offset + bytes.len() as u64).next_multiple_of(alignment);
    }
    pad_to(&mut f, alignment);
    for (_, _, _, bytes) in tensors {
        f.extend_from_slice(bytes);
        pad_to(&mut f, alignment);
    }
    f
}

fn pad_to(f: &mut Vec<u8>, alignment: u64) {
    let len = (f.len() as u64).next_multiple_of(alignment);
    f.resize(len as usize, 0);
}

fn put_str(f: &mut Vec<u8>, s: &[u8]) {
    f.extend_from_slice(&(s.len() as u64).to_le_bytes());
    f.extend_from_slice(s);
}

fn put_value(f: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => f.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I8(x) => f.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U16(x) => f.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => f.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => f.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => f.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U64(x) => f.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => f.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => f.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => f.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => f.push(u8::from(*x)),
        GgufValue::String(s) => put_str(f, s.as_bytes()),
        GgufValue::Array(items) => {
            let ty = items.first().map_or(value_type::U32, GgufValue::type_tag);
            f.extend_from_slice(&ty.to_le_bytes());
            f.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(f, item);
            }
        }
        GgufValue::ArrayLen { elem_type, len } => {
            f.extend_from_slice(&elem_type.to_le_bytes());
            f.extend_from_slice(&len.to_le_bytes());
            for _ in 0..*len {
                match *elem_type {
                    value_type::STRING => put_str(f, b""),
                    value_type::ARRAY => {
                        f.extend_from_slice(&value_type::U8.to_le_bytes());
                        f.extend_from_slice(&0u64.to_le_bytes());
                    }
                    ty => {
                        let size = match ty {
                            value_type::U16 | value_type::I16 => 2,
                            value_type::U32 | value_type::I32 | value_type::F32 => 4,
                            value_type::U64 | value_type::I64 | value_type::F64 => 8,
                            _ => 1,
                        };
                        f.resize(f.len() + size, 0);
                    }
                }
            }
        }
    }
}

/// `len` deterministic, incompressible-looking bytes (xorshift64 seeded from `seed`): test data
/// that chunks like real weights and never deduplicates by accident.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `len` bytes that do not repeat (so every chunk of them is distinct), the same for a seed.
pub fn noise(seed: u8, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    blake3::Hasher::new()
        .update(&[seed])
        .finalize_xof()
        .fill(&mut bytes);
    bytes
}
