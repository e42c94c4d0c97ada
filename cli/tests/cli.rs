//! End-to-end tests of the `mlxfs` binary: import, status, cat, ls, rm, gc, verify, scan.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use store::formats::testgen::{make_gguf, make_safetensors};

/// SHA-256 in hex (the store crate's, so no extra dev-dependency).
fn sha256_hex(data: &[u8]) -> String {
    store::ingest::sha256(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn store(&self) -> PathBuf {
        self.path("store")
    }

    fn mlxfs(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_mlxfs"))
            .arg("--store")
            .arg(self.store())
            .args(args)
            .env_remove("MLXFS_STORE")
            .env_remove("MLXFS_LOG")
            .env("HOME", self.tmp.path())
            .output()
            .unwrap()
    }

    /// Runs and checks the exit code, returning stdout.
    fn ok(&self, args: &[&str], code: i32) -> String {
        let out = self.mlxfs(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "mlxfs {args:?}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str], code: i32) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all, code)).unwrap()
    }

    fn status(&self) -> Value {
        self.json(&["status"], 0)
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Deterministic incompressible-looking bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    store::formats::testgen::pseudo_random(len, seed)
}

fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

/// An HF repo with one safetensors blob (tensors from `seeds`), config.json, refs/main and
/// snapshot symlinks. Returns (weights bytes, etag).
fn hf_repo(hub: &Path, repo: &str, seeds: &[u64]) -> (Vec<u8>, String) {
    let names: Vec<String> = (0..seeds.len())
        .map(|i| format!("layers.{i}.weight"))
        .collect();
    let tensors: Vec<(&str, &str, Vec<u64>, Vec<u8>)> = seeds
        .iter()
        .zip(&names)
        .map(|(&seed, name)| {
            (
                name.as_str(),
                "F16",
                vec![256, 512],
                noise(seed, 256 * 512 * 2),
            )
        })
        .collect();
    let weights = make_safetensors(&tensors);
    let etag = sha256_hex(&weights);
    let dir = hub.join(format!("models--{}", repo.replace('/', "--")));
    write(&dir.join("blobs").join(&etag), &weights);
    let config = format!(r#"{{"model_type": "llama", "name": "{repo}"}}"#).into_bytes();
    let config_etag = sha256_hex(&config); // any name works for small files; use a 64-hex one
    write(&dir.join("blobs").join(&config_etag), &config);
    write(&dir.join("refs/main"), COMMIT.as_bytes());
    let snap = dir.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snap).unwrap();
    symlink(
        format!("../../blobs/{etag}"),
        snap.join("model.safetensors"),
    )
    .unwrap();
    symlink(
        format!("../../blobs/{config_etag}"),
        snap.join("config.json"),
    )
    .unwrap();
    (weights, etag)
}

/// An Ollama models dir with one GGUF model. Returns the GGUF bytes.
fn ollama_model(root: &Path, model: &str, seed: u64) -> Vec<u8> {
    let gguf = make_gguf(
        &[],
        &[(
            "token_embd.weight",
            1,
            vec![512, 256],
            noise(seed, 512 * 256 * 2),
        )],
    );
    let config =
        br#"{"model_format":"gguf","model_family":"llama","architecture":"amd64","os":"linux"}"#;
    let (g, c) = (sha256_hex(&gguf), sha256_hex(config));
    write(&root.join(format!("blobs/sha256-{g}")), &gguf);
    write(&root.join(format!("blobs/sha256-{c}")), config);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:{c}","size":{}}},"layers":[{{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:{g}","size":{}}}]}}"#,
        config.len(),
        gguf.len()
    );
    write(
        &root.join(format!(
            "manifests/registry.ollama.ai/library/{model}/latest"
        )),
        manifest.as_bytes(),
    );
    gguf
}

