//! What the benches that compare the detector on one thread and more, in-process and as the
//! `egresswatch` program, share (`callgrind.rs`, `threads.rs`): where things are, the
//! detector, the program's configuration. Both read the same rules and GeoIP database.

use std::path::{Path, PathBuf};

use egresswatch_plugin::config::BuildOptions;
use egresswatch_plugin::Detector;

/// The host's clock for every batch (after the sample's events, as in a live run).
pub const NOW_MS: i64 = 1_800_000_000_000;

/// The value after the command-line option `name`.
pub fn option(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

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

/// The benches' detector: both rules, the GeoIP database, flagged events annotated or only
/// counted, on `threads` threads.
pub fn detector(annotate: bool, threads: u16) -> Detector {
    let config = serde_json::json!({
        "threads": threads,
        "rules": ["rules"],
        "geoip": { "database": "data/geo/geo-whois-asn-country.mmdb" },
        "actions": { "default": { "annotate": annotate } },
    })
    .to_string();
    let options = BuildOptions {
        base_dir: Some(workspace()),
        ..BuildOptions::default()
    };
    Detector::build(&config, options).expect("detector builds")
}

/// Writes to `path` the program's configuration with the same detector on `threads` threads:
/// standard input, every event to standard output, flagged ones annotated.
pub fn write_run_config(path: &Path, threads: u16) {
    let ws = workspace().canonicalize().expect("workspace");
    let yaml = format!(
        "unreadable: pass\noutputs:\n  default: {{ type: stdout }}\ndetector:\n  threads: {threads}\n  rules: [{rules:?}]\n  geoip:\n    database: {geo:?}\n  actions:\n    default: {{ annotate: true }}\n",
        rules = ws.join("rules").display().to_string(),
        geo = ws
            .join("data/geo/geo-whois-asn-country.mmdb")
            .display()
            .to_string(),
    );
    std::fs::write(path, yaml).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
