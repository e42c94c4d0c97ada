//! `mlxfs mount [MOUNTPOINT] [--daemon] [--allow-other]`

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

#[derive(clap::Args, Debug)]
pub struct MountArgs {
    /// Where to mount (created if missing).
    #[arg(default_value_os_t = default_mountpoint())]
    pub mountpoint: PathBuf,
    /// Run in the background; exit 0 only once the mount answers.
    #[arg(long)]
    pub daemon: bool,
    /// Let other users access the mount (needs user_allow_other in /etc/fuse.conf unless root).
    #[arg(long)]
    pub allow_other: bool,
    /// Check every read against the chunk ids in the daemon. Without it, big files whose
    /// chunks were all new are read by the kernel straight from their pack file (FUSE
    /// passthrough: as fast as the disk, checked by `mlxfs verify` rather than per read).
    #[arg(long)]
    pub verify_reads: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Allow --metrics-addr to be a non-loopback address (metrics are readable by anyone who
    /// can reach it).
    #[arg(long, requires = "metrics_addr")]
    pub metrics_allow_remote: bool,
    /// Internal: report readiness on stdout (used by --daemon).
    #[arg(long, hide = true)]
    pub ready_pipe: bool,
}

pub fn default_mountpoint() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
        .join(".mlx-cache")
}

const READY: &str = "READY";

pub fn run(store: &Path, args: &MountArgs) -> Result<i32> {
    if args.daemon {
        return spawn_daemon(store, args);
    }
    let request = daemon::MountRequest {
        store: store.to_path_buf(),
        mountpoint: args.mountpoint.clone(),
        allow_other: args.allow_other,
        verify_reads: args.verify_reads,
        store_options: store::StoreOptions::from_env(),
        metrics_addr: args.metrics_addr,
        metrics_allow_remote: args.metrics_allow_remote,
    };
    let ready_pipe = args.ready_pipe;
    let shown = args.mountpoint.display().to_string();
    daemon::run(&request, |outcome| {
        if ready_pipe {
            let mut out = std::io::stdout();
            let _ = match &outcome {
                Ok(()) => writeln!(out, "{READY}"),
                Err(e) => writeln!(out, "ERROR {e}"),
            };
            let _ = out.flush();
            detach_stdout();
        } else if outcome.is_ok() {
            eprintln!("mlxfs mounted at {shown} (Ctrl-C to unmount)");
        }
    })
    .with_context(|| format!("mounting {}", args.mountpoint.display()))?;
    Ok(0)
}

/// Points stdout at /dev/null so the parent waiting on `--daemon` sees the pipe close.
fn detach_stdout() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 onto our own stdout descriptor.
        unsafe {
            libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 1);
        }
    }
}

/// Starts `mlxfs mount --ready-pipe` in its own session with its log in the store, and waits
/// until it says the mount answers (or why it could not).
fn spawn_daemon(store: &Path, args: &MountArgs) -> Result<i32> {
    std::fs::create_dir_all(store)
        .with_context(|| format!("creating store {}", store.display()))?;
    let log_path = store.join("daemon.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let exe = std::env::current_exe().context("finding the mlxfs executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--store")
        .arg(store)
        .arg("mount")
        .arg(&args.mountpoint)
        .arg("--ready-pipe");
    if args.allow_other {
        cmd.arg("--allow-other");
    }
    if args.verify_reads {
        cmd.arg("--verify-reads");
    }
    if let Some(addr) = args.metrics_addr {
        cmd.arg("--metrics-addr").arg(addr.to_string());
    }
    if args.metrics_allow_remote {
        cmd.arg("--metrics-allow-remote");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    // SAFETY: setsid in the child before exec, so terminal signals do not reach the daemon.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the mount daemon")?;
    let stdout = child.stdout.take().context("daemon stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .context("waiting for the daemon")?;
    let line = line.trim();
    if line == READY {
        eprintln!(
            "mlxfs mounted at {} (pid {}, log {})",
            args.mountpoint.display(),
            child.id(),
            log_path.display()
        );
        return Ok(0);
    }
    if let Some(reason) = line.strip_prefix("ERROR ") {
        let _ = child.wait();
        bail!("{reason}");
    }
    let status = child.wait().context("waiting for the daemon")?;
    bail!(
        "the mount daemon exited ({status}) before mounting; see {}",
        log_path.display()
    )
}