/// Sum of sizes and count of regular files under `dir` (symlinks not followed).
fn tree_bytes(dir: &Path) -> (u64, u64) {
    let mut total = (0, 0);
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = entry.path().symlink_metadata().unwrap();
        if meta.is_dir() {
            let (b, n) = tree_bytes(&entry.path());
            total = (total.0 + b, total.1 + n);
        } else if meta.is_file() {
            total = (total.0 + meta.len(), total.1 + 1);
        }
    }
    total
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn import_status_cat_and_idempotent_reimport() {
    let env = Env::new();
    let hub = env.path("hub");
    let (weights, _) = hf_repo(&hub, "org/base", &[1, 2, 3]);
    let ollama = env.path("ollama");
    let gguf = ollama_model(&ollama, "tiny", 9);

    let report = env.json(&["import", s(&hub), s(&ollama)], 0);
    assert_eq!(u(&report, "files"), 6);
    assert_eq!(u(&report, "symlinks"), 2);
    assert!(report["skipped"].as_array().unwrap().is_empty());

    let (hub_bytes, hub_files) = tree_bytes(&hub);
    let (ol_bytes, ol_files) = tree_bytes(&ollama);
    let status = env.status();
    assert_eq!(status["exists"], true);
    assert_eq!(u(&status, "files"), hub_files + ol_files);
    assert_eq!(u(&status, "logical_bytes"), hub_bytes + ol_bytes);
    assert_eq!(u(&report, "bytes"), hub_bytes + ol_bytes);
    let physical = u(&status, "physical_bytes");
    assert!(physical > 0 && physical <= u(&status, "logical_bytes"));
    assert_eq!(
        u(&status, "saved_bytes"),
        u(&status, "logical_bytes") - physical
    );
    assert_eq!(u(&status, "models"), 2);
    assert_eq!(status["models_by_layout"]["hf"], 1);
    assert_eq!(status["models_by_layout"]["ollama"], 1);
    assert!(u(&status, "chunks") >= 4);
    assert!(u(&status, "pack_bytes") >= physical);
    assert!(u(&status, "catalog_bytes") > 0);
    assert_eq!(status["mounted"], false);
    assert_eq!(status["schema_version"], store::catalog::SCHEMA_VERSION);

    // cat follows the snapshot symlink inside the namespace.
    let snap = format!("huggingface/hub/models--org--base/snapshots/{COMMIT}/model.safetensors");
    let out = env.mlxfs(&["cat", &snap]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout == weights, "cat returned different bytes");
    let g = format!("ollama/models/blobs/sha256-{}", sha256_hex(&gguf));
    assert!(env.mlxfs(&["cat", &g]).stdout == gguf);
    assert_eq!(
        env.ok(&["cat", "huggingface/hub/models--org--base/refs/main"], 0),
        COMMIT
    );
    let err = env.mlxfs(&["cat", "huggingface/hub"]);
    assert_eq!(err.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&err.stderr).contains("is a directory"));

    // ls
    let ls = env.json(&["ls"], 0);
    let models = ls["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    let base = models.iter().find(|m| m["name"] == "org/base").unwrap();
    assert_eq!(base["layout"], "hf");
    assert_eq!(base["revision"], COMMIT);
    assert_eq!(u(base, "logical_bytes"), hub_bytes - COMMIT.len() as u64);
    let human = env.ok(&["ls"], 0);
    assert!(human.contains("org/base") && human.contains("registry.ollama.ai/library/tiny"));

    // Second import: nothing new.
    let again = env.json(&["import", s(&hub), s(&ollama)], 0);
    assert_eq!(u(&again, "new_bytes"), 0);
    let status2 = env.status();
    assert_eq!(u(&status2, "physical_bytes"), physical);
    assert_eq!(u(&status2, "files"), u(&status, "files"));
    assert_eq!(u(&status2, "logical_bytes"), u(&status, "logical_bytes"));

    let human = env.ok(&["status"], 0);
    assert!(
        human.contains("logical") && human.contains("KiB"),
        "{human}"
    );
}

#[test]
fn dedup_across_layouts_and_rm_gc() {
    let env = Env::new();
    let hub = env.path("hub");
    hf_repo(&hub, "org/base", &[1, 2, 3]);
    // A fine-tune sharing two of three tensors, and an unrelated model.
    hf_repo(&hub, "org/tuned", &[1, 2, 4]);
    hf_repo(&hub, "org/other", &[7, 8]);
    env.json(&["import", s(&hub)], 0);
    let before = env.status();
    let tensor = 256 * 512 * 2;
    // Shared tensors stored once: at most 6 distinct tensors plus small files.
    assert!(u(&before, "physical_bytes") < 6 * tensor + 8192, "{before}");
    assert!(u(&before, "saved_bytes") >= 2 * tensor);

    let out = env.ok(&["rm", "huggingface/hub/models--org--other"], 1);
    assert!(out.is_empty());
    env.ok(&["rm", "-r", "huggingface/hub/models--org--other"], 0);
    let rm_missing = env.mlxfs(&["rm", "huggingface/hub/nope"]);
    assert_eq!(rm_missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&rm_missing.stderr).contains("no such file"));
    let gc = env.json(&["gc"], 0);
    assert!(u(&gc, "chunks_removed") >= 2, "{gc}");
    assert!(u(&gc, "bytes_removed") >= 2 * tensor);
    let after = env.status();
    assert!(u(&after, "physical_bytes") + 2 * tensor <= u(&before, "physical_bytes"));
    assert!(
        u(&after, "pack_bytes") < u(&before, "pack_bytes"),
        "gc should compact: {gc}"
    );
    assert_eq!(u(&after, "models"), 2);
    let cat = env.mlxfs(&["cat", "huggingface/hub/models--org--other/refs/main"]);
    assert_eq!(cat.status.code(), Some(1));
    // What is left still verifies.
    env.ok(&["verify"], 0);
}

