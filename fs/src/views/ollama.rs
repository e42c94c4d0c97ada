//! Ollama's layout for models that arrived some other way, and Ollama's own models for the
//! other views.
//!
//! For each GGUF in an HF snapshot: `ollama/models/blobs/sha256-<sha256 of the GGUF>` is the HF
//! blob itself (same inode), a config blob is synthesized from the GGUF metadata and named by
//! its own digest, and a manifest at `manifests/hf.co/<org>/<repo>/<tag>` ties them together, so
//! `ollama list` and Ollama's loader accept the model as if pulled. Real files always win.

use std::collections::HashMap;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use store::formats::gguf;
use store::models::{parse_ollama_manifest, OLLAMA_ROOT, SMALL_FILE_MAX};
use store::{Store, ROOT_INO};

use super::hf::HfRepo;
use super::{lmstudio, Target, TreeBuilder, Views};
use crate::errno::FsResult;

pub const MODEL_MEDIA_TYPE: &str = "application/vnd.ollama.image.model";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.docker.container.image.v1+json";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// What the synthesized config needs from a GGUF header, cached per content.
#[derive(Debug, Clone, Default)]
pub struct GgufSummary {
    pub architecture: Option<String>,
    pub file_type: Option<u64>,
    pub size_label: Option<String>,
}

#[derive(Default)]
pub struct GgufCache {
    by_content: Mutex<HashMap<i64, GgufSummary>>,
}

/// Ollama's names for llama.cpp's `general.file_type` values.
pub fn file_type_name(file_type: u64) -> Option<&'static str> {
    Some(match file_type {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        _ => return None,
    })
}

/// The quantization named in a GGUF file name (`model-Q4_K_M.gguf` → `Q4_K_M`), else the stem.
pub fn tag_for(file_name: &str) -> String {
    let stem = file_name.strip_suffix(".gguf").unwrap_or(file_name);
    let upper = stem.to_ascii_uppercase();
    let tokens: Vec<&str> = upper.split(['-', '.']).collect();
    for token in tokens.iter().rev() {
        if is_quant(token) {
            return token.to_string();
        }
    }
    stem.to_string()
}

fn is_quant(token: &str) -> bool {
    const PLAIN: &[&str] = &["F16", "F32", "BF16", "FP16", "FP32"];
    if PLAIN.contains(&token) {
        return true;
    }
    let rest = token.strip_prefix("IQ").or_else(|| token.strip_prefix('Q'));
    match rest {
        Some(r) => {
            let mut chars = r.chars();
            chars.next().is_some_and(|c| c.is_ascii_digit())
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        None => false,
    }
}

impl GgufCache {
    fn summary(&self, store: &Store, content: i64) -> GgufSummary {
        if let Some(s) = self.by_content.lock().get(&content) {
            return s.clone();
        }
        let summary = read_summary(store, content).unwrap_or_default();
        self.by_content.lock().insert(content, summary.clone());
        summary
    }
}

fn read_summary(store: &Store, content: i64) -> Option<GgufSummary> {
    let map = store.catalog().read(|tx| tx.content_map(content)).ok()?;
    // Headers with big vocabularies run to megabytes: read more only when a parse says so.
    for limit in [4u64 << 20, 64 << 20, 512 << 20] {
        let len = limit.min(map.size) as usize;
        let mut buf = vec![0u8; len];
        let n = store.read(&map, 0, &mut buf).ok()?;
        buf.truncate(n);
        match gguf::parse(&buf) {
            Ok(header) => {
                return Some(GgufSummary {
                    architecture: header.get_str("general.architecture").map(str::to_string),
                    file_type: header.get_u64("general.file_type"),
                    size_label: header.get_str("general.size_label").map(str::to_string),
                })
            }
            Err(gguf_error) if len as u64 >= map.size => {
                tracing::debug!(content, error = %gguf_error, "GGUF header unreadable");
                return None;
            }
            Err(_) => continue,
        }
    }
    None
}

/// The config blob Ollama writes for a GGUF model.
pub fn config_json(summary: &GgufSummary, tag: &str) -> Vec<u8> {
    let family = summary
        .architecture
        .clone()
        .unwrap_or_else(|| "unknown".into());
    let file_type = summary
        .file_type
        .and_then(file_type_name)
        .map(str::to_string)
        .unwrap_or_else(|| tag.to_string());
    let config = serde_json::json!({
        "model_format": "gguf",
        "model_family": family,
        "model_families": [family],
        "model_type": summary.size_label.clone().unwrap_or_else(|| "unknown".into()),
        "file_type": file_type,
        "architecture": "amd64",
        "os": "linux",
    });
    serde_json::to_vec(&config).unwrap_or_default()
}

pub fn manifest_json(
    config_digest: &str,
    config_size: usize,
    model_digest: &str,
    model_size: u64,
) -> Vec<u8> {
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": format!("sha256:{config_digest}"), "size": config_size},
        "layers": [{"mediaType": MODEL_MEDIA_TYPE, "digest": format!("sha256:{model_digest}"), "size": model_size}],
    });
    serde_json::to_vec(&manifest).unwrap_or_default()
}

