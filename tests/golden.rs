//! Golden cases: every folder of `tests/data/golden/` is a case (a new case is new files, no
//! code). A case holds a `config.yaml` (with `{{ROOT}}` standing for the workspace), an optional
//! `in.ndjson` fed on stdin, and what must come out:
//!
//! - `out.ndjson`: standard output, byte for byte;
//! - `expected.<file>`: a file the run writes (a named output), byte for byte;
//! - `stderr.txt`: lines that must each appear in standard error;
//! - `args`: the subcommand (default `run`); `exit`: the exit code (default 0).
//!
//! A case whose `out.ndjson` has as many lines as its `in.ndjson` (nothing routed away) is also
//! checked line for line: every original value kept, every added field mapped by the component
//! template.
//!
//! Set `EGRESSWATCH_GOLDEN=<case>` to run one case; set `EGRESSWATCH_BLESS=1` to rewrite
//! `out.ndjson` and `expected.*` from a run, then review the diff.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

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

/// The case folders, sorted.
fn cases() -> Vec<String> {
    let root = workspace().join("tests/data/golden");
    let mut names: Vec<String> = fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_type().unwrap().is_dir())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no golden case in {}", root.display());
    names
}

/// Runs every case (or the one `EGRESSWATCH_GOLDEN` names) and reports all that failed.
#[test]
fn golden_cases() {
    let only = std::env::var("EGRESSWATCH_GOLDEN").ok();
    let chosen: Vec<String> = cases()
        .into_iter()
        .filter(|name| only.as_deref().is_none_or(|o| o == name))
        .collect();
    assert!(!chosen.is_empty(), "no golden case named {only:?}");
    let mut failed = Vec::new();
    for name in chosen {
        let outcome = std::panic::catch_unwind(|| run_case(&name));
        if outcome.is_err() {
            failed.push(name);
        }
    }
    assert!(
        failed.is_empty(),
        "golden cases failed: {failed:?} (messages above)"
    );
}

/// Every leaf of `value` as `(dotted path, value)`; arrays contribute each element under the
/// array's path.
fn leaves(value: &Value, path: &str, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let p = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                leaves(v, &p, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| leaves(v, path, out)),
        scalar => out.push((path.to_owned(), scalar.clone())),
    }
}

/// The cases whose output is their input with alerts added, line for line: those with as many
/// output lines as input lines.
fn annotating_cases() -> Vec<String> {
    let root = workspace().join("tests/data/golden");
    let lines = |case: &str, file: &str| {
        fs::read_to_string(root.join(case).join(file))
            .ok()
            .map(|text| text.lines().count())
    };
    cases()
        .into_iter()
        .filter(|case| {
            lines(case, "in.ndjson").is_some()
                && lines(case, "in.ndjson") == lines(case, "out.ndjson")
        })
        .collect()
}

fn line_pairs(case: &str) -> Vec<(Value, Value)> {
    let dir = workspace().join("tests/data/golden").join(case);
    let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap();
    let (input, output) = (read("in.ndjson"), read("out.ndjson"));
    assert_eq!(input.lines().count(), output.lines().count(), "{case}");
    input
        .lines()
        .zip(output.lines())
        .map(|(i, o)| {
            (
                serde_json::from_str(i).unwrap(),
                serde_json::from_str(o).unwrap(),
            )
        })
        .collect()
}

#[test]
fn every_original_value_is_still_in_the_golden_outputs() {
    let mut alerts = 0;
    for case in annotating_cases() {
        for (n, (input, output)) in line_pairs(&case).iter().enumerate() {
            let (mut before, mut after) = (Vec::new(), Vec::new());
            leaves(input, "", &mut before);
            leaves(output, "", &mut after);
            for leaf in &before {
                assert!(
                    after.contains(leaf),
                    "{case} line {}: {leaf:?} lost or changed",
                    n + 1
                );
            }
            if output.get("egresswatch").is_some_and(Value::is_object)
                || output["egresswatch.rule"].is_object()
                || after.iter().any(|(p, _)| p.starts_with("egresswatch.rule"))
            {
                alerts += 1;
            }
        }
    }
    assert!(alerts >= 7, "the golden cases hold {alerts} alerts");
}

/// `path -> type` for every field of an Elasticsearch mapping.
fn mapped_types(properties: &Value, path: &str, out: &mut Vec<(String, String)>) {
    for (name, mapping) in properties.as_object().into_iter().flatten() {
        let p = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}.{name}")
        };
        match (&mapping["properties"], mapping["type"].as_str()) {
            (Value::Object(_), _) => mapped_types(&mapping["properties"], &p, out),
            (_, Some(kind)) => out.push((p, kind.to_owned())),
            _ => panic!("{p}: neither properties nor type"),
        }
    }
}

/// Whether Elasticsearch indexes a JSON value as a field of type `kind` without changing it.
fn fits(value: &Value, kind: &str) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(_) => kind == "boolean",
        Value::String(_) => matches!(kind, "keyword" | "text" | "date" | "ip" | "wildcard"),
        Value::Number(n) if n.is_i64() || n.is_u64() => {
            matches!(kind, "long" | "double" | "float" | "scaled_float" | "date")
        }
        Value::Number(_) => matches!(kind, "double" | "float" | "scaled_float"),
        _ => false,
    }
}

#[test]
fn the_component_template_maps_every_field_alerts_add() {
    let template: Value = serde_json::from_str(
        &fs::read_to_string(workspace().join("templates/elasticsearch/egresswatch.json")).unwrap(),
    )
    .unwrap();
    let mut types = Vec::new();
    mapped_types(
        &template["template"]["mappings"]["properties"],
        "",
        &mut types,
    );
    let mut checked = 0;
    for case in annotating_cases() {
        for (input, output) in line_pairs(&case) {
            let (mut before, mut after) = (Vec::new(), Vec::new());
            leaves(&input, "", &mut before);
            leaves(&output, "", &mut after);
            for (path, value) in after {
                if before.iter().any(|(p, _)| *p == path) {
                    continue;
                }
                let kind = types
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map(|(_, k)| k.as_str())
                    .unwrap_or_else(|| panic!("{case}: {path} is written but not mapped"));
                assert!(fits(&value, kind), "{case}: {path} = {value} in a {kind}");
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "only {checked} added fields checked");
}

#[test]
fn the_template_command_prints_the_template_in_the_repository() {
    let out = Command::new(bin())
        .args(["template", "elasticsearch"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let file: Value = serde_json::from_str(
        &fs::read_to_string(workspace().join("templates/elasticsearch/egresswatch.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(printed, file);
}
