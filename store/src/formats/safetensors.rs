//! safetensors header parsing.
//!
//! Layout: an 8-byte little-endian header length `N`, then `N` bytes of a UTF-8 JSON object
//! mapping tensor names to `{"dtype", "shape", "data_offsets": [begin, end]}` plus an optional
//! `"__metadata__"` string map, then the tensor data. Data offsets are relative to `8 + N`.

use std::collections::BTreeMap;

use serde_json::Value;

use super::FormatError;

/// Upper bound on the JSON header. The reference implementation uses the same 100 MB limit;
/// it keeps a hostile length from making us parse (or a caller from mapping) absurd headers.
pub const MAX_HEADER_LEN: u64 = 100 * 1024 * 1024;

const METADATA_KEY: &str = "__metadata__";

/// One tensor, with absolute file offsets: its bytes are `data[start..end]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<u64>,
    pub start: u64,
    pub end: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetensorsHeader {
    /// `8 + N`: where the tensor data section begins.
    pub header_end: u64,
    /// Sorted by `start` (then name), not in JSON order: callers want file order.
    pub tensors: Vec<TensorInfo>,
    pub metadata: BTreeMap<String, String>,
}

/// Parse and validate the header of a whole safetensors file.
///
/// The tensor byte sizes are deliberately not checked against `dtype` and `shape`: new dtypes
/// (sub-byte floats, ...) keep appearing, and a wrong size cannot make a cut unsafe, only less
/// useful. Gaps between tensors are allowed; overlaps are not.
pub fn parse(data: &[u8]) -> Result<SafetensorsHeader, FormatError> {
    let file_len = data.len() as u64;
    let len_bytes: [u8; 8] =
        data.get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or(FormatError::Truncated {
                offset: 0,
                needed: 8,
                file_len,
            })?;
    let n = u64::from_le_bytes(len_bytes);
    let available = file_len - 8;
    if n > MAX_HEADER_LEN || n > available {
        return Err(FormatError::HeaderTooLarge {
            len: n,
            file_len,
            limit: MAX_HEADER_LEN.min(available),
        });
    }
    // `n <= available`, so both conversions and the slice are in range.
    let header_end = 8 + n;
    let header = &data[8..header_end as usize];
    // Cheap rejection of the many non-safetensors files that we are asked about, before
    // running a UTF-8 check and a JSON parser over up to 100 MB.
    if header.first() != Some(&b'{') {
        return Err(FormatError::BadJson(
            "header does not start with '{'".into(),
        ));
    }
    let text = std::str::from_utf8(header)
        .map_err(|e| FormatError::BadJson(format!("header is not UTF-8: {e}")))?;
    // serde_json limits nesting depth, so hostile JSON cannot overflow the stack.
    let root: BTreeMap<String, Value> =
        serde_json::from_str(text).map_err(|e| FormatError::BadJson(e.to_string()))?;

    let data_len = file_len - header_end;
    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(root.len());
    for (name, v) in root {
        if name == METADATA_KEY {
            metadata = parse_metadata(v)?;
        } else {
            tensors.push(parse_tensor(name, v, header_end, data_len)?);
        }
    }

    tensors.sort_by(|a, b| (a.start, a.end, &a.name).cmp(&(b.start, b.end, &b.name)));
    for w in tensors.windows(2) {
        if w[1].start < w[0].end {
            return Err(FormatError::BadOffsets {
                name: w[1].name.clone(),
                reason: format!("overlaps tensor {:?}", w[0].name),
            });
        }
    }
    Ok(SafetensorsHeader {
        header_end,
        tensors,
        metadata,
    })
}

fn parse_metadata(v: Value) -> Result<BTreeMap<String, String>, FormatError> {
    let Value::Object(map) = v else {
        return Err(FormatError::BadJson(format!(
            "{METADATA_KEY} is not an object"
        )));
    };
    map.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            // The format only allows string values; the reference loader rejects others too.
            _ => Err(FormatError::BadJson(format!(
                "{METADATA_KEY} value for {k:?} is not a string"
            ))),
        })
        .collect()
}

