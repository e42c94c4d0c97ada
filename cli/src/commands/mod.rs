//! One module per command; each exposes `XArgs` (clap) and `run(store_dir, &args) -> exit code`.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use store::{Store, StoreError, StoreOptions};

pub mod cat;
pub mod completions;
pub mod gc;
pub mod import;
pub mod ls;
pub mod man;
pub mod mount;
pub mod rm;
pub mod scan;
pub mod service;
pub mod status;
pub mod top;
pub mod unmount;
pub mod verify;

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILURE: i32 = 1;
/// The command completed, but some entries were skipped (listed on stderr).
pub const EXIT_SKIPPED: i32 = 3;

/// Whether a store exists at `dir` (has a catalog); commands that only read never create one.
pub fn store_exists(dir: &Path) -> bool {
    dir.join("catalog.db").is_file()
}

/// Opens the store for writing (taking its lock). A store that is locked reports
/// `StoreError::Locked`'s own message. With `create == false`, a missing store is an error
/// instead of being created.
pub fn open_store(dir: &Path, create: bool) -> Result<Store> {
    if !create && !store_exists(dir) {
        bail!(
            "no store at {} (nothing imported yet; try `mlxfs import`)",
            dir.display()
        );
    }
    match Store::open(dir, StoreOptions::from_env()) {
        Ok(store) => Ok(store),
        Err(e @ StoreError::Locked { .. }) => Err(e.into()),
        Err(e) => Err(e).with_context(|| format!("opening store {}", dir.display())),
    }
}

pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// A byte progress bar on stderr when it is a terminal (hidden otherwise). `total == 0` means
/// unknown: a spinner with bytes and rate.
pub fn progress_bar(total: u64, what: &str) -> ProgressBar {
    if !stderr_is_terminal() {
        return ProgressBar::hidden();
    }
    let (bar, template) = if total > 0 {
        (
            ProgressBar::new(total),
            "{msg} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        )
    } else {
        (
            ProgressBar::new_spinner(),
            "{spinner} {msg} {bytes} {binary_bytes_per_sec}",
        )
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

pub fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).context("encoding JSON")?;
    println!("{text}");
    Ok(())
}

/// A namespace path as the user typed it, without leading/trailing slashes.
pub fn ns_path(path: &str) -> &str {
    path.trim_matches('/')
}
