//! `mlxfs completions <bash|zsh|fish|elvish|powershell>`: a shell completion script on stdout.
//!
//! bash: `mlxfs completions bash > ~/.local/share/bash-completion/completions/mlxfs`
//! zsh:  `mlxfs completions zsh > "${fpath[1]}/_mlxfs"`
//! fish: `mlxfs completions fish > ~/.config/fish/completions/mlxfs.fish`

use anyhow::Result;

use super::EXIT_OK;

#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

pub fn run(command: &mut clap::Command, args: &CompletionsArgs) -> Result<i32> {
    let name = command.get_name().to_string();
    clap_complete::generate(args.shell, command, name, &mut std::io::stdout());
    Ok(EXIT_OK)
}
