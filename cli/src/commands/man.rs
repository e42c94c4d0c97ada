//! `mlxfs man [--dir DIR]`: the man page (roff) on stdout, or with `--dir`, `mlxfs.1` and one
//! `mlxfs-<command>.1` per command written into DIR (e.g. `~/.local/share/man/man1`).

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::EXIT_OK;

#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Write mlxfs.1 and mlxfs-<command>.1 into this directory instead of printing mlxfs.1.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

fn render(command: clap::Command) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(command)
        .render(&mut out)
        .context("rendering the man page")?;
    Ok(out)
}

pub fn run(command: clap::Command, args: &ManArgs) -> Result<i32> {
    let command = command.version(env!("CARGO_PKG_VERSION"));
    let Some(dir) = &args.dir else {
        use std::io::Write;
        std::io::stdout().write_all(&render(command)?)?;
        return Ok(EXIT_OK);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = command.get_name().to_string();
    let mut pages = vec![(format!("{name}.1"), render(command.clone())?)];
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let page_name = format!("{name}-{}", sub.get_name());
        // clap names are &'static str without its `string` feature; this process ends soon.
        let leaked: &'static str = Box::leak(page_name.clone().into_boxed_str());
        let sub = sub.clone().name(leaked).version(env!("CARGO_PKG_VERSION"));
        pages.push((format!("{page_name}.1"), render(sub)?));
    }
    for (file, bytes) in pages {
        let path = dir.join(&file);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(EXIT_OK)
}
