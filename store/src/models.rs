//! The model registry: which models the namespace holds, in which layout, with which files.
//! Rebuilt from the namespace (the source of truth) by [`Store::refresh_models`]; usage columns
//! survive a refresh.

use std::collections::{BTreeSet, HashMap};

use rusqlite::params;

use crate::catalog::Tx;
use crate::error::Result;
use crate::namespace::NodeKind;
use crate::store::Store;

pub const HF_ROOT: &str = "huggingface/hub";
pub const OLLAMA_ROOT: &str = "ollama/models";
/// Manifests, refs and other small files the registry reads are at most this long.
pub const SMALL_FILE_MAX: u64 = 1 << 20;

#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    /// `hf` or `ollama`.
    pub layout: String,
    /// `org/name` for Hugging Face, `host/namespace/model` for Ollama.
    pub name: String,
    /// The commit `refs/main` names, or the Ollama tag.
    pub revision: String,
    /// `safetensors`, `gguf`, `mixed` or `other`.
    pub format: String,
    pub files: u64,
    /// Sum of the sizes of the model's files.
    pub logical_bytes: u64,
    /// Bytes of the distinct chunks the model's files use.
    pub stored_bytes: u64,
    /// Bytes of chunks no other model uses: what deleting this model would free.
    pub unique_bytes: u64,
    /// Namespace paths the model is visible at.
    pub paths: Vec<String>,
    pub last_read: Option<i64>,
    pub last_view: Option<String>,
    pub reads: u64,
    /// Namespace inodes of the model's files (not serialized).
    #[serde(skip)]
    pub inodes: Vec<u64>,
}

/// `true` for a 64-char lowercase hex string (a SHA-256 in hex).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A parsed Ollama manifest: the digests (hex) of its config and layers, and layer media types.
#[derive(Debug, Clone, Default)]
pub struct OllamaManifest {
    pub config: Option<String>,
    pub layers: Vec<(String, String, u64)>,
}

/// Parses an Ollama manifest, rejecting digests that are not `sha256:<64 hex>` (so no digest
/// can smuggle a path) and manifests over [`SMALL_FILE_MAX`] (real ones are a few hundred
/// bytes; the registry and the views never read more).
pub fn parse_ollama_manifest(bytes: &[u8]) -> std::result::Result<OllamaManifest, String> {
    if bytes.len() as u64 > SMALL_FILE_MAX {
        return Err(format!(
            "manifest is {} bytes, more than the {SMALL_FILE_MAX} a manifest may have",
            bytes.len()
        ));
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("manifest is not JSON: {e}"))?;
    let digest_of = |v: &serde_json::Value| -> std::result::Result<String, String> {
        let d = v
            .get("digest")
            .and_then(|d| d.as_str())
            .ok_or("manifest entry has no digest")?;
        let hex = d
            .strip_prefix("sha256:")
            .ok_or_else(|| format!("digest {d:?} is not sha256"))?;
        if !is_sha256_hex(hex) {
            return Err(format!("digest {d:?} is not 64 hex digits"));
        }
        Ok(hex.to_string())
    };
    let mut manifest = OllamaManifest::default();
    if let Some(config) = value.get("config") {
        manifest.config = Some(digest_of(config)?);
    }
    for layer in value
        .get("layers")
        .and_then(|l| l.as_array())
        .ok_or("manifest has no layers")?
    {
        let media = layer
            .get("mediaType")
            .and_then(|m| m.as_str())
            .unwrap_or_default()
            .to_string();
        let size = layer.get("size").and_then(|s| s.as_u64()).unwrap_or(0);
        manifest.layers.push((digest_of(layer)?, media, size));
    }
    Ok(manifest)
}

fn format_of(names: &BTreeSet<String>) -> &'static str {
    let st = names.iter().any(|n| n.ends_with(".safetensors"));
    let gguf = names.iter().any(|n| n.ends_with(".gguf"));
    match (st, gguf) {
        (true, true) => "mixed",
        (true, false) => "safetensors",
        (false, true) => "gguf",
        _ => "other",
    }
}

impl Tx<'_> {
    /// The bytes of a regular file of at most `max_len` bytes (manifests, refs, configs);
    /// `None` for anything else.
    pub fn read_small_file(
        &self,
        store: &Store,
        ino: u64,
        max_len: u64,
    ) -> Result<Option<Vec<u8>>> {
        let inode = self.inode_required(ino)?;
        if inode.kind != NodeKind::File || inode.size > max_len {
            return Ok(None);
        }
        let mut buf = vec![0u8; inode.size as usize];
        if let Some(content) = inode.content {
            let map = self.content_map(content)?;
            let n = store.read_in_tx(self, &map, 0, &mut buf)?;
            buf.truncate(n.max(inode.size as usize).min(buf.len()));
        }
        Ok(Some(buf))
    }

    /// Every file under a directory (recursively), as (path relative to it, inode).
    pub fn walk_files(&self, dir: u64, prefix: &str, out: &mut Vec<(String, u64)>) -> Result<()> {
        for entry in self.read_dir(dir, None)? {
            let name = String::from_utf8_lossy(&entry.name);
            let path = if prefix.is_empty() {
                name.into_owned()
            } else {
                format!("{prefix}/{name}")
            };
            match entry.kind {
                NodeKind::Dir => self.walk_files(entry.ino, &path, out)?,
                NodeKind::File => out.push((path, entry.ino)),
                NodeKind::Symlink => {}
            }
        }
        Ok(())
    }
}

