//! `mlxfs service install [--print] [MOUNTPOINT]`: mount at login. On Linux, writes a systemd
//! user unit (`$XDG_CONFIG_HOME/systemd/user/mlxfs.service`) that runs `mlxfs mount --daemon`
//! and unmounts on stop; on macOS, prints a launchd agent plist (save it in
//! `~/Library/LaunchAgents/` and `launchctl load` it). `--print` only prints.
//! `mlxfs service uninstall` removes the unit.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::mount::default_mountpoint;
use super::EXIT_OK;

pub const UNIT_NAME: &str = "mlxfs.service";
pub const LAUNCHD_LABEL: &str = "dev.mlxfs.mount";

#[derive(clap::Args, Debug)]
pub struct ServiceArgs {
    #[command(subcommand)]
    pub action: ServiceAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum ServiceAction {
    /// Write the systemd user unit (Linux) or print the launchd plist (macOS).
    Install(InstallArgs),
    /// Remove the systemd user unit written by `install`.
    Uninstall,
}

#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    /// Where to mount at login.
    #[arg(default_value_os_t = default_mountpoint())]
    pub mountpoint: PathBuf,
    /// Only print the unit (or plist); write nothing.
    #[arg(long)]
    pub print: bool,
    /// Which service manager to write for [default: launchd on macOS, else systemd].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Systemd,
    Launchd,
}

fn default_format() -> Format {
    if cfg!(target_os = "macos") {
        Format::Launchd
    } else {
        Format::Systemd
    }
}

/// `$XDG_CONFIG_HOME/systemd/user`, else `~/.config/systemd/user`.
fn unit_dir() -> Result<PathBuf> {
    if let Some(xdg) = std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from) {
        if xdg.is_absolute() {
            return Ok(xdg.join("systemd/user"));
        }
    }
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => Ok(PathBuf::from(home).join(".config/systemd/user")),
        _ => bail!("cannot find the systemd user directory: set XDG_CONFIG_HOME or HOME"),
    }
}

/// systemd's quoting for one argument of ExecStart (C-style, in double quotes when needed).
fn systemd_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c));
    if plain {
        return arg.to_string();
    }
    let mut out = String::from("\"");
    for c in arg.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '$' => out.push_str("$$"),
            '%' => out.push_str("%%"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn command_line(args: &[String]) -> String {
    args.iter()
        .map(|a| systemd_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn systemd_unit(exe: &Path, store: &Path, mountpoint: &Path) -> String {
    let base = vec![
        exe.display().to_string(),
        "--store".to_string(),
        store.display().to_string(),
    ];
    let mut start = base.clone();
    start.extend([
        "mount".into(),
        mountpoint.display().to_string(),
        "--daemon".into(),
    ]);
    let mut stop = base;
    stop.extend(["unmount".into(), mountpoint.display().to_string()]);
    format!(
        "# Written by `mlxfs service install`; remove with `mlxfs service uninstall`.\n\
         [Unit]\n\
         Description=mlxfs: model store mounted at {mp}\n\
         Documentation=man:mlxfs(1)\n\
         \n\
         [Service]\n\
         Type=forking\n\
         ExecStart={start}\n\
         ExecStop={stop}\n\
         Restart=on-failure\n\
         RestartSec=5\n\
         TimeoutStopSec=60\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n",
        mp = mountpoint.display().to_string().replace('%', "%%"),
        start = command_line(&start),
        stop = command_line(&stop),
    )
}

pub fn launchd_plist(exe: &Path, store: &Path, mountpoint: &Path) -> String {
    // launchd supervises a foreground process: no --daemon.
    let args = [
        exe.display().to_string(),
        "--store".into(),
        store.display().to_string(),
        "mount".into(),
        mountpoint.display().to_string(),
    ];
    let items: String = args
        .iter()
        .map(|a| format!("        <string>{}</string>\n", xml_escape(a)))
        .collect();
    let log = store.join("daemon.log");
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
         <plist version=\"1.0\">\n\
         <dict>\n\
         \x20   <key>Label</key>\n\
         \x20   <string>{LAUNCHD_LABEL}</string>\n\
         \x20   <key>ProgramArguments</key>\n\
         \x20   <array>\n\
         {items}\
         \x20   </array>\n\
         \x20   <key>RunAtLoad</key>\n\
         \x20   <true/>\n\
         \x20   <key>KeepAlive</key>\n\
         \x20   <dict>\n\
         \x20       <key>SuccessfulExit</key>\n\
         \x20       <false/>\n\
         \x20   </dict>\n\
         \x20   <key>StandardErrorPath</key>\n\
         \x20   <string>{log}</string>\n\
         </dict>\n\
         </plist>\n",
        log = xml_escape(&log.display().to_string()),
    )
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

pub fn run(store: &Path, args: &ServiceArgs) -> Result<i32> {
    match &args.action {
        ServiceAction::Install(install) => run_install(store, install),
        ServiceAction::Uninstall => {
            let path = unit_dir()?.join(UNIT_NAME);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    println!("removed {}", path.display());
                    eprintln!("run `systemctl --user daemon-reload` to forget it");
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    println!("no unit at {}", path.display());
                }
                Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
            }
            Ok(EXIT_OK)
        }
    }
}

fn run_install(store: &Path, args: &InstallArgs) -> Result<i32> {
    let exe = std::env::current_exe().context("finding the mlxfs executable")?;
    let store = absolute(store)?;
    let mountpoint = absolute(&args.mountpoint)?;
    let format = args.format.unwrap_or_else(default_format);
    let text = match format {
        Format::Systemd => systemd_unit(&exe, &store, &mountpoint),
        Format::Launchd => launchd_plist(&exe, &store, &mountpoint),
    };
    if args.print || format == Format::Launchd {
        print!("{text}");
        if format == Format::Launchd && !args.print {
            eprintln!(
                "save this as ~/Library/LaunchAgents/{LAUNCHD_LABEL}.plist, then \
                 `launchctl load ~/Library/LaunchAgents/{LAUNCHD_LABEL}.plist`"
            );
        }
        return Ok(EXIT_OK);
    }
    let dir = unit_dir()?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(UNIT_NAME);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    eprintln!(
        "enable it (mounts {} now and at every login):\n  \
         systemctl --user daemon-reload && systemctl --user enable --now {UNIT_NAME}",
        mountpoint.display()
    );
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_runs_mount_daemon_and_quotes_paths() {
        let unit = systemd_unit(
            Path::new("/usr/bin/mlxfs"),
            Path::new("/home/a b/store"),
            Path::new("/home/a b/.mlx-cache"),
        );
        assert!(unit.contains(
            "ExecStart=/usr/bin/mlxfs --store \"/home/a b/store\" mount \"/home/a b/.mlx-cache\" --daemon\n"
        ));
        assert!(unit.contains("ExecStop=/usr/bin/mlxfs --store \"/home/a b/store\" unmount"));
        assert!(unit.contains("Type=forking\n"));
        assert!(unit.contains("WantedBy=default.target\n"));
        assert_eq!(systemd_quote("100%$x"), "\"100%%$$x\"");
    }

    #[test]
    fn plist_is_escaped() {
        let plist = launchd_plist(
            Path::new("/opt/mlxfs"),
            Path::new("/Users/x/<s>&"),
            Path::new("/Users/x/.mlx-cache"),
        );
        assert!(plist.contains("<string>/Users/x/&lt;s&gt;&amp;</string>"));
        assert!(plist.contains("<key>RunAtLoad</key>"));
        assert!(!plist.contains("--daemon"));
    }
}
