//! Where the benches that run the `egresswatch` program find it, and the repository.

use std::path::{Path, PathBuf};

/// The repository root (benches read its sample events, rules and GeoIP database).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The release `egresswatch` program, when it has been built with its plugin beside it (a
/// bench is `target/release/deps/<bench>-*`; they are in `target/release`).
pub fn program() -> Option<PathBuf> {
    let dir = std::env::current_exe().ok()?.parent()?.parent()?.to_owned();
    let exe = dir.join("egresswatch");
    let plugin = dir.join(format!(
        "{}egresswatch_plugin{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    (exe.is_file() && plugin.is_file()).then_some(exe)
}