pub(crate) fn build(views: &Views, repos: &[HfRepo], builder: &mut TreeBuilder) -> FsResult<()> {
    let store = views.store();
    // Ollama creates these itself; making them real up front keeps every synthesized name
    // inside a real, writable directory.
    let mut wanted_dirs: Vec<Vec<String>> = vec![vec!["blobs".into()], vec!["manifests".into()]];
    let mut ggufs = Vec::new();
    for repo in repos {
        for file in repo.files.iter().filter(|f| f.path.ends_with(".gguf")) {
            let Some(content) = file.content else {
                continue;
            };
            let name = file
                .path
                .rsplit('/')
                .next()
                .unwrap_or(&file.path)
                .to_string();
            let tag = tag_for(&name);
            if !super::safe_component(&tag) {
                continue;
            }
            wanted_dirs.push(vec![
                "manifests".into(),
                "hf.co".into(),
                repo.org.clone(),
                repo.name.clone(),
            ]);
            ggufs.push((repo, file, content, tag));
        }
    }
    let root: Vec<&str> = OLLAMA_ROOT.split('/').collect();
    let paths: Vec<Vec<&[u8]>> = wanted_dirs
        .iter()
        .map(|dir| {
            root.iter()
                .map(|p| p.as_bytes())
                .chain(dir.iter().map(|p| p.as_bytes()))
                .collect()
        })
        .collect();
    // Views are rebuilt after every namespace change; a write transaction is only needed the
    // first time a directory is missing.
    let existing: Option<Vec<u64>> = store.catalog().read(|tx| {
        let mut out = Vec::with_capacity(paths.len());
        for parts in &paths {
            let mut dir = ROOT_INO;
            for part in parts {
                match tx.lookup(dir, part)? {
                    Some(ino) => dir = ino,
                    None => return Ok(None),
                }
            }
            out.push(dir);
        }
        Ok(Some(out))
    })?;
    let dirs: Vec<u64> = match existing {
        Some(dirs) => dirs,
        None => store.catalog().write(|tx| {
            let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
            paths
                .iter()
                .map(|parts| tx.mkdir_p(parts, 0o755, uid, gid))
                .collect()
        })?,
    };
    let (blobs_dir, manifests_dir) = (dirs[0], dirs[1]);

    let mut seen_models: HashMap<String, ()> = HashMap::new();
    for (i, (repo, file, content, tag)) in ggufs.into_iter().enumerate() {
        let Some(sha) = store.catalog().read(|tx| tx.content_sha256(content))? else {
            continue;
        };
        let model_digest = hex::encode(sha);
        let summary = views.gguf_cache.summary(store, content);
        let config = config_json(&summary, &tag);
        let config_digest = hex::encode(Sha256::digest(&config));
        let manifest = manifest_json(&config_digest, config.len(), &model_digest, file.size);
        let repo_dir = dirs[2 + i];
        let key = format!("{}/{}/{}", repo.org, repo.name, tag);
        if seen_models.insert(key.clone(), ()).is_some() {
            continue;
        }
        builder.add_overlay(
            blobs_dir,
            &format!("sha256-{model_digest}"),
            Target::Real(file.ino),
        );
        let config_target = builder.synth(&format!("config:{config_digest}"), blobs_dir, config);
        builder.add_overlay(blobs_dir, &format!("sha256-{config_digest}"), config_target);
        let manifest_target = builder.synth(&format!("manifest:{key}"), repo_dir, manifest);
        builder.add_overlay(repo_dir, &tag, manifest_target);
    }
    add_ollama_models(store, blobs_dir, manifests_dir, builder)
}

/// Real Ollama manifests (`manifests/<host>/<namespace>/<model>/<tag>`) → lmstudio entries.
fn add_ollama_models(
    store: &Store,
    blobs_dir: u64,
    manifests_dir: u64,
    builder: &mut TreeBuilder,
) -> FsResult<()> {
    let found = store.catalog().read(|tx| {
        let mut files = Vec::new();
        tx.walk_files(manifests_dir, "", &mut files)?;
        let mut models = Vec::new();
        for (path, ino) in files {
            let parts: Vec<&str> = path.split('/').collect();
            if parts.len() != 4 {
                continue;
            }
            let Some(buf) = tx.read_small_file(store, ino, SMALL_FILE_MAX)? else {
                continue;
            };
            let manifest = match parse_ollama_manifest(&buf) {
                Ok(m) => m,
                Err(e) => {
                    tracing::debug!(path, error = %e, "skipping Ollama manifest");
                    continue;
                }
            };
            let Some((digest, _, _)) = manifest
                .layers
                .iter()
                .find(|(_, media, _)| media == MODEL_MEDIA_TYPE)
            else {
                continue;
            };
            let Some(blob) = tx.lookup(blobs_dir, format!("sha256-{digest}").as_bytes())? else {
                continue;
            };
            models.push((
                parts[1].to_string(),
                parts[2].to_string(),
                parts[3].to_string(),
                blob,
            ));
        }
        Ok(models)
    })?;
    for (namespace, model, tag, blob) in found {
        lmstudio::add_ollama_model(builder, &namespace, &model, &tag, blob);
    }
    Ok(())
}
