//! Where each model is visible in the views, computed from the catalog without a mount (for
//! `mlxfs ls` and the daemon's `models` answer).

use std::collections::HashMap;

use store::models::{parse_ollama_manifest, ModelInfo, OLLAMA_ROOT, SMALL_FILE_MAX};
use store::Store;

use super::hf::{self, split_repo_folder};
use super::{lmstudio, mlx, ollama};
use crate::errno::FsResult;

/// Adds every derived path at which each model can be seen to its `paths`.
pub fn add_view_paths(store: &Store, models: &mut [ModelInfo]) -> FsResult<()> {
    let mut extra: HashMap<(String, String), Vec<String>> = HashMap::new();
    for repo in hf::scan(store)? {
        let key = ("hf".to_string(), format!("{}/{}", repo.org, repo.name));
        let paths = extra.entry(key).or_default();
        if mlx::is_mlx_loadable(&repo) {
            paths.push(format!("{}/{}/{}", mlx::ROOT, repo.org, repo.name));
        }
        for file in repo.files.iter().filter(|f| f.path.ends_with(".gguf")) {
            let name = file.path.rsplit('/').next().unwrap_or(&file.path);
            paths.push(format!(
                "{}/{}/{}/{}",
                lmstudio::ROOT,
                repo.org,
                repo.name,
                name
            ));
            let tag = ollama::tag_for(name);
            paths.push(format!(
                "{OLLAMA_ROOT}/manifests/hf.co/{}/{}/{tag}",
                repo.org, repo.name
            ));
            if let Some(content) = file.content {
                if let Some(sha) = store.catalog().read(|tx| tx.content_sha256(content))? {
                    paths.push(format!("{OLLAMA_ROOT}/blobs/sha256-{}", hex::encode(sha)));
                }
            }
        }
    }
    for model in models.iter_mut() {
        if let Some(paths) = extra.remove(&(model.layout.clone(), model.name.clone())) {
            model.paths.extend(paths);
        }
        if model.layout == "ollama" {
            if let Some(path) = ollama_lmstudio_path(store, model)? {
                model.paths.push(path);
            }
        }
        model.paths.sort();
        model.paths.dedup();
    }
    Ok(())
}

/// `lmstudio/<namespace>/<model>/<tag>.gguf` for an Ollama model with a model layer.
fn ollama_lmstudio_path(store: &Store, model: &ModelInfo) -> FsResult<Option<String>> {
    let parts: Vec<&str> = model.name.split('/').collect();
    if parts.len() != 3 {
        return Ok(None);
    }
    let manifest_path = format!("{OLLAMA_ROOT}/manifests/{}/{}", model.name, model.revision);
    let bytes = store.catalog().read(|tx| {
        let Some(ino) = tx.resolve_path(&manifest_path)? else {
            return Ok(None);
        };
        tx.read_small_file(store, ino, SMALL_FILE_MAX)
    })?;
    let Some(bytes) = bytes else { return Ok(None) };
    let Ok(manifest) = parse_ollama_manifest(&bytes) else {
        return Ok(None);
    };
    let has_model = manifest
        .layers
        .iter()
        .any(|(_, media, _)| media == ollama::MODEL_MEDIA_TYPE);
    let safe = parts
        .iter()
        .chain(std::iter::once(&model.revision.as_str()))
        .all(|p| super::safe_component(p));
    Ok((has_model && safe).then(|| {
        format!(
            "{}/{}/{}/{}.gguf",
            lmstudio::ROOT,
            parts[1],
            parts[2],
            model.revision
        )
    }))
}

/// `org/name` of an HF repo folder, for callers matching models to folders.
pub fn hf_repo_name(folder: &str) -> Option<String> {
    split_repo_folder(folder).map(|(org, name)| format!("{org}/{name}"))
}
