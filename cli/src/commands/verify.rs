//! `mlxfs verify [--json]`: re-hash every chunk and whole file; name damaged files.

use std::path::Path;

use anyhow::{Context, Result};

use super::{open_store, print_json, progress_bar, EXIT_FAILURE, EXIT_OK};
use crate::human;

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(store_dir: &Path, args: &VerifyArgs) -> Result<i32> {
    let store = open_store(store_dir, false)?;
    let total = store.verify_total_bytes()?;
    let bar = progress_bar(total, "verifying");
    let report = store.verify(&|n| bar.inc(n));
    bar.finish_and_clear();
    let report = report.context("verifying the store")?;
    if args.json {
        print_json(&report)?;
    } else {
        for damage in &report.damaged {
            if damage.paths.is_empty() {
                println!(
                    "damaged: (content {} with no path): {}",
                    damage.content, damage.reason
                );
            }
            for path in &damage.paths {
                println!("damaged: {path}: {}", damage.reason);
            }
        }
        println!(
            "checked {} files ({} contents, {} chunks, {}): {}",
            human::count(report.files_checked),
            human::count(report.contents_checked),
            human::count(report.chunks_checked),
            human::bytes(report.bytes_checked),
            if report.ok {
                "all good".to_string()
            } else {
                format!("{} damaged", report.damaged.len())
            }
        );
    }
    Ok(if report.ok { EXIT_OK } else { EXIT_FAILURE })
}
