//! `mlxfs status [--json]`: usage, savings and live throughput. Asks the mount daemon over its
//! status socket when the store is mounted; otherwise reads the catalog (read-only) and says
//! so. Both give the same JSON fields (docs/STATUS.md).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use daemon::report::{ModelsByLayout, StatusReport};
use store::catalog::Catalog;

use super::{print_json, store_exists, EXIT_OK};
use crate::human::{self, Align};

/// How long to wait for the daemon before falling back to the catalog.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Print the status as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Stored figures from the catalog alone (no daemon): live fields are zero.
pub fn from_catalog(dir: &Path) -> Result<StatusReport> {
    let mut status = StatusReport::empty(dir.display().to_string());
    status.source = "catalog".into();
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
    status.models_by_layout = ModelsByLayout::default();
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
    status.pack_bytes = daemon::reporter::pack_bytes(dir);
    status.catalog_bytes = daemon::reporter::catalog_bytes(dir);
    status.in_use_by_pid = store::lock_holder(dir).and_then(|pid| pid.parse().ok());
    status.at = store::namespace::now_ns();
    Ok(status)
}

/// The status, and a note on where it came from when that is not the daemon.
pub fn collect(dir: &Path) -> Result<(StatusReport, Option<String>)> {
    let record = daemon::running_daemon(dir);
    let note = match record.as_ref().map(|r| (r.pid, r.socket.as_ref())) {
        None => "not mounted: figures from the catalog".to_string(),
        Some((pid, None)) => {
            format!("mounted, but the daemon (pid {pid}) has no status socket: figures from the catalog")
        }
        Some((pid, Some(socket))) => match daemon::client::status(socket, SOCKET_TIMEOUT) {
            Ok(status) => return Ok((status, None)),
            Err(e) => format!(
                "the daemon (pid {pid}) did not answer on {}: {e}; figures from the catalog",
                socket.display()
            ),
        },
    };
    let mut status = from_catalog(dir)?;
    if let Some(record) = record {
        status.mounted = true;
        status.mountpoint = Some(record.mountpoint.display().to_string());
        status.pid = Some(record.pid);
        status.socket = record.socket.map(|s| s.display().to_string());
        status.started = Some(record.started);
    }
    Ok((status, Some(note)))
}

pub fn rate(bytes_per_sec: f64) -> String {
    format!("{}/s", human::bytes(bytes_per_sec.max(0.0).round() as u64))
}

pub fn run(store_dir: &Path, args: &StatusArgs) -> Result<i32> {
    let (status, note) = collect(store_dir)?;
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
    let mounted = match (&status.mountpoint, status.in_use_by_pid.or(status.pid)) {
        (Some(at), pid) => format!(
            "yes, at {at}{}",
            pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
        ),
        (None, Some(pid)) => format!("no (store in use by pid {pid})"),
        (None, None) => "no".into(),
    };
    println!("{:<10}{}", "store", status.store);
    println!("{:<10}{mounted}", "mounted");
    if let Some(note) = &note {
        println!("{:<10}{note}", "source");
    }
    let mut rows = vec![
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
    if note.is_none() {
        let t = &status.throughput;
        rows.push(vec![
            "read".into(),
            human::bytes(status.read_bytes),
            format!(
                "{} now, {} over 10 s, {} over 60 s{}",
                rate(status.read_bytes_per_sec),
                rate(t.s10.read_bytes_per_sec),
                rate(t.s60.read_bytes_per_sec),
                if status.passthrough {
                    ""
                } else {
                    " (every read checked: no passthrough)"
                }
            ),
        ]);
        if status.commit_queue_files > 0 {
            rows.push(vec![
                "queued".into(),
                human::bytes(status.commit_queue_bytes),
                format!(
                    "in {} closed file(s) still being committed",
                    status.commit_queue_files
                ),
            ]);
        }
        rows.push(vec![
            "written".into(),
            human::bytes(status.written_bytes),
            format!(
                "{} now, {} over 10 s, {} over 60 s",
                rate(status.write_bytes_per_sec),
                rate(t.s10.write_bytes_per_sec),
                rate(t.s60.write_bytes_per_sec)
            ),
        ]);
    }
    // Labels are at most 8 wide ("physical"), so values start at column 10 as above.
    print!(
        "{}",
        human::table(&rows, &[Align::Left, Align::Right, Align::Left])
    );
    let top: Vec<Vec<String>> = status
        .per_model
        .iter()
        .filter(|m| m.read_bytes > 0)
        .take(5)
        .map(|m| {
            vec![
                format!("  {} {}", m.layout, m.name),
                human::bytes(m.read_bytes),
                rate(m.read_bytes_per_sec),
            ]
        })
        .collect();
    if !top.is_empty() {
        println!("top models by bytes read since mount:");
        print!(
            "{}",
            human::table(&top, &[Align::Left, Align::Right, Align::Right])
        );
    }
    Ok(EXIT_OK)
}
