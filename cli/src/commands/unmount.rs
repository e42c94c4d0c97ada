//! `mlxfs unmount [MOUNTPOINT]`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

#[derive(clap::Args, Debug)]
pub struct UnmountArgs {
    /// The mount to take down.
    #[arg(default_value_os_t = super::mount::default_mountpoint())]
    pub mountpoint: PathBuf,
    /// Detach even while files are open (the mount goes away when they close).
    #[arg(long)]
    pub lazy: bool,
}

pub fn run(store: &Path, args: &UnmountArgs) -> Result<i32> {
    let daemon = daemon::running_daemon(store);
    let canonical = args
        .mountpoint
        .canonicalize()
        .unwrap_or_else(|_| args.mountpoint.clone());
    if !daemon::is_mountpoint(&args.mountpoint) {
        bail!("{} is not mounted", args.mountpoint.display());
    }
    let result = if args.lazy {
        daemon::mounts::unmount_lazy(&args.mountpoint)
    } else {
        daemon::unmount(&args.mountpoint)
    };
    result.with_context(|| {
        format!(
            "unmounting {} (files still open? try --lazy)",
            args.mountpoint.display()
        )
    })?;
    // Wait for the daemon to commit and release the store, so the next command can take it.
    if daemon.is_some_and(|record| record.mountpoint == canonical) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while store::lock_holder(store).is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    eprintln!("unmounted {}", args.mountpoint.display());
    Ok(0)
}
