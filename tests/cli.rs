//! Command-line conventions: `--version` names the commit and the plugin ABI, a closed pipe
//! ends a command quietly, arguments are checked with their units, and `generate` will not
//! flood a terminal.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use crate::util::{bin, run, stderr, temp_dir};

#[test]
fn version_names_the_commit_and_the_plugin_abi() {
    let out = run(&["--version"], b"");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("commit {}", env!("EGRESSWATCH_COMMIT"))),
        "{text}"
    );
    assert!(text.contains("plugin ABI 0."), "{text}");
}

#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    // `egresswatch generate | head -c 4096`: 20 MB of events into a pipe closed early.
    let mut child = Command::new(bin())
        .arg("generate")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = vec![0; 4096];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The read end is dropped here: the next write hits a closed pipe.
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn arguments_are_checked_with_their_units() {
    let dir = temp_dir("cli-args");
    let input = dir.join("none.ndjson");
    std::fs::write(&input, "").unwrap();
    let config = dir.join("c.yaml");
    std::fs::write(&config, "{}\n").unwrap();
    let replay = |extra: &[&str]| {
        let mut args = vec!["replay", "--config", config.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push(input.to_str().unwrap());
        run(&args, b"")
    };
    let out = replay(&["--threshold", "150"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("0 to 100"), "{}", stderr(&out));
    let out = replay(&["--baseline-bytes", "100 parsecs"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("unknown unit"), "{}", stderr(&out));
    // Accepted with units (the replay itself then runs on an empty input).
    let out_dir = dir.join("out");
    let out = replay(&[
        "--baseline-bytes",
        "100MB",
        "--out-dir",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        !stderr(&out).contains("--baseline-bytes"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn generate_writes_to_a_file_with_o() {
    let dir = temp_dir("cli-generate");
    let file = dir.join("events.ndjson");
    let out = run(
        &[
            "generate",
            "--hosts",
            "2",
            "--days",
            "1",
            "-o",
            file.to_str().unwrap(),
        ],
        b"",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.lines().count() > 10, "{}", text.len());
    assert!(text.lines().all(|l| l.starts_with('{')));
}

#[test]
fn json_logs_and_the_exit_summary() {
    let dir = temp_dir("cli-json-logs");
    let config = dir.join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "detector:\n  rules: ['{}']\n",
            crate::util::workspace().join("rules").display()
        ),
    )
    .unwrap();
    let input = b"{\"a\":1}\n{\"b\":2}\nnot json\n";
    let out = run(
        &[
            "--log-format",
            "json",
            "run",
            "--config",
            config.to_str().unwrap(),
        ],
        input,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stderr(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let find = |prefix: &str| {
        lines
            .iter()
            .find(|l| l["message"].as_str().is_some_and(|m| m.starts_with(prefix)))
            .unwrap_or_else(|| panic!("no `{prefix}` line in {lines:?}"))
    };
    assert_eq!(find("egresswatch finished")["lines_in"], 3);
    let output = find("output default");
    assert_eq!(output["events_out"], 3);
    assert_eq!(find("lines the detector could not read")["unreadable"], 1);
    assert_eq!(find("no state file configured")["level"], "WARN");
    assert!(find("job rare_destination_country")["learning"].is_boolean());
}