fn parse_tensor(
    name: String,
    v: Value,
    header_end: u64,
    data_len: u64,
) -> Result<TensorInfo, FormatError> {
    let bad = |what: &str| FormatError::BadJson(format!("tensor {name:?}: {what}"));
    let Value::Object(obj) = v else {
        return Err(bad("entry is not an object"));
    };
    let dtype = match obj.get("dtype") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(bad("missing or non-string dtype")),
    };
    let shape = match obj.get("shape") {
        Some(Value::Array(a)) => a
            .iter()
            .map(Value::as_u64)
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(|| bad("shape has a non-integer entry"))?,
        _ => return Err(bad("missing or non-array shape")),
    };
    let (begin, end) = match obj.get("data_offsets") {
        Some(Value::Array(a)) if a.len() == 2 => match (a[0].as_u64(), a[1].as_u64()) {
            (Some(b), Some(e)) => (b, e),
            _ => return Err(bad("data_offsets are not unsigned integers")),
        },
        _ => return Err(bad("data_offsets is not a pair")),
    };
    if begin > end {
        return Err(FormatError::BadOffsets {
            name,
            reason: format!("begin {begin} > end {end}"),
        });
    }
    if end > data_len {
        return Err(FormatError::BadOffsets {
            name,
            reason: format!("end {end} is past the data section ({data_len} bytes)"),
        });
    }
    // `end <= data_len = file_len - header_end`, so these additions cannot overflow.
    Ok(TensorInfo {
        name,
        dtype,
        shape,
        start: header_end + begin,
        end: header_end + end,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testgen::make_safetensors;
    use super::*;

    /// A file with a hand-written header and `data_len` zero bytes of data.
    fn raw(header: &str, data_len: usize) -> Vec<u8> {
        let mut f = (header.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(header.as_bytes());
        f.resize(f.len() + data_len, 0);
        f
    }

    fn sample() -> Vec<u8> {
        make_safetensors(&[
            ("w", "BF16", vec![2, 3], vec![7; 12]),
            ("b", "F32", vec![3], vec![9; 12]),
            ("odd", "U8", vec![5], vec![5; 5]),
        ])
    }

    #[test]
    fn parses_generated_file() {
        let f = sample();
        let h = parse(&f).unwrap();
        assert_eq!(h.header_end, (f.len() - 29) as u64);
        assert_eq!(h.metadata.get("format").map(String::as_str), Some("pt"));
        let names: Vec<_> = h.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["w", "b", "odd"], "tensors must come in file order");
        let w = &h.tensors[0];
        assert_eq!(
            (w.dtype.as_str(), w.shape.as_slice()),
            ("BF16", &[2, 3][..])
        );
        for (t, fill, len) in [
            (&h.tensors[0], 7, 12),
            (&h.tensors[1], 9, 12),
            (&h.tensors[2], 5, 5),
        ] {
            assert_eq!(t.end - t.start, len);
            assert!(f[t.start as usize..t.end as usize]
                .iter()
                .all(|&b| b == fill));
        }
    }

    #[test]
    fn truncation_anywhere_is_an_error() {
        let f = sample();
        for k in 0..f.len() {
            assert!(parse(&f[..k]).is_err(), "prefix of {k} bytes parsed");
        }
    }

    #[test]
    fn huge_header_lengths_are_rejected_without_allocating() {
        let mut f = sample();
        for n in [1u64 << 60, u64::MAX, MAX_HEADER_LEN + 1, f.len() as u64] {
            f[..8].copy_from_slice(&n.to_le_bytes());
            assert!(
                matches!(parse(&f), Err(FormatError::HeaderTooLarge { .. })),
                "length {n}"
            );
        }
    }

    #[test]
    fn bad_json_is_rejected() {
        let cases: &[&[u8]] = &[
            b"{\"a\": {\"dtype\": \"F16\", \"shape\": [1], \"data_offsets\": [0, 2]}",
            b"{\"\xff\xfe\": {\"dtype\": \"F16\", \"shape\": [1], \"data_offsets\": [0, 2]}}",
            b"[1, 2, 3]",
            b"{\"a\": 5}",
            b"{\"a\": {\"shape\": [1], \"data_offsets\": [0, 2]}}",
            b"{\"a\": {\"dtype\": \"F16\", \"shape\": [-1], \"data_offsets\": [0, 2]}}",
            b"{\"a\": {\"dtype\": \"F16\", \"shape\": [1], \"data_offsets\": [0]}}",
            b"{\"a\": {\"dtype\": \"F16\", \"shape\": [1], \"data_offsets\": [0, 2.5]}}",
            b"{\"__metadata__\": {\"k\": 1}}",
            b"{\"__metadata__\": []}",
        ];
        for h in cases {
            let mut f = (h.len() as u64).to_le_bytes().to_vec();
            f.extend_from_slice(h);
            f.extend_from_slice(&[0; 4]);
            let r = parse(&f);
            assert!(
                matches!(r, Err(FormatError::BadJson(_))),
                "{:?}: {r:?}",
                String::from_utf8_lossy(h)
            );
        }
    }

    #[test]
    fn deep_json_nesting_is_an_error_not_a_stack_overflow() {
        let h = format!("{{\"a\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(parse(&raw(&h, 0)), Err(FormatError::BadJson(_))));
    }

    #[test]
    fn bad_offsets_are_rejected() {
        let t = |name: &str, b: u64, e: u64| {
            format!(
                "\"{name}\": {{\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [{b}, {e}]}}"
            )
        };
        let cases = [
            // Out of range.
            format!("{{{}}}", t("a", 0, 11)),
            format!("{{{}}}", t("a", 11, 11)),
            format!("{{{}}}", t("a", 0, u64::MAX)),
            // begin > end.
            format!("{{{}}}", t("a", 5, 4)),
            // Overlapping.
            format!("{{{}, {}}}", t("a", 0, 6), t("b", 5, 10)),
            format!("{{{}, {}}}", t("a", 2, 4), t("b", 0, 10)),
            format!("{{{}, {}}}", t("a", 3, 6), t("b", 3, 6)),
        ];
        for h in &cases {
            let r = parse(&raw(h, 10));
            assert!(
                matches!(r, Err(FormatError::BadOffsets { .. })),
                "{h}: {r:?}"
            );
        }
        // Gaps and empty tensors are fine.
        let ok = format!(
            "{{{}, {}, {}}}",
            t("a", 0, 3),
            t("b", 5, 10),
            t("c", 10, 10)
        );
        let h = parse(&raw(&ok, 10)).unwrap();
        assert_eq!(h.tensors.len(), 3);
    }

    #[test]
    fn header_must_start_with_brace() {
        let r = parse(&raw(" {}", 0));
        assert!(matches!(r, Err(FormatError::BadJson(_))));
        assert!(parse(&raw("{}", 0)).unwrap().tensors.is_empty());
    }
}
