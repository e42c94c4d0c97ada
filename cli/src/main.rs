//! `mlxfs`: one deduplicating store for all your model weights.
//!
//! Exit status: 0 success; 1 error (or damage found by `verify`); 2 bad usage; 3 completed, but
//! some entries were skipped (see stderr).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{CommandFactory, Parser, Subcommand};

mod commands;
mod human;

use commands::{
    cat, completions, gc, import, ls, man, mount, rm, scan, service, status, top, unmount, verify,
};

#[derive(Parser, Debug)]
#[command(
    name = "mlxfs",
    version,
    about = "One deduplicating store for all your model weights"
)]
#[command(
    after_help = "Exit status: 0 ok, 1 error or damage, 2 usage, 3 done but something was skipped.\n\
                        Logging: -v, -vv, -vvv or MLXFS_LOG (e.g. MLXFS_LOG=store=debug)."
)]
struct Cli {
    /// Store directory [default: $XDG_DATA_HOME/mlxfs, else ~/.local/share/mlxfs]
    #[arg(long, global = true, env = "MLXFS_STORE", value_name = "DIR")]
    store: Option<PathBuf>,
    /// More log output on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mount the store's tree (default ~/.mlx-cache).
    Mount(mount::MountArgs),
    /// Unmount the store's tree, wherever it is mounted.
    Unmount(unmount::UnmountArgs),
    /// Adopt Hugging Face hub caches and Ollama models dirs into the store.
    Import(import::ImportArgs),
    /// Dry run of import: what would be stored, per model and in total. Writes nothing.
    Scan(scan::ScanArgs),
    /// Usage, savings and live throughput (from the mount's status socket when mounted).
    Status(status::StatusArgs),
    /// Live view of throughput, views, models and operations (q to quit).
    Top(top::TopArgs),
    /// Models in the store, per layout.
    Ls(ls::LsArgs),
    /// Write a file of the store's tree to stdout.
    Cat(cat::CatArgs),
    /// Remove files (or, with -r, directories) from the store's tree.
    Rm(rm::RmArgs),
    /// Re-hash every chunk and every file; report damage by path.
    Verify(verify::VerifyArgs),
    /// Drop unreferenced chunks and compact packs.
    Gc(gc::GcArgs),
    /// Print a shell completion script (bash, zsh, fish, ...).
    Completions(completions::CompletionsArgs),
    /// Print the man page (or write all pages into a directory).
    Man(man::ManArgs),
    /// Mount at login: a systemd user unit (Linux) or a launchd plist (macOS).
    Service(service::ServiceArgs),
}

/// `$XDG_DATA_HOME/mlxfs`, else `~/.local/share/mlxfs`.
fn default_store() -> Result<PathBuf> {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME") {
        let xdg = PathBuf::from(xdg);
        // The XDG spec says relative values are to be ignored.
        if xdg.is_absolute() {
            return Ok(xdg.join("mlxfs"));
        }
    }
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => Ok(PathBuf::from(home).join(".local/share/mlxfs")),
        _ => bail!("cannot find the store: set --store, MLXFS_STORE, XDG_DATA_HOME or HOME"),
    }
}

fn init_logging(verbose: u8) {
    let filter = match std::env::var("MLXFS_LOG") {
        Ok(spec) if !spec.is_empty() => tracing_subscriber::EnvFilter::new(spec),
        _ => tracing_subscriber::EnvFilter::new(match verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(verbose >= 2)
        .try_init();
}

fn run(cli: Cli) -> Result<i32> {
    // These need no store.
    match &cli.command {
        Command::Completions(args) => return completions::run(&mut Cli::command(), args),
        Command::Man(args) => return man::run(Cli::command(), args),
        _ => {}
    }
    let store = match cli.store {
        Some(dir) => dir,
        None => default_store()?,
    };
    match &cli.command {
        Command::Mount(args) => mount::run(&store, args),
        Command::Unmount(args) => unmount::run(&store, args),
        Command::Import(args) => import::run(&store, args),
        Command::Scan(args) => scan::run(&store, args),
        Command::Status(args) => status::run(&store, args),
        Command::Top(args) => top::run(&store, args),
        Command::Ls(args) => ls::run(&store, args),
        Command::Cat(args) => cat::run(&store, args),
        Command::Rm(args) => rm::run(&store, args),
        Command::Verify(args) => verify::run(&store, args),
        Command::Gc(args) => gc::run(&store, args),
        Command::Completions(_) | Command::Man(_) => unreachable!("handled before the store"),
        Command::Service(args) => service::run(&store, args),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    if !matches!(cli.command, Command::Mount(_)) {
        // Like other Unix tools, end quietly when the reader of stdout goes away
        // (`mlxfs cat ... | head`). Not for the mount daemon, which must outlive its pipe.
        // SAFETY: resetting a signal disposition to its default before any threads start.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match run(cli) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("mlxfs: error: {}", error_text(&e));
            ExitCode::from(commands::EXIT_FAILURE as u8)
        }
    }
}

/// The error and its causes joined by ": ", as `{:#}` does, but without a cause whose text the
/// message before it already ends with (many library errors name their source in their own
/// text, and would otherwise show it twice).
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.is_empty() {
            text = part;
        } else if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_text;
    use anyhow::Context;

    /// An error whose message names its source, which it also gives as its cause.
    #[derive(Debug)]
    struct NamesItsSource {
        source: std::io::Error,
    }

    impl std::fmt::Display for NamesItsSource {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "mount point /x: {}", self.source)
        }
    }

    impl std::error::Error for NamesItsSource {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = || std::io::Error::from_raw_os_error(libc::ENOTDIR);
        let e = anyhow::Error::new(NamesItsSource { source: io() }).context("mounting /x");
        assert_eq!(
            error_text(&e),
            format!("mounting /x: mount point /x: {}", io())
        );
        let plain: anyhow::Result<()> = Err(io()).context("reading /y");
        assert_eq!(
            error_text(&plain.unwrap_err()),
            format!("reading /y: {}", io())
        );
    }
}
