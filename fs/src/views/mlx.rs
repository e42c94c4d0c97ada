//! `mlx/<org>/<name>/`: each HF repo whose `refs/main` snapshot has `config.json` and
//! safetensors weights, every file of that snapshot as a regular file, subdirectories kept.

use super::hf::HfRepo;
use super::{Target, TreeBuilder};

pub const ROOT: &str = "mlx";

pub fn is_mlx_loadable(repo: &HfRepo) -> bool {
    repo.has(|p| p == "config.json") && repo.has(|p| p.ends_with(".safetensors"))
}

pub(crate) fn build(repos: &[HfRepo], builder: &mut TreeBuilder) {
    builder.dir(&[ROOT]);
    for repo in repos.iter().filter(|r| is_mlx_loadable(r)) {
        for file in &repo.files {
            let mut parts: Vec<&str> = vec![ROOT, &repo.org, &repo.name];
            let components: Vec<&str> = file.path.split('/').collect();
            let (name, dirs) = components
                .split_last()
                .expect("split yields at least one part");
            parts.extend(dirs);
            builder.add_file(&parts, name, Target::Real(file.ino));
        }
    }
}
