//! `mlxfs ls [--json]`: models per layout with logical, stored and unique bytes.

use std::path::Path;

use anyhow::{Context, Result};
use store::catalog::Catalog;
use store::models::ModelInfo;
use store::{Store, StoreError, StoreOptions};

use super::{print_json, store_exists, EXIT_OK};
use crate::human::{self, Align};

#[derive(clap::Args, Debug)]
pub struct LsArgs {
    /// Print {"models": [...]} as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct Listing {
    models: Vec<ModelInfo>,
    /// False when another process holds the store: the registry is listed without sizes.
    sizes_available: bool,
}

/// The registry as last written, for when the store is locked by a mount or another command.
fn registry_only(dir: &Path) -> Result<Vec<ModelInfo>> {
    let db = dir.join("catalog.db");
    let catalog =
        Catalog::open_read_only(&db).with_context(|| format!("reading {}", db.display()))?;
    let models = catalog.read(|tx| {
        let mut stmt = tx.conn().prepare(
            "SELECT layout, name, revision, format, files, last_read, last_view, reads
             FROM models ORDER BY layout, name, revision",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ModelInfo {
                layout: r.get(0)?,
                name: r.get(1)?,
                revision: r.get(2)?,
                format: r.get(3)?,
                files: r.get::<_, i64>(4)?.max(0) as u64,
                logical_bytes: 0,
                stored_bytes: 0,
                unique_bytes: 0,
                paths: Vec::new(),
                last_read: r.get(5)?,
                last_view: r.get(6)?,
                reads: r.get::<_, i64>(7)?.max(0) as u64,
                inodes: Vec::new(),
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    })?;
    Ok(models)
}

/// The models as the mount daemon sees them (sizes and view paths included), when it runs.
fn from_daemon(dir: &Path) -> Option<Vec<ModelInfo>> {
    let socket = daemon::running_daemon(dir)?.socket?;
    let mut client =
        daemon::client::Client::connect(&socket, std::time::Duration::from_secs(5)).ok()?;
    let entries = client.models().ok()?;
    Some(
        entries
            .into_iter()
            .map(|m| ModelInfo {
                layout: m.usage.layout,
                name: m.usage.name,
                revision: m.usage.revision,
                format: m.usage.format,
                files: m.usage.files,
                logical_bytes: m.usage.logical_bytes,
                stored_bytes: m.usage.stored_bytes,
                unique_bytes: m.usage.unique_bytes,
                paths: m.paths,
                last_read: None,
                last_view: None,
                reads: 0,
                inodes: Vec::new(),
            })
            .collect(),
    )
}

pub fn run(store_dir: &Path, args: &LsArgs) -> Result<i32> {
    let (mut models, sizes_available) = if !store_exists(store_dir) {
        (Vec::new(), true)
    } else {
        match Store::open(store_dir, StoreOptions::from_env()) {
            Ok(store) => {
                let mut models = store.list_models().context("listing models")?;
                fs::views::paths::add_view_paths(&store, &mut models)
                    .map_err(|e| anyhow::anyhow!("computing view paths: {e}"))?;
                (models, true)
            }
            Err(e @ StoreError::Locked { .. }) => match from_daemon(store_dir) {
                Some(models) => (models, true),
                None => {
                    eprintln!("note: {e}; listing the registry without sizes");
                    (registry_only(store_dir)?, false)
                }
            },
            Err(e) => {
                return Err(e).with_context(|| format!("opening store {}", store_dir.display()))
            }
        }
    };
    models
        .sort_by(|a, b| (&a.layout, &a.name, &a.revision).cmp(&(&b.layout, &b.name, &b.revision)));
    if args.json {
        print_json(&Listing {
            models,
            sizes_available,
        })?;
        return Ok(EXIT_OK);
    }
    if models.is_empty() {
        println!("no models in the store");
        return Ok(EXIT_OK);
    }
    for (layout, title) in [
        ("hf", "Hugging Face (huggingface/hub)"),
        ("ollama", "Ollama (ollama/models)"),
    ] {
        let mine: Vec<&ModelInfo> = models.iter().filter(|m| m.layout == layout).collect();
        if mine.is_empty() {
            continue;
        }
        println!("{title}");
        let mut rows = vec![vec![
            "  NAME".to_string(),
            "REVISION".into(),
            "FORMAT".into(),
            "FILES".into(),
            "LOGICAL".into(),
            "STORED".into(),
            "UNIQUE".into(),
        ]];
        let size = |n: u64| {
            if sizes_available {
                human::bytes(n)
            } else {
                "-".into()
            }
        };
        for m in &mine {
            let revision = if layout == "hf" {
                m.revision.chars().take(12).collect()
            } else {
                m.revision.clone()
            };
            rows.push(vec![
                format!("  {}", m.name),
                revision,
                m.format.clone(),
                human::count(m.files),
                size(m.logical_bytes),
                size(m.stored_bytes),
                size(m.unique_bytes),
            ]);
        }
        let align = [
            Align::Left,
            Align::Left,
            Align::Left,
            Align::Right,
            Align::Right,
            Align::Right,
            Align::Right,
        ];
        print!("{}", human::table(&rows, &align));
        for m in &mine {
            // Directories and manifests name the model; the blob paths behind them are in --json.
            let shown: Vec<&String> = m.paths.iter().filter(|p| !p.contains("/blobs/")).collect();
            if let Some((first, rest)) = shown.split_first() {
                println!("  {}: {first}", m.name);
                let indent = " ".repeat(m.name.len() + 4);
                for path in rest {
                    println!("{indent}{path}");
                }
            }
        }
        println!();
    }
    Ok(EXIT_OK)
}
