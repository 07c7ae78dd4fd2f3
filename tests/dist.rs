//! The release tarball: `dist/build.sh` packages the binary and plugin under test (the same
//! script builds release ones without `--no-build`); unpacked in a clean folder, with no
//! environment but `PATH`, the quick start runs as its README prints it, finding the plugin in
//! `lib/egresswatch/` from `bin/`.

use std::process::{Command, Stdio};

use crate::util::{bin, build_plugins, temp_dir, workspace};

#[test]
fn the_tarball_unpacked_in_a_clean_folder_runs_the_quick_start() {
    build_plugins();
    let dir = temp_dir("dist");
    let out = dir.join("out");
    let bin_dir = bin().parent().unwrap().to_owned();
    let built = Command::new("bash")
        .arg(workspace().join("dist/build.sh"))
        .args(["--no-build", "--bin-dir"])
        .arg(&bin_dir)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("bash runs");
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let tarball = String::from_utf8_lossy(&built.stdout).trim().to_owned();
    assert!(tarball.ends_with(".tar.gz"), "{tarball}");

    let clean = dir.join("clean");
    std::fs::create_dir_all(&clean).unwrap();
    let unpacked = Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&clean)
        .status()
        .unwrap();
    assert!(unpacked.success());
    let name = std::path::Path::new(&tarball)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_end_matches(".tar.gz")
        .to_owned();
    let root = clean.join(&name);
    // The staging folder the script left is not what runs: remove it.
    std::fs::remove_dir_all(out.join(&name)).unwrap();

    // The quick start exactly as the tarball's README prints it, from the unpacked folder.
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let command = "bin/egresswatch run --config share/egresswatch/examples/quickstart.yaml \
                   < share/egresswatch/examples/data/sample.ndjson";
    assert!(readme.contains(command), "{readme}");
    let run = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(&root)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    let sample = std::fs::read(root.join("share/egresswatch/examples/data/sample.ndjson")).unwrap();
    let lines_in = sample.iter().filter(|&&b| b == b'\n').count();
    let lines_out = run.stdout.iter().filter(|&&b| b == b'\n').count();
    assert_eq!(lines_in, lines_out, "every event comes out");
    let flagged = String::from_utf8_lossy(&run.stdout)
        .lines()
        .filter(|l| l.contains("\"egresswatch\":"))
        .count();
    assert!(flagged > 0, "the sample's attacks are flagged: {stderr}");

    // The service configuration validates as shipped, with its defaults.
    let validate = Command::new(root.join("bin/egresswatch"))
        .args(["validate", "--config", "etc/egresswatch/egresswatch.yaml"])
        .current_dir(&root)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    assert!(
        validate.status.success(),
        "{}",
        String::from_utf8_lossy(&validate.stderr)
    );
    // Packaged without debug information.
    for file in [
        "bin/egresswatch",
        "lib/egresswatch/libegresswatch_plugin.so",
    ] {
        let sections = Command::new("readelf")
            .arg("-S")
            .arg(root.join(file))
            .output()
            .expect("readelf (binutils, like the script's strip) runs");
        let text = String::from_utf8_lossy(&sections.stdout);
        assert!(text.contains(".text"), "{text}");
        assert!(!text.contains(".debug_info"), "{file} has debug info");
    }
}
