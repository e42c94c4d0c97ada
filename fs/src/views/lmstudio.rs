//! `lmstudio/<publisher>/<repo>/<file>.gguf`: LM Studio's layout for every GGUF in an HF
//! snapshot, and `lmstudio/<namespace>/<model>/<tag>.gguf` for every Ollama model layer.

use super::hf::HfRepo;
use super::{Target, TreeBuilder};

pub const ROOT: &str = "lmstudio";

pub(crate) fn build_from_hf(repos: &[HfRepo], builder: &mut TreeBuilder) {
    builder.dir(&[ROOT]);
    for repo in repos {
        for file in repo.files.iter().filter(|f| f.path.ends_with(".gguf")) {
            let name = file.path.rsplit('/').next().unwrap_or(&file.path);
            builder.add_file(&[ROOT, &repo.org, &repo.name], name, Target::Real(file.ino));
        }
    }
}

/// An Ollama model `<host>/<namespace>/<model>:<tag>` whose model layer is `blob`.
pub(crate) fn add_ollama_model(
    builder: &mut TreeBuilder,
    namespace: &str,
    model: &str,
    tag: &str,
    blob: u64,
) {
    builder.add_file(
        &[ROOT, namespace, model],
        &format!("{tag}.gguf"),
        Target::Real(blob),
    );
}