impl Store {
    /// Finds the models in the namespace, with sizes and paths.
    pub fn list_models(&self) -> Result<Vec<ModelInfo>> {
        let mut models = self.catalog.read(|tx| {
            let mut models = Vec::new();
            self.find_hf_models(tx, &mut models)?;
            self.find_ollama_models(tx, &mut models)?;
            Ok(models)
        })?;
        self.fill_sizes(&mut models)?;
        self.catalog.read(|tx| {
            for m in models.iter_mut() {
                let usage = tx
                    .conn()
                    .prepare_cached(
                        "SELECT last_read, last_view, reads FROM models
                         WHERE layout = ?1 AND name = ?2 AND revision = ?3",
                    )?
                    .query_row(params![m.layout, m.name, m.revision], |r| {
                        Ok((
                            r.get::<_, Option<i64>>(0)?,
                            r.get::<_, Option<String>>(1)?,
                            r.get::<_, i64>(2)?,
                        ))
                    });
                if let Ok((last_read, last_view, reads)) = usage {
                    m.last_read = last_read;
                    m.last_view = last_view;
                    m.reads = reads as u64;
                }
            }
            Ok(())
        })?;
        Ok(models)
    }

    /// Rewrites the registry table from the namespace, keeping usage columns.
    pub fn refresh_models(&self) -> Result<Vec<ModelInfo>> {
        let models = self.list_models()?;
        self.catalog.write(|tx| {
            tx.conn().execute("CREATE TEMP TABLE IF NOT EXISTS seen (id INTEGER PRIMARY KEY)", [])?;
            tx.conn().execute("DELETE FROM temp.seen", [])?;
            for m in &models {
                tx.conn().execute(
                    "INSERT INTO models (layout, name, revision, format, files) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(layout, name, revision) DO UPDATE SET format = excluded.format, files = excluded.files",
                    params![m.layout, m.name, m.revision, m.format, m.files as i64],
                )?;
                tx.conn().execute(
                    "INSERT OR IGNORE INTO temp.seen SELECT id FROM models WHERE layout = ?1 AND name = ?2 AND revision = ?3",
                    params![m.layout, m.name, m.revision],
                )?;
            }
            tx.conn().execute("DELETE FROM models WHERE id NOT IN (SELECT id FROM temp.seen)", [])?;
            Ok(())
        })?;
        Ok(models)
    }

    fn find_hf_models(&self, tx: &Tx, models: &mut Vec<ModelInfo>) -> Result<()> {
        let Some(hub) = tx.resolve_path(HF_ROOT)? else {
            return Ok(());
        };
        for entry in tx.read_dir(hub, None)? {
            let folder = String::from_utf8_lossy(&entry.name).into_owned();
            let Some(rest) = folder.strip_prefix("models--") else {
                continue;
            };
            if entry.kind != NodeKind::Dir {
                continue;
            }
            let name = rest.replacen("--", "/", 1);
            let revision = match tx.lookup(entry.ino, b"refs")? {
                Some(refs) => match tx.lookup(refs, b"main")? {
                    Some(main) => tx
                        .read_small_file(self, main, SMALL_FILE_MAX)?
                        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                        .unwrap_or_default(),
                    None => String::new(),
                },
                None => String::new(),
            };
            let mut files = Vec::new();
            tx.walk_files(entry.ino, "", &mut files)?;
            let mut names = BTreeSet::new();
            if let Some(snapshots) = tx.lookup(entry.ino, b"snapshots")? {
                for snap in tx.read_dir(snapshots, None)? {
                    collect_names(tx, snap.ino, &mut names)?;
                }
            }
            let blobs: Vec<(String, u64)> = files
                .into_iter()
                .filter(|(p, _)| p.starts_with("blobs/"))
                .collect();
            models.push(ModelInfo {
                layout: "hf".into(),
                name,
                revision,
                format: format_of(&names).into(),
                files: blobs.len() as u64,
                logical_bytes: 0,
                stored_bytes: 0,
                unique_bytes: 0,
                paths: vec![format!("{HF_ROOT}/{folder}")],
                last_read: None,
                last_view: None,
                reads: 0,
                inodes: blobs.iter().map(|(_, ino)| *ino).collect(),
            });
        }
        Ok(())
    }

