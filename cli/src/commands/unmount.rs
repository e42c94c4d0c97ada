//! `mlxfs unmount [MOUNTPOINT]`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

#[derive(clap::Args, Debug)]
pub struct UnmountArgs {
    /// The mount to take down [default: where this store is mounted, else ~/.mlx-cache].
    pub mountpoint: Option<PathBuf>,
    /// Detach even while files are open (the mount goes away when they close).
    #[arg(long)]
    pub lazy: bool,
}

pub fn run(store: &Path, args: &UnmountArgs) -> Result<i32> {
    let daemon = daemon::running_daemon(store);
    // `mlxfs --store X unmount` takes down X's mount wherever `mount` put it.
    let mountpoint = args
        .mountpoint
        .clone()
        .or_else(|| daemon.as_ref().map(|record| record.mountpoint.clone()))
        .unwrap_or_else(super::mount::default_mountpoint);
    let canonical = mountpoint
        .canonicalize()
        .unwrap_or_else(|_| mountpoint.clone());
    if !daemon::is_mountpoint(&mountpoint) {
        bail!("{} is not mounted", mountpoint.display());
    }
    let result = if args.lazy {
        daemon::mounts::unmount_lazy(&mountpoint)
    } else {
        daemon::unmount(&mountpoint)
    };
    result.with_context(|| {
        format!(
            "unmounting {} (files still open? try --lazy)",
            mountpoint.display()
        )
    })?;
    // Wait for the daemon to commit and release the store, so the next command can take it.
    if daemon.is_some_and(|record| record.mountpoint == canonical) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while store::lock_holder(store).is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    eprintln!("unmounted {}", mountpoint.display());
    Ok(0)
}
