//! `mlxfs import PATH... [--json]`

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use store::import::{import_total_bytes, recognise, ImportError, ImportOptions, ImportReport};

use super::{open_store, print_json, progress_bar, stderr_is_terminal, EXIT_OK, EXIT_SKIPPED};
use crate::human;

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// Hugging Face hub caches (e.g. ~/.cache/huggingface/hub), single models--* folders, or
    /// Ollama models dirs (e.g. ~/.ollama/models).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Hash every digest-named blob, even one whose content the store already holds (by
    /// default such a blob is attached without reading it: the stored bytes match its name).
    #[arg(long)]
    pub verify_sources: bool,
    /// Return only once the imported bytes are on disk (as `cp` followed by `sync`), e.g.
    /// before deleting the sources. By default the import returns once it is committed, and
    /// its bytes reach the disk in the next half minute; a crash before that drops those files
    /// (they are checked at the next start), never shows them with wrong bytes.
    #[arg(long)]
    pub sync: bool,
}

pub fn run(store_dir: &Path, args: &ImportArgs) -> Result<i32> {
    if let Some(daemon) = daemon::running_daemon(store_dir) {
        refuse_own_mount(&args.paths, &daemon.mountpoint)?;
    }
    // Every PATH is recognised before the store is created or touched.
    for path in &args.paths {
        recognise(path)?;
    }
    // The pre-pass (a stat walk) only pays off when a bar is shown.
    let total = if stderr_is_terminal() {
        import_total_bytes(&args.paths)?
    } else {
        0
    };
    let bar = progress_bar(total, "importing");
    let options = ImportOptions {
        verify_sources: args.verify_sources,
        sync: args.sync,
        ..ImportOptions::default()
    };
    let report = match open_store(store_dir, true) {
        Ok(store) => {
            let report = store.import_with(&args.paths, options, &|n| bar.inc(n));
            bar.finish_and_clear();
            let report = report.map_err(|e| import_failed(store_dir, e))?;
            store
                .refresh_models()
                .context("updating the model registry")?;
            report
        }
        Err(e) => match daemon::running_daemon(store_dir).and_then(|d| d.socket) {
            // The store is mounted: the daemon imports, so the mount sees the result at once.
            Some(socket) => {
                let paths = args
                    .paths
                    .iter()
                    .map(|p| {
                        p.canonicalize()
                            .with_context(|| format!("resolving {}", p.display()))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let mut client = daemon::client::Client::connect(&socket, Duration::from_secs(10))
                    .context("connecting to the mount daemon")?;
                let report = client.import(&paths, options, &|done| bar.set_position(done));
                bar.finish_and_clear();
                report.context("importing through the mount daemon")?
            }
            None => return Err(e),
        },
    };
    for s in &report.skipped {
        eprintln!("skipped: {}: {}", s.path, s.reason);
    }
    for w in &report.warnings {
        eprintln!("warning: {}: {}", w.path, w.message);
    }
    if args.json {
        print_json(&report)?;
    } else {
        print!("{}", summary(&report));
    }
    Ok(if report.skipped.is_empty() {
        EXIT_OK
    } else {
        EXIT_SKIPPED
    })
}

/// A folder of the store's own mount holds nothing the store lacks (most likely the user meant
/// the original cache), and the daemon would read it through itself: say so instead.
fn refuse_own_mount(paths: &[PathBuf], mountpoint: &Path) -> Result<()> {
    let mountpoint = mountpoint
        .canonicalize()
        .unwrap_or_else(|_| mountpoint.to_path_buf());
    // A path that does not resolve is left to `recognise`, which says why.
    let inside = paths.iter().find(|p| {
        p.canonicalize()
            .is_ok_and(|real| real.starts_with(&mountpoint))
    });
    match inside {
        Some(inside) => anyhow::bail!(
            "{} is inside this store's mount at {}: its files are in the store already; \
             import the original caches (e.g. ~/.cache/huggingface/hub or ~/.ollama/models)",
            inside.display(),
            mountpoint.display()
        ),
        None => Ok(()),
    }
}

/// The error of an import that stopped. A full disk is the one a user can act on: say what
/// is kept (the import gave the room of the rest back) and what to do next.
fn import_failed(store_dir: &Path, e: ImportError) -> anyhow::Error {
    if !matches!(e, ImportError::Store(store::StoreError::NoSpace)) {
        return anyhow::Error::new(e);
    }
    let room = disk_room(store_dir)
        .map(|(free, total)| format!(" ({} free of {})", human::bytes(free), human::bytes(total)))
        .unwrap_or_default();
    anyhow::anyhow!(
        "no space left on the store's disk{room}: the files imported before it filled are kept, \
         the rest is not in the store; make room and run the same import again (what is stored \
         already is not stored twice)"
    )
}

/// (free, total) bytes of the file system holding `dir`, for the user.
fn disk_room(dir: &Path) -> Option<(u64, u64)> {
    let disk = store::disk_space::DiskSpace::of(dir).ok()?;
    Some((disk.bytes_available(), disk.bytes_total()))
}

fn summary(r: &ImportReport) -> String {
    let saved = r.bytes.saturating_sub(r.new_bytes);
    let mut out = format!(
        "imported {} files, {} symlinks, {} directories from {}\n",
        human::count(r.files),
        human::count(r.symlinks),
        human::count(r.dirs),
        r.sources
            .iter()
            .map(|s| format!("{} ({})", s.path.display(), s.layout.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let rows = vec![
        vec!["logical".into(), human::bytes(r.bytes), String::new()],
        vec![
            "new".into(),
            human::bytes(r.new_bytes),
            "appended to packs".into(),
        ],
        vec![
            "saved".into(),
            human::bytes(saved),
            format!("{} deduplicated", human::percent(saved, r.bytes)),
        ],
    ];
    out.push_str(&indent(&human::table(
        &rows,
        &[human::Align::Left, human::Align::Right, human::Align::Left],
    )));
    if !r.skipped.is_empty() {
        out.push_str(&format!(
            "  skipped {} entries (listed on stderr)\n",
            r.skipped.len()
        ));
    }
    out
}

pub fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}