    fn find_ollama_models(&self, tx: &Tx, models: &mut Vec<ModelInfo>) -> Result<()> {
        let Some(manifests) = tx.resolve_path(&format!("{OLLAMA_ROOT}/manifests"))? else {
            return Ok(());
        };
        let blobs_dir = tx.resolve_path(&format!("{OLLAMA_ROOT}/blobs"))?;
        let mut found = Vec::new();
        tx.walk_files(manifests, "", &mut found)?;
        for (path, ino) in found {
            let parts: Vec<&str> = path.split('/').collect();
            if parts.len() != 4 {
                continue;
            }
            let Some(bytes) = tx.read_small_file(self, ino, SMALL_FILE_MAX)? else {
                continue;
            };
            let manifest = match parse_ollama_manifest(&bytes) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(path, error = %e, "skipping unreadable Ollama manifest");
                    continue;
                }
            };
            let mut inodes = Vec::new();
            let mut paths = vec![format!("{OLLAMA_ROOT}/manifests/{path}")];
            let mut names = BTreeSet::new();
            for digest in manifest
                .config
                .iter()
                .chain(manifest.layers.iter().map(|l| &l.0))
            {
                let blob = format!("sha256-{digest}");
                if let Some(dir) = blobs_dir {
                    if let Some(ino) = tx.lookup(dir, blob.as_bytes())? {
                        inodes.push(ino);
                        paths.push(format!("{OLLAMA_ROOT}/blobs/{blob}"));
                    }
                }
            }
            for (_, media, _) in &manifest.layers {
                if media.ends_with(".model") {
                    names.insert("model.gguf".to_string());
                }
            }
            models.push(ModelInfo {
                layout: "ollama".into(),
                name: parts[..3].join("/"),
                revision: parts[3].to_string(),
                format: format_of(&names).into(),
                files: inodes.len() as u64,
                logical_bytes: 0,
                stored_bytes: 0,
                unique_bytes: 0,
                paths,
                last_read: None,
                last_view: None,
                reads: 0,
                inodes,
            });
        }
        Ok(())
    }

    /// Logical, stored and unique bytes for each model from its files' chunk lists.
    fn fill_sizes(&self, models: &mut [ModelInfo]) -> Result<()> {
        let mut chunk_sets: Vec<HashMap<i64, u64>> = Vec::with_capacity(models.len());
        self.catalog.read(|tx| {
            for m in models.iter_mut() {
                let mut chunks = HashMap::new();
                let mut seen_inodes = BTreeSet::new();
                for &ino in &m.inodes {
                    if !seen_inodes.insert(ino) {
                        continue;
                    }
                    let inode = tx.inode_required(ino)?;
                    m.logical_bytes += inode.size;
                    if let Some(content) = inode.content {
                        let mut stmt = tx.conn().prepare_cached(
                            "SELECT c.id, c.len FROM content_chunks cc JOIN chunks c ON c.id = cc.chunk
                             WHERE cc.content = ?1",
                        )?;
                        let rows = stmt.query_map([content], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
                        for row in rows {
                            let (id, len) = row?;
                            chunks.insert(id, len as u64);
                        }
                    }
                }
                m.stored_bytes = chunks.values().sum();
                chunk_sets.push(chunks);
            }
            Ok(())
        })?;
        let mut users: HashMap<i64, u32> = HashMap::new();
        for set in &chunk_sets {
            for id in set.keys() {
                *users.entry(*id).or_default() += 1;
            }
        }
        for (m, set) in models.iter_mut().zip(&chunk_sets) {
            m.unique_bytes = set
                .iter()
                .filter(|(id, _)| users.get(id) == Some(&1))
                .map(|(_, len)| len)
                .sum();
        }
        Ok(())
    }
}

fn collect_names(tx: &Tx, dir: u64, names: &mut BTreeSet<String>) -> Result<()> {
    for entry in tx.read_dir(dir, None)? {
        let name = String::from_utf8_lossy(&entry.name).into_owned();
        if entry.kind == NodeKind::Dir {
            collect_names(tx, entry.ino, names)?;
        } else {
            names.insert(name);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_that_smuggle_paths_or_sizes_are_refused() {
        let hex = "ab".repeat(32);
        let ok = format!(r#"{{"layers":[{{"digest":"sha256:{hex}","mediaType":"m","size":1}}]}}"#);
        assert_eq!(
            parse_ollama_manifest(ok.as_bytes()).unwrap().layers[0].0,
            hex
        );
        for digest in [
            "sha256:../../etc/passwd".to_string(),
            "/etc/passwd".to_string(),
            format!("sha256:{}", hex.to_uppercase()),
            format!("sha256:{}\\u0000", &hex[..63]),
            format!("sha256:{hex}/.."),
            format!("sha512:{hex}{hex}"),
        ] {
            let m = format!(r#"{{"layers":[{{"digest":"{digest}"}}]}}"#);
            assert!(parse_ollama_manifest(m.as_bytes()).is_err(), "{digest}");
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse_ollama_manifest(deep.as_bytes()).is_err());
        let huge = format!(
            r#"{{"layers":[{}]}}"#,
            vec![format!(r#"{{"digest":"sha256:{hex}"}}"#); 20_000].join(",")
        );
        let err = parse_ollama_manifest(huge.as_bytes()).unwrap_err();
        assert!(err.contains("more than"), "{err}");
    }
}
