//! `mlxfs gc [--json]`: drop chunks no file uses and compact mostly-dead packs.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{open_store, print_json, progress_bar, EXIT_OK};
use crate::human;

#[derive(clap::Args, Debug)]
pub struct GcArgs {
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(store_dir: &Path, args: &GcArgs) -> Result<i32> {
    let bar = progress_bar(0, "compacting");
    let report = match open_store(store_dir, false) {
        Ok(store) => {
            let report = store.gc(&|n| bar.inc(n));
            bar.finish_and_clear();
            report.context("collecting garbage")?
        }
        Err(e) => match daemon::running_daemon(store_dir).and_then(|d| d.socket) {
            // The store is mounted: the daemon collects, beside the mount's reads and writes.
            Some(socket) => {
                let mut client = daemon::client::Client::connect(&socket, Duration::from_secs(10))
                    .context("connecting to the mount daemon")?;
                let report = client.gc(&|done| bar.set_position(done));
                bar.finish_and_clear();
                report.context("collecting garbage through the mount daemon")?
            }
            None => return Err(e),
        },
    };
    if args.json {
        print_json(&report)?;
        return Ok(EXIT_OK);
    }
    println!(
        "removed {} unreferenced chunks ({}); rewrote {} packs, deleted {}",
        human::count(report.chunks_removed),
        human::bytes(report.bytes_removed),
        report.packs_rewritten,
        report.packs_deleted
    );
    println!(
        "packs on disk: {} -> {} (reclaimed {})",
        human::bytes(report.disk_bytes_before),
        human::bytes(report.disk_bytes_after),
        human::bytes(
            report
                .disk_bytes_before
                .saturating_sub(report.disk_bytes_after)
        )
    );
    Ok(EXIT_OK)
}
