//! `mlxfs scan PATH... [--json]`: what an import would store. Writes nothing, creates nothing.

use std::path::{Path, PathBuf};

use anyhow::Result;
use store::import::{import_total_bytes, scan, ScanReport};

use super::{print_json, progress_bar, stderr_is_terminal, EXIT_OK, EXIT_SKIPPED};
use crate::human::{self, Align};

#[derive(clap::Args, Debug)]
pub struct ScanArgs {
    /// Hugging Face hub caches, models--* folders or Ollama models dirs.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(store_dir: &Path, args: &ScanArgs) -> Result<i32> {
    // The pre-pass (a stat walk) only pays off when a bar is shown.
    let total = if stderr_is_terminal() {
        import_total_bytes(&args.paths)?
    } else {
        0
    };
    let bar = progress_bar(total, "scanning");
    let report = scan(&args.paths, Some(store_dir), &|n| bar.inc(n));
    bar.finish_and_clear();
    let report = report?;
    for s in &report.skipped {
        eprintln!("skipped: {}: {}", s.path, s.reason);
    }
    for w in &report.warnings {
        eprintln!("warning: {}: {}", w.path, w.message);
    }
    if args.json {
        print_json(&report)?;
    } else {
        print!("{}", summary(&report, store_dir));
    }
    Ok(if report.skipped.is_empty() {
        EXIT_OK
    } else {
        EXIT_SKIPPED
    })
}

fn summary(r: &ScanReport, store_dir: &Path) -> String {
    let mut rows = vec![vec![
        "LAYOUT".to_string(),
        "MODEL".into(),
        "FILES".into(),
        "LOGICAL".into(),
        "AFTER DEDUP".into(),
        "UNIQUE".into(),
    ]];
    for m in &r.models {
        let name = if m.revision.is_empty() || m.layout == "hf" {
            m.name.clone()
        } else {
            format!("{}:{}", m.name, m.revision)
        };
        rows.push(vec![
            m.layout.clone(),
            name,
            human::count(m.files),
            human::bytes(m.logical_bytes),
            human::bytes(m.deduped_bytes),
            human::bytes(m.unique_bytes),
        ]);
    }
    let align = [
        Align::Left,
        Align::Left,
        Align::Right,
        Align::Right,
        Align::Right,
        Align::Right,
    ];
    let mut out = String::new();
    if r.models.is_empty() {
        out.push_str("no models found\n");
    } else {
        out.push_str(&human::table(&rows, &align));
        out.push('\n');
    }
    out.push_str(&format!(
        "{} files, {} logical; an import would store {} ({} saved, {})\n",
        human::count(r.files),
        human::bytes(r.logical_bytes),
        human::bytes(r.deduped_bytes),
        human::bytes(r.saved_bytes),
        human::percent(r.saved_bytes, r.logical_bytes),
    ));
    if r.compared_with_store {
        out.push_str(&format!(
            "{} of it already in the store at {}\n",
            human::bytes(r.already_stored_bytes),
            store_dir.display()
        ));
    }
    out
}
