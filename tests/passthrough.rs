//! Lines go through unchanged, in order, whatever they contain; nothing is dropped.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{bin, build_plugins, library, run, stderr, temp_dir, workspace, write};

/// A mix of readable events and every kind of unreadable line.
fn mixed_input() -> Vec<u8> {
    let mut input = Vec::new();
    input.extend_from_slice(
        b"{\"@timestamp\":\"2026-11-01T00:00:00Z\",\"event\":{\"category\":[\"network\"]}}\n",
    );
    input.extend_from_slice(b"not json at all\n");
    input.extend_from_slice(b"\xff\xfe invalid utf-8 \xc3\x28\n");
    input.extend_from_slice(b"\n");
    input.extend_from_slice(b"[1, 2, 3]\n");
    input.extend_from_slice(format!("{{\"long\":\"{}\"}}\n", "x".repeat(300)).as_bytes());
    input.extend_from_slice(b"{ \"spacing\" :  \"kept\" ,\"unicode\":\"\xc3\xa9\\u00e9\" }\r\n");
    input.extend_from_slice(b"{\"last\":true}");
    input
}

fn config(dir: &std::path::Path, extra: &str) -> String {
    let rules = workspace().join("rules");
    let path = write(
        dir,
        "config.yaml",
        format!(
            "batch:\n  max_line_bytes: 200\ndetector:\n  rules: [{}]\n{extra}",
            rules.display()
        ),
    );
    path.to_str().unwrap().to_owned()
}

#[test]
fn every_line_comes_out_byte_identical_and_in_order() {
    let dir = temp_dir("passthrough-identical");
    let input = mixed_input();
    let output = run(&["run", "--config", &config(&dir, "")], &input);
    assert!(output.status.success(), "{}", stderr(&output));
    let mut expected = input.clone();
    expected.push(b'\n'); // the unterminated last line gets its newline
    assert_eq!(output.stdout, expected);
    let err = stderr(&output);
    assert!(err.contains("lines_in=8"), "{err}");
    assert!(err.contains("not_utf8=1"), "{err}");
    assert!(err.contains("oversize=1"), "{err}");
    assert!(err.contains("unreadable=3"), "{err}");
}

#[test]
fn many_blocks_keep_count_and_order() {
    let dir = temp_dir("passthrough-many");
    let mut input = Vec::new();
    for i in 0..200_000u32 {
        if i % 997 == 0 {
            writeln!(input, "garbage line {i}").unwrap();
        } else {
            writeln!(
                input,
                "{{\"n\":{i},\"pad\":\"{}\"}}",
                "p".repeat((i % 50) as usize)
            )
            .unwrap();
        }
    }
    let output = run(
        &["run", "--config", &config(&dir, "batch_note: 1\n")],
        &input,
    );
    // `batch_note` is not a config key: the config is refused and nothing is read.
    assert!(!output.status.success());
    assert!(stderr(&output).contains("unknown field `batch_note`"));

    let output = run(&["run", "--config", &config(&dir, "")], &input);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(output.stdout.len(), input.len());
    assert!(output.stdout == input, "output differs from input");
}

#[test]
fn unreadable_lines_can_go_to_the_errors_output() {
    let dir = temp_dir("passthrough-errors");
    let errors = dir.join("errors.ndjson");
    let cfg = config(
        &dir,
        "unreadable: errors\noutputs:\n  errors: {type: file, path: errors.ndjson}\n",
    );
    let output = run(&["run", "--config", &cfg], &mixed_input());
    assert!(output.status.success(), "{}", stderr(&output));
    let main = String::from_utf8(output.stdout).unwrap();
    let errors = std::fs::read(errors).unwrap();
    assert_eq!(main.lines().count(), 3, "{main}");
    assert!(main.starts_with("{\"@timestamp\""));
    assert_eq!(
        errors
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
        4
    );
    assert!(errors.starts_with(b"not json at all\n\xff\xfe"));
}

#[test]
fn unreadable_lines_can_be_wrapped_for_json_only_inputs() {
    let dir = temp_dir("passthrough-wrap");
    let output = run(
        &["run", "--config", &config(&dir, "unreadable: wrap\n")],
        &mixed_input(),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 8);
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(value.is_object(), "{line}");
    }
    assert_eq!(lines[1], r#"{"message":"not json at all"}"#);
    assert_eq!(lines[4], r#"{"message":"[1, 2, 3]"}"#);
}

#[test]
fn sigterm_flushes_everything_read_and_exits_zero() {
    build_plugins();
    let dir = temp_dir("passthrough-sigterm");
    let mut child = Command::new(bin())
        .args(["run", "--config", &config(&dir, "")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for i in 0..1000 {
        writeln!(stdin, "{{\"n\":{i}}}").unwrap();
    }
    stdin.flush().unwrap();
    // Read until all 1000 lines are out: they were flushed without waiting for EOF.
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = 0;
    let mut line = String::new();
    while seen < 1000 && Instant::now() < deadline {
        line.clear();
        if stdout.read_line(&mut line).unwrap() == 0 {
            break;
        }
        assert_eq!(line, format!("{{\"n\":{seen}}}\n"));
        seen += 1;
    }
    assert_eq!(seen, 1000);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    drop(stdin);
    assert!(output.status.success(), "exit {:?}", output.status);
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("stopped by signal"), "{err}");
    assert!(err.contains("lines_in=1000"), "{err}");
}

/// Runs the faulty test plugin, which panics on every batch that starts with a `boom` event,
/// over batches of two lines.
fn run_with_failing_batches(test: &str, extra: &str) -> (std::process::Output, std::path::PathBuf) {
    let dir = temp_dir(test);
    let config = write(
        &dir,
        "config.yaml",
        format!("batch: {{max_events: 2}}\ndetector: {{fail: batch}}\n{extra}"),
    );
    let plugin = library("egresswatch_test_faulty");
    let input = b"{\"n\":1}\n{\"n\":2}\n{\"boom\":3}\n{\"n\":4}\n{\"n\":5}\n";
    let output = run(
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--plugin",
            plugin.to_str().unwrap(),
        ],
        input,
    );
    (output, dir)
}

#[test]
fn a_batch_the_plugin_fails_on_passes_through_unchanged() {
    let (output, _) = run_with_failing_batches("passthrough-fail-open", "");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "{\"n\":1}\n{\"n\":2}\n{\"boom\":3}\n{\"n\":4}\n{\"n\":5}\n"
    );
    let err = stderr(&output);
    assert!(err.contains("plugin failed on a batch"), "{err}");
    assert!(err.contains("deliberate panic on a batch"), "{err}");
    assert!(err.contains("plugin_errors=1"), "{err}");
}

#[test]
fn fail_closed_sends_a_failed_batch_to_the_errors_output() {
    let (output, dir) = run_with_failing_batches(
        "passthrough-fail-closed",
        "fail_closed: true\noutputs:\n  errors: {type: file, path: errors.ndjson}\n",
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "{\"n\":1}\n{\"n\":2}\n{\"n\":5}\n"
    );
    let errors = std::fs::read_to_string(dir.join("errors.ndjson")).unwrap();
    assert_eq!(errors, "{\"boom\":3}\n{\"n\":4}\n");
}
