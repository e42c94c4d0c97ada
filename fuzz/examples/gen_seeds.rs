//! Writes the checked-in seed corpora, `corpus/<target>/seed-*`, from the store's test
//! generators: `cargo run --example gen_seeds` (in fuzz/). Deterministic, so rerunning it
//! leaves git clean unless a generator changed.

use std::path::Path;

use store::formats::gguf::GGML_TYPE_Q8_0;
use store::formats::gguf::{value_type, GgufValue, GGML_TYPE_BF16, GGML_TYPE_F16, GGML_TYPE_F32};
use store::formats::testgen::{make_gguf, make_safetensors};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("create corpus dir");
    std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
}

fn safetensors_seeds() {
    let t = "safetensors_header";
    write(t, "empty-header", &make_safetensors(&[]));
    write(
        t,
        "three-tensors",
        &make_safetensors(&[
            ("w", "BF16", vec![2, 3], vec![7; 12]),
            ("b", "F32", vec![3], vec![9; 12]),
            ("odd", "U8", vec![5], vec![5; 5]),
        ]),
    );
    write(
        t,
        "one-tensor",
        &make_safetensors(&[("model.embed_tokens.weight", "F16", vec![4, 2], vec![1; 16])]),
    );
    // Gaps between tensors and an empty tensor, written by hand.
    let header = r#"{"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},"b":{"dtype":"I8","shape":[5],"data_offsets":[5,10]},"c":{"dtype":"F8_E4M3","shape":[0],"data_offsets":[10,10]},"__metadata__":{"format":"mlx"}}"#;
    let mut f = (header.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(header.as_bytes());
    f.extend_from_slice(&[0x11; 12]);
    write(t, "gaps", &f);
}

fn gguf_seeds() {
    let t = "gguf_header";
    write(t, "empty", &make_gguf(&[], &[]));
    let kvs = vec![
        ("general.architecture", GgufValue::String("llama".into())),
        ("general.name", GgufValue::String("tiny".into())),
        ("general.size_label", GgufValue::String("1B".into())),
        ("general.file_type", GgufValue::U32(7)),
        ("general.alignment", GgufValue::U32(16)),
        ("llama.rope.freq_base", GgufValue::F32(10000.0)),
        ("llama.context_length", GgufValue::U64(4096)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            GgufValue::F64(1e-5),
        ),
        ("tokenizer.ggml.add_bos_token", GgufValue::Bool(true)),
        ("tokenizer.ggml.bos_token_id", GgufValue::I32(1)),
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
        (
            "tokenizer.ggml.merges",
            GgufValue::ArrayLen {
                elem_type: value_type::STRING,
                len: 1030,
            },
        ),
    ];
    let tensors = vec![
        ("tok_embd.weight", GGML_TYPE_F16, vec![3, 7], vec![0xa1; 42]),
        ("norm.weight", GGML_TYPE_F32, vec![5], vec![0xb2; 20]),
        ("out.weight", GGML_TYPE_Q8_0, vec![32], vec![0xc3; 34]),
        ("bf.weight", GGML_TYPE_BF16, vec![2, 2], vec![0xd4; 8]),
    ];
    write(t, "llama", &make_gguf(&kvs, &tensors));
    write(
        t,
        "default-alignment",
        &make_gguf(
            &[("general.architecture", GgufValue::String("qwen2".into()))],
            &[("t0", GGML_TYPE_F32, vec![3], vec![1; 12])],
        ),
    );
    // Version 2: the same layout with a different version number.
    let mut v2 = make_gguf(
        &[("general.alignment", GgufValue::U64(8))],
        &[("t", GGML_TYPE_F16, vec![1, 1, 1, 2], vec![2; 4])],
    );
    v2[4..8].copy_from_slice(&2u32.to_le_bytes());
    write(t, "v2", &v2);
}

fn manifest_seeds() {
    let t = "ollama_manifest";
    let d = |c: char| c.to_string().repeat(64);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:{}","size":485}},"layers":[{{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:{}","size":1117320736}},{{"mediaType":"application/vnd.ollama.image.template","digest":"sha256:{}","size":1429}},{{"mediaType":"application/vnd.ollama.image.license","digest":"sha256:{}","size":7711}},{{"mediaType":"application/vnd.ollama.image.params","digest":"sha256:{}","size":96}}]}}"#,
        d('a'),
        "0123456789abcdef".repeat(4),
        d('b'),
        d('c'),
        d('d')
    );
    write(t, "full", manifest.as_bytes());
    let minimal = format!(r#"{{"layers":[{{"digest":"sha256:{}"}}]}}"#, d('e'));
    write(t, "minimal", minimal.as_bytes());
    write(t, "no-layers", br#"{"schemaVersion":2,"layers":[]}"#);
    let traversal = r#"{"layers":[{"digest":"sha256:../../../../etc/passwd","size":1}]}"#;
    write(t, "traversal", traversal.as_bytes());
}

fn request_seeds() {
    let t = "status_request";
    let lines: &[(&str, &str)] = &[
        ("status", r#"{"v":1,"cmd":"status"}"#),
        ("models", r#"{"v":1,"cmd":"models"}"#),
        ("watch", r#"{"v":1,"cmd":"watch","interval_ms":250}"#),
        ("watch-null", r#"{"v":1,"cmd":"watch","interval_ms":null}"#),
        (
            "import",
            r#"{"v":1,"cmd":"import","paths":["/root/.cache/huggingface/hub","/var/lib/ollama"]}"#,
        ),
        (
            "bad-version",
            r#"{"v":"éééééééééééééééééééé","cmd":"status"}"#,
        ),
        ("unknown", r#"{"v":1,"cmd":"stats"}"#),
        // A stream for the line reader: two bytes of parameters, then lines.
        (
            "stream",
            "\u{7}\u{40}{\"v\":1,\"cmd\":\"status\"}\r\n\n{\"v\":1,\"cmd\":\"models\"}\n{\"v\":1",
        ),
    ];
    for (name, line) in lines {
        write(t, name, line.as_bytes());
    }
}

fn main() {
    safetensors_seeds();
    gguf_seeds();
    manifest_seeds();
    request_seeds();
}
