//! Records the commit the program is built from, for `--version` and `egresswatch_build_info`:
//! `EGRESSWATCH_COMMIT` when set (a build from a source tarball), else `git rev-parse`, else
//! `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=EGRESSWATCH_COMMIT");
    let commit = match std::env::var("EGRESSWATCH_COMMIT") {
        Ok(commit) if !commit.is_empty() => commit,
        _ => {
            if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
                // Moves with every commit and checkout in this worktree.
                println!("cargo:rerun-if-changed={dir}/HEAD");
                println!("cargo:rerun-if-changed={dir}/logs/HEAD");
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
        }
    };
    println!("cargo:rustc-env=EGRESSWATCH_COMMIT={commit}");
}
