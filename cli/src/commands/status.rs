//! `mlxfs status [--json]`: usage and savings, from the catalog (opened read-only).

use std::path::Path;

use anyhow::{Context, Result};
use store::catalog::Catalog;

use super::{print_json, store_exists, EXIT_OK};
use crate::human::{self, Align};

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Print the status as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct ModelsByLayout {
    pub hf: u64,
    pub ollama: u64,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Status {
    /// The store directory.
    pub store: String,
    /// Whether a store exists there (all numbers are 0 when not).
    pub exists: bool,
    /// Sum of the sizes of the regular files in the tree, each inode once.
    pub logical_bytes: u64,
    /// Bytes of the distinct chunks stored.
    pub physical_bytes: u64,
    pub saved_bytes: u64,
    pub saved_percent: f64,
    pub files: u64,
    pub chunks: u64,
    pub models: u64,
    pub models_by_layout: ModelsByLayout,
    /// Bytes of pack files on disk (includes dead bytes until `gc`).
    pub pack_bytes: u64,
    /// catalog.db plus its -wal.
    pub catalog_bytes: u64,
    pub mounted: bool,
    pub mountpoint: Option<String>,
    /// Pid of the process holding the store's lock (a mount or a running command).
    pub in_use_by_pid: Option<u32>,
    pub schema_version: i64,
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn pack_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir.join("packs")) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".pack"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

pub fn collect(dir: &Path) -> Result<Status> {
    let mut status = Status {
        store: dir.display().to_string(),
        ..Status::default()
    };
    if !store_exists(dir) {
        return Ok(status);
    }
    status.exists = true;
    let db = dir.join("catalog.db");
    let catalog =
        Catalog::open_read_only(&db).with_context(|| format!("reading {}", db.display()))?;
    let (totals, version, layouts) = catalog.read(|tx| {
        let mut stmt = tx
            .conn()
            .prepare("SELECT layout, COUNT(*) FROM models GROUP BY layout")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let layouts = rows.collect::<Result<Vec<_>, _>>()?;
        Ok((tx.totals()?, tx.schema_version()?, layouts))
    })?;
    status.logical_bytes = totals.logical_bytes;
    status.physical_bytes = totals.physical_bytes;
    status.saved_bytes = totals.logical_bytes.saturating_sub(totals.physical_bytes);
    status.saved_percent = store::import::percent(status.saved_bytes, status.logical_bytes);
    status.files = totals.files;
    status.chunks = totals.chunks;
    for (layout, n) in layouts {
        let n = n.max(0) as u64;
        status.models += n;
        match layout.as_str() {
            "hf" => status.models_by_layout.hf += n,
            "ollama" => status.models_by_layout.ollama += n,
            _ => {}
        }
    }
    status.schema_version = version;
    status.pack_bytes = pack_bytes(dir);
    status.catalog_bytes = file_len(&db) + file_len(&dir.join("catalog.db-wal"));
    status.in_use_by_pid = store::lock_holder(dir).and_then(|pid| pid.parse().ok());
    if let Some(record) = daemon::running_daemon(dir) {
        status.mounted = true;
        status.mountpoint = Some(record.mountpoint.display().to_string());
    }
    Ok(status)
}

pub fn run(store_dir: &Path, args: &StatusArgs) -> Result<i32> {
    let status = collect(store_dir)?;
    if args.json {
        print_json(&status)?;
        return Ok(EXIT_OK);
    }
    if !status.exists {
        println!(
            "no store at {} yet: all zero (run `mlxfs import` or `mlxfs mount`)",
            status.store
        );
        return Ok(EXIT_OK);
    }
    let mounted = match (&status.mountpoint, status.in_use_by_pid) {
        (Some(at), pid) => format!(
            "yes, at {at}{}",
            pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
        ),
        (None, Some(pid)) => format!("no (store in use by pid {pid})"),
        (None, None) => "no".into(),
    };
    println!("{:<10}{}", "store", status.store);
    println!("{:<10}{mounted}", "mounted");
    let rows = vec![
        vec![
            "logical".to_string(),
            human::bytes(status.logical_bytes),
            format!("{} files", human::count(status.files)),
        ],
        vec![
            "physical".into(),
            human::bytes(status.physical_bytes),
            format!("{} chunks", human::count(status.chunks)),
        ],
        vec![
            "saved".into(),
            human::bytes(status.saved_bytes),
            format!("{:.1}%", status.saved_percent),
        ],
        vec![
            "models".into(),
            human::count(status.models),
            format!(
                "hf {}, ollama {}",
                status.models_by_layout.hf, status.models_by_layout.ollama
            ),
        ],
        vec![
            "packs".into(),
            human::bytes(status.pack_bytes),
            "on disk".into(),
        ],
        vec![
            "catalog".into(),
            human::bytes(status.catalog_bytes),
            format!("schema v{}", status.schema_version),
        ],
    ];
    // Labels are at most 8 wide ("physical"), so values start at column 10 as above.
    print!(
        "{}",
        human::table(&rows, &[Align::Left, Align::Right, Align::Left])
    );
    Ok(EXIT_OK)
}
