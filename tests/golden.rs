//! Golden cases: `tests/data/golden/<case>/` holds a `config.yaml` (with `{{ROOT}}` standing for
//! the workspace), an optional `in.ndjson` fed on stdin, and what must come out:
//!
//! - `out.ndjson`: standard output, byte for byte;
//! - `expected.<file>`: a file the run writes (a named output), byte for byte;
//! - `stderr.txt`: lines that must each appear in standard error;
//! - `args`: the subcommand (default `run`); `exit`: the exit code (default 0).
//!
//! Set `EGRESSWATCH_BLESS=1` to rewrite `out.ndjson` and `expected.*` from a run; review the diff.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::util::{bin, build_plugins, temp_dir, workspace};

fn run_case(name: &str) {
    build_plugins();
    let case = workspace().join("tests/data/golden").join(name);
    let dir = temp_dir(&format!("golden-{name}"));
    copy_dir(&case, &dir);
    let config = fs::read_to_string(case.join("config.yaml")).unwrap();
    let root = workspace().to_string_lossy().into_owned();
    fs::write(dir.join("config.yaml"), config.replace("{{ROOT}}", &root)).unwrap();
    let command = fs::read_to_string(case.join("args")).unwrap_or_else(|_| "run".into());
    let input = fs::File::open(case.join("in.ndjson"))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null());
    let output = Command::new(bin())
        .current_dir(&dir)
        .args([command.trim(), "--config", "config.yaml"])
        .env("RUST_BACKTRACE", "0")
        .stdin(input)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected_exit: i32 = fs::read_to_string(case.join("exit"))
        .map(|s| s.trim().parse().unwrap())
        .unwrap_or(0);
    assert_eq!(
        output.status.code(),
        Some(expected_exit),
        "{name}: {stderr}"
    );
    let bless = std::env::var_os("EGRESSWATCH_BLESS").is_some();
    if command.trim() == "run" {
        compare(&case.join("out.ndjson"), &output.stdout, bless);
    }
    for entry in fs::read_dir(&case).unwrap() {
        let file = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(written) = file.strip_prefix("expected.") {
            let actual = fs::read(dir.join(written)).unwrap_or_default();
            compare(&case.join(&file), &actual, bless);
        }
    }
    if let Ok(lines) = fs::read_to_string(case.join("stderr.txt")) {
        for line in lines.lines().filter(|l| !l.is_empty()) {
            assert!(
                stderr.contains(line),
                "{name}: stderr lacks {line:?}:\n{stderr}"
            );
        }
    }
}

fn compare(expected_path: &Path, actual: &[u8], bless: bool) {
    if bless {
        fs::write(expected_path, actual).unwrap();
        return;
    }
    let expected = fs::read(expected_path)
        .unwrap_or_else(|e| panic!("{}: {e} (bless to create)", expected_path.display()));
    if expected != actual {
        let exp = String::from_utf8_lossy(&expected);
        let act = String::from_utf8_lossy(actual);
        let first = exp.lines().zip(act.lines()).position(|(a, b)| a != b);
        panic!(
            "{} differs (expected {} lines, got {}); first differing line {:?}:\n  expected: {:?}\n  actual:   {:?}",
            expected_path.display(),
            exp.lines().count(),
            act.lines().count(),
            first.map(|i| i + 1),
            first.and_then(|i| exp.lines().nth(i)),
            first.and_then(|i| act.lines().nth(i)),
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn annotate() {
    run_case("annotate");
}

#[test]
fn route() {
    run_case("route");
}

#[test]
fn both() {
    run_case("both");
}

#[test]
fn dotted() {
    run_case("dotted");
}

#[test]
fn unsupported() {
    run_case("unsupported");
}

#[test]
fn malformed() {
    run_case("malformed");
}
