//! Configuration as an operator writes it: `${VAR}` interpolation, several files merged
//! (`--config` repeated, `--config-dir`, `EGRESSWATCH_CONFIG`), duplicate keys refused with
//! their file and line, and exit status 78 (EX_CONFIG) for every configuration error.

use crate::util::{run, run_env, stderr, temp_dir, workspace, write};

/// EX_CONFIG from sysexits.h, as Vector uses.
const EX_CONFIG: i32 = 78;

fn rules() -> String {
    workspace().join("rules").display().to_string()
}

#[test]
fn variables_are_interpolated_and_files_merge() {
    let dir = temp_dir("config-merge");
    let base = write(
        &dir,
        "base.yaml",
        format!(
            "input: {{ type: tcp, address: '127.0.0.1:${{EW_TEST_PORT}}' }}\n\
             detector:\n  rules: ['{}']\n",
            rules()
        ),
    );
    let extra = write(
        &dir,
        "extra.toml",
        "[outputs.anomalies]\ntype = \"file\"\npath = \"${EW_TEST_OUT:-anomalies.ndjson}\"\n\
         [state]\npath = \"state.bin\"\n",
    );
    let args = [
        "validate",
        "--config",
        base.to_str().unwrap(),
        "--config",
        extra.to_str().unwrap(),
    ];
    let out = run_env(&args, b"", &[("EW_TEST_PORT", "9123")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(": OK (plugin"), "{text}");
    // The state file of the second file is there (relative to the first file's folder).
    assert!(text.contains("state.bin"), "{text}");

    // The same through EGRESSWATCH_CONFIG, comma-separated.
    let both = format!("{},{}", base.display(), extra.display());
    let out = run_env(
        &["validate"],
        b"",
        &[("EW_TEST_PORT", "9123"), ("EGRESSWATCH_CONFIG", &both)],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // --config-dir reads the folder's files in name order.
    let out = run_env(
        &["validate", "--config-dir", dir.to_str().unwrap()],
        b"",
        &[("EW_TEST_PORT", "9123")],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // Without the variable: exit 78, naming the file, the line and the variable.
    let out = run(&args, b"");
    assert_eq!(out.status.code(), Some(EX_CONFIG), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{}:1: ${{EW_TEST_PORT}}: environment variable not set",
            base.display()
        )),
        "{err}"
    );
}

#[test]
fn a_value_set_in_two_files_is_refused_with_both_places() {
    let dir = temp_dir("config-conflict");
    let a = write(
        &dir,
        "a.yaml",
        format!(
            "batch:\n  max_events: 10\ndetector:\n  rules: ['{}']\n",
            rules()
        ),
    );
    let b = write(
        &dir,
        "b.yaml",
        "unreadable: pass\nbatch:\n  max_events: 20\n",
    );
    let out = run(
        &["run", "-c", a.to_str().unwrap(), "-c", b.to_str().unwrap()],
        b"",
    );
    assert_eq!(out.status.code(), Some(EX_CONFIG), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{}:3: batch.max_events: already set at {}:2",
            b.display(),
            a.display()
        )),
        "{err}"
    );
}

#[test]
fn duplicate_keys_are_refused_with_file_line_and_key() {
    let dir = temp_dir("config-duplicate");
    let config = write(
        &dir,
        "c.yaml",
        format!(
            "detector:\n  rules: ['{}']\n  geoip: off\n  rules: []\n",
            rules()
        ),
    );
    for command in ["validate", "run"] {
        let out = run(&[command, "--config", config.to_str().unwrap()], b"");
        assert_eq!(out.status.code(), Some(EX_CONFIG), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "{}:4: detector.rules: duplicate key (first set at line 2)",
                config.display()
            )),
            "{err}"
        );
    }
}

#[test]
fn every_kind_of_configuration_error_exits_78() {
    let dir = temp_dir("config-exit");
    let cases = [
        // Unknown key (the parser's error, with its position).
        ("unknown.yaml", "batch:\n  max_evnts: 7\n".to_owned()),
        // Inconsistent value.
        ("value.yaml", "batch: { max_events: 0 }\n".to_owned()),
        // The plugin refuses its section.
        (
            "plugin.yaml",
            format!(
                "detector:\n  rules: ['{}']\n  geoip: {{ databse: x }}\n",
                rules()
            ),
        ),
    ];
    for (name, text) in cases {
        let config = write(&dir, name, text);
        let out = run(&["validate", "--config", config.to_str().unwrap()], b"");
        assert_eq!(
            out.status.code(),
            Some(EX_CONFIG),
            "{name}: {}",
            stderr(&out)
        );
    }
    let value = dir.join("value.yaml");
    let out = run(&["validate", "--config", value.to_str().unwrap()], b"");
    assert!(
        stderr(&out).contains(&format!(
            "{}:1: batch.max_events: must be at least 1",
            value.display()
        )),
        "{}",
        stderr(&out)
    );
    // A missing file is a configuration error too.
    let out = run(
        &["validate", "--config", "/nonexistent/egresswatch.yaml"],
        b"",
    );
    assert_eq!(out.status.code(), Some(EX_CONFIG), "{}", stderr(&out));
    // Not a configuration error: a plugin that cannot be loaded.
    let ok = write(
        &dir,
        "ok.yaml",
        format!("detector:\n  rules: ['{}']\n", rules()),
    );
    let out = run(
        &[
            "validate",
            "-c",
            ok.to_str().unwrap(),
            "--plugin",
            "/nonexistent/lib.so",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}