#[test]
fn verify_names_the_damaged_file() {
    let env = Env::new();
    let hub = env.path("hub");
    let (_, etag) = hf_repo(&hub, "org/base", &[1, 2, 3, 4]);
    env.json(&["import", s(&hub)], 0);
    let clean = env.json(&["verify"], 0);
    assert_eq!(clean["ok"], true);

    // Flip one byte in the middle of the (only) pack: inside the weights' tensor data.
    let pack = std::fs::read_dir(env.store().join("packs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .max_by_key(|p| p.metadata().unwrap().len())
        .unwrap();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pack)
        .unwrap();
    let mid = f.metadata().unwrap().len() / 2;
    let mut byte = [0u8];
    f.seek(SeekFrom::Start(mid)).unwrap();
    f.read_exact(&mut byte).unwrap();
    f.seek(SeekFrom::Start(mid)).unwrap();
    f.write_all(&[byte[0] ^ 0x01]).unwrap();
    drop(f);

    let out = env.mlxfs(&["verify"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let blob = format!("huggingface/hub/models--org--base/blobs/{etag}");
    assert!(text.contains(&format!("damaged: {blob}")), "{text}");
    let report = env.json(&["verify"], 1);
    assert_eq!(report["ok"], false);
    assert_eq!(report["damaged"][0]["paths"][0], blob.as_str());
    // Reading the damaged file fails instead of returning wrong bytes.
    let cat = env.mlxfs(&["cat", &blob]);
    assert_eq!(cat.status.code(), Some(1));
}

#[test]
fn scan_reports_and_writes_nothing() {
    let env = Env::new();
    let hub = env.path("hub");
    hf_repo(&hub, "org/base", &[1, 2, 3]);
    hf_repo(&hub, "org/tuned", &[1, 2, 4]);
    let ollama = env.path("ollama");
    ollama_model(&ollama, "tiny", 9);
    let report = env.json(&["scan", s(&hub), s(&ollama)], 0);
    assert!(!env.store().exists(), "scan created the store");
    let (hub_bytes, _) = tree_bytes(&hub);
    let (ol_bytes, _) = tree_bytes(&ollama);
    assert_eq!(u(&report, "logical_bytes"), hub_bytes + ol_bytes);
    let tensor = 256 * 512 * 2;
    assert!(u(&report, "saved_bytes") >= 2 * tensor, "{report}");
    assert_eq!(
        u(&report, "logical_bytes"),
        u(&report, "deduped_bytes") + u(&report, "saved_bytes")
    );
    let models = report["models"].as_array().unwrap();
    assert_eq!(models.len(), 3);
    for m in models {
        for key in ["layout", "name", "logical_bytes", "unique_bytes"] {
            assert!(!m[key].is_null(), "{key} missing in {m}");
        }
    }
    let tuned = models.iter().find(|m| m["name"] == "org/tuned").unwrap();
    assert!(u(tuned, "unique_bytes") < 2 * tensor, "{tuned}");
    assert!(env.ok(&["scan", s(&hub)], 0).contains("org/tuned"));

    // Import, then scan again against the store: nothing new, and the store is untouched.
    env.json(&["import", s(&hub), s(&ollama)], 0);
    let listing = |d: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name(),
                    e.metadata().unwrap().len(),
                    e.metadata().unwrap().modified().unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = listing(&env.store());
    let again = env.json(&["scan", s(&hub), s(&ollama)], 0);
    assert_eq!(again["compared_with_store"], true);
    assert_eq!(u(&again, "deduped_bytes"), 0, "{again}");
    assert_eq!(listing(&env.store()), before);
}

#[test]
fn hostile_symlinks_are_not_followed() {
    let env = Env::new();
    let secret = noise(42, 5000);
    write(&env.path("secret.bin"), &secret);
    let hub = env.path("hub");
    hf_repo(&hub, "org/base", &[1]);
    let snap = hub.join("models--org--base/snapshots").join(COMMIT);
    symlink("../../../../secret.bin", snap.join("escape")).unwrap();
    symlink(env.path("secret.bin"), snap.join("absolute")).unwrap();
    symlink(env.tmp.path(), hub.join("models--org--base/outside_dir")).unwrap();

    let out = env.mlxfs(&["import", s(&hub)]);
    assert_eq!(out.status.code(), Some(3), "exit 3: completed with skips");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for name in ["escape", "absolute", "outside_dir"] {
        assert!(
            stderr.lines().any(|l| l.starts_with("skipped: ")
                && l.contains(name)
                && l.contains("not followed")),
            "{name}: {stderr}"
        );
    }
    let nsdir = format!("huggingface/hub/models--org--base/snapshots/{COMMIT}");
    assert_eq!(
        env.mlxfs(&["cat", &format!("{nsdir}/escape")])
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        env.mlxfs(&["cat", &format!("{nsdir}/absolute")])
            .status
            .code(),
        Some(1)
    );
    let (hub_bytes, _) = tree_bytes(&hub);
    assert_eq!(
        u(&env.status(), "logical_bytes"),
        hub_bytes,
        "no byte from outside the tree"
    );
}

#[test]
fn lying_blobs_are_skipped_with_exit_3() {
    let env = Env::new();
    let ollama = env.path("ollama");
    ollama_model(&ollama, "tiny", 9);
    let liar = format!("sha256-{}", "0".repeat(64));
    write(
        &ollama.join("blobs").join(&liar),
        b"these bytes do not hash to zeros",
    );
    write(
        &ollama.join("blobs").join(format!("{liar}-partial")),
        b"half a download",
    );
    let out = env.mlxfs(&["import", s(&ollama)]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "skipped: {}: content SHA-256",
            ollama.join("blobs").join(&liar).display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("partial download"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported 3 files"));
    assert_eq!(
        env.mlxfs(&["cat", &format!("ollama/models/blobs/{liar}")])
            .status
            .code(),
        Some(1)
    );
}

#[test]
fn missing_store_and_bad_paths() {
    let env = Env::new();
    let status = env.status();
    assert_eq!(status["exists"], false);
    assert_eq!(u(&status, "logical_bytes"), 0);
    assert_eq!(u(&status, "physical_bytes"), 0);
    assert_eq!(status["store"], s(&env.store()));
    assert!(env.ok(&["status"], 0).contains("no store"));
    assert_eq!(env.json(&["ls"], 0)["models"].as_array().unwrap().len(), 0);
    assert_eq!(env.mlxfs(&["verify"]).status.code(), Some(1));
    assert!(
        !env.store().exists(),
        "read-only commands must not create the store"
    );

    let plain = env.path("plain");
    std::fs::create_dir_all(&plain).unwrap();
    let out = env.mlxfs(&["import", s(&plain)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a Hugging Face hub cache"));
    assert!(
        !env.store().exists(),
        "an unrecognised PATH must not create the store"
    );
    assert_eq!(env.mlxfs(&["import"]).status.code(), Some(2), "usage error");
}

#[test]
fn locked_store_says_so() {
    let env = Env::new();
    let hub = env.path("hub");
    hf_repo(&hub, "org/base", &[1]);
    env.json(&["import", s(&hub)], 0);
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(env.store().join("lock"))
        .unwrap();
    // SAFETY: flock on a file we own, released when it is dropped.
    assert_eq!(
        unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&lock),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        },
        0
    );
    std::fs::write(env.store().join("lock"), std::process::id().to_string()).unwrap();
    for args in [
        &["rm", "huggingface/hub/models--org--base"][..],
        &["gc"],
        &["import", s(&hub)],
    ] {
        let out = env.mlxfs(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("is locked by another mlxfs process"),
            "{args:?}"
        );
    }
    let status = env.status();
    assert_eq!(u(&status, "in_use_by_pid"), u64::from(std::process::id()));
    assert!(u(&status, "files") > 0);
    let ls = env.json(&["ls"], 0);
    assert_eq!(ls["sizes_available"], false);
    assert_eq!(ls["models"].as_array().unwrap().len(), 1);
    drop(lock);
}
