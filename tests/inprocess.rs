//! The in-process face: the C ABI from a C program built here with the system C compiler, and
//! the Fluent Bit Lua filter under LuaJIT, driven as Fluent Bit drives it and compared with
//! `egresswatch run` on the same events. Neither needs Fluent Bit. Without a C compiler or
//! `luajit` these tests fail under CI (`CI=true`, where `.ci/run` installs luajit) and say so
//! loudly elsewhere.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use egresswatch_plugin::capi::{EwNode, EwValue, EwVerdict};
use serde_json::Value;

use crate::util::{bin, library, target_dir, temp_dir, workspace};

/// Whether `tool` runs; when not, fails under CI and warns elsewhere (the caller returns).
fn have(tool: &str, test: &str) -> bool {
    let found = Command::new(tool)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            !ci,
            "{test}: `{tool}` is not installed, so this test cannot run"
        );
        eprintln!("\n*** {test} DID NOT RUN: `{tool}` is not installed ***\n");
    }
    found
}

#[test]
fn the_c_abi_from_a_c_program_checks_every_input() {
    if !have("cc", "the_c_abi_from_a_c_program_checks_every_input") {
        return;
    }
    let lib = library("egresswatch_plugin");
    let dir = temp_dir("capi");
    let exe = dir.join("abi");
    let out = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(workspace().join("include"))
        .arg(workspace().join("tests/capi/abi.c"))
        .arg("-o")
        .arg(&exe)
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", target_dir().display()))
        .output()
        .expect("cc runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&exe)
        .arg(workspace().join("rules"))
        .arg(&dir)
        .output()
        .expect("the C program runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\n0 failed"), "{stdout}");
    // The header's structs are the Rust ones, field by field.
    use std::mem::{offset_of, size_of};
    let expect = [
        format!(
            "layout ew_value {} {} {} {} {} {}",
            size_of::<EwValue>(),
            offset_of!(EwValue, kind),
            offset_of!(EwValue, count),
            offset_of!(EwValue, str),
            offset_of!(EwValue, len),
            offset_of!(EwValue, num)
        ),
        format!(
            "layout ew_node {} {} {} {} {} {} {} {}",
            size_of::<EwNode>(),
            offset_of!(EwNode, kind),
            offset_of!(EwNode, count),
            offset_of!(EwNode, key),
            offset_of!(EwNode, key_len),
            offset_of!(EwNode, str),
            offset_of!(EwNode, len),
            offset_of!(EwNode, num)
        ),
        format!(
            "layout ew_verdict {} {} {} {} {} {}",
            size_of::<EwVerdict>(),
            offset_of!(EwVerdict, flagged),
            offset_of!(EwVerdict, node_count),
            offset_of!(EwVerdict, nodes),
            offset_of!(EwVerdict, route),
            offset_of!(EwVerdict, route_len)
        ),
    ];
    for line in expect {
        assert!(
            stdout.lines().any(|l| l == line),
            "{line} not in:\n{stdout}"
        );
    }
}

/// The block between the cdef markers.
fn cdef(text: &str) -> &str {
    let start = text.find("/* ew:cdef-begin */").expect("cdef begin");
    let end = text.find("/* ew:cdef-end */").expect("cdef end");
    &text[start..end]
}

#[test]
fn the_lua_script_declares_the_header_and_is_what_fluent_bit_lua_prints() {
    let header = fs::read_to_string(workspace().join("include/egresswatch.h")).unwrap();
    let script =
        &fs::read_to_string(workspace().join("examples/fluent-bit-inprocess/egresswatch.lua"))
            .unwrap();
    assert_eq!(cdef(&header), cdef(script));
    let dir = temp_dir("fluent-bit-lua");
    let config = workspace().join("examples/fluent-bit-inprocess/egresswatch.yaml");
    let out = Command::new(bin())
        .args(["fluent-bit-lua", "--config"])
        .arg(&config)
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let settings_end = "-- ew:settings-end\n";
    let tail = |t: &str| t[t.find(settings_end).unwrap()..].to_owned();
    assert_eq!(tail(&printed), tail(script));
    let lib = target_dir().join("libegresswatch_plugin.so");
    assert!(
        printed.contains(&format!("library = \"{}\"", lib.display())),
        "{printed}"
    );
    assert!(printed.contains(&format!("config = \"{}\"", config.display())));
    let state = workspace().join("examples/fluent-bit-inprocess/egresswatch.state");
    assert!(printed.contains(&format!("state = \"{}\"", state.display())));
    assert!(printed.contains("save_every_secs = 60,"));
}

/// Writes a configuration and the script `fluent-bit-lua` prints for it into `dir`.
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let config = dir.join("egresswatch.yaml");
    fs::write(
        &config,
        format!(
            "outputs: {{ default: {{ type: stdout }} }}\nstate: {{ path: ew.state }}\n\
             detector:\n  rules: [{}]\n  actions: {{ default: {{ annotate: true }} }}\n",
            workspace().join("rules").display()
        ),
    )
    .unwrap();
    library("egresswatch_plugin");
    let out = Command::new(bin())
        .args(["fluent-bit-lua", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = dir.join("egresswatch.lua");
    fs::write(&script, out.stdout).unwrap();
    (config, script)
}

/// `egresswatch run` on `input`, without state: one JSON value per line.
fn run_outputs(dir: &Path, input: &Path) -> Vec<Value> {
    let config = dir.join("run.yaml");
    fs::write(
        &config,
        format!(
            "outputs: {{ default: {{ type: stdout }} }}\ndetector:\n  rules: [{}]\n  \
             actions: {{ default: {{ annotate: true }} }}\n",
            workspace().join("rules").display()
        ),
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&config)
        .stdin(fs::File::open(input).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The filter under LuaJIT on `input`: per record, cb's code and the record it returned.
fn lua_outputs(script: &Path, input: &Path, out: &Path) -> Vec<(i64, Value)> {
    let status = Command::new("luajit")
        .arg(workspace().join("tests/lua/drive.lua"))
        .arg(script)
        .arg(input)
        .arg(out)
        .status()
        .expect("luajit runs");
    assert!(status.success());
    fs::read_to_string(out)
        .unwrap()
        .lines()
        .map(|l| {
            let (code, record) = l.split_once(' ').unwrap();
            (code.parse().unwrap(), serde_json::from_str(record).unwrap())
        })
        .collect()
}

/// Numbers compared by value (Lua has one number type), empty arrays and objects alike (a
/// Lua table cannot tell them apart).
fn normal(v: &Value) -> Value {
    match v {
        Value::Number(n) => n
            .as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
            .map_or_else(|| v.clone(), |f| Value::from(f as i64)),
        Value::Array(a) => Value::Array(a.iter().map(normal).collect()),
        Value::Object(o) if o.is_empty() => Value::Array(Vec::new()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), normal(v))).collect()),
        other => other.clone(),
    }
}

/// Runs both faces on `input` and asserts the same flagged events with the same fields.
fn same_verdicts(dir: &Path, script: &Path, input: &Path) -> usize {
    let inputs: Vec<Value> = fs::read_to_string(input)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let run = run_outputs(dir, input);
    let lua = lua_outputs(script, input, &dir.join("lua.out"));
    assert_eq!(run.len(), inputs.len());
    assert_eq!(lua.len(), inputs.len());
    let flagged_run: Vec<usize> = (0..inputs.len()).filter(|&i| run[i] != inputs[i]).collect();
    let flagged_lua: Vec<usize> = (0..inputs.len()).filter(|&i| lua[i].0 == 2).collect();
    assert_eq!(flagged_run, flagged_lua, "the same events are flagged");
    for i in 0..inputs.len() {
        assert!(matches!(lua[i].0, 0 | 2), "record {i}: code {}", lua[i].0);
        assert_eq!(
            normal(&run[i]),
            normal(&lua[i].1),
            "record {i}: the same record comes out"
        );
    }
    flagged_run.len()
}

#[test]
fn the_lua_filter_flags_what_run_flags_with_the_same_alert_fields() {
    if !have(
        "luajit",
        "the_lua_filter_flags_what_run_flags_with_the_same_alert_fields",
    ) {
        return;
    }
    let dir = temp_dir("lua-golden");
    let (config, script) = setup(&dir);
    let sample = workspace().join("examples/data/sample.ndjson");
    let flagged = same_verdicts(&dir, &script, &sample);
    assert!(
        flagged >= 10,
        "the sample's attacks are flagged ({flagged})"
    );
    // The state was saved at shutdown (the handle's finalizer), in run's state file format.
    let out = Command::new(bin())
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ew.state: OK"), "{stdout}");

    // The same events with the flagged ones reshaped: dotted keys, fields of their own that
    // an alert must not replace, parents that are not objects.
    let run = run_outputs(&dir, &sample);
    let lines: Vec<String> = fs::read_to_string(&sample)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let mut reshaped = String::new();
    let mut k = 0;
    for (i, line) in lines.iter().enumerate() {
        let mut e: Value = serde_json::from_str(line).unwrap();
        if run[i] != e {
            let o = e.as_object_mut().unwrap();
            match k % 5 {
                0 => {
                    // Every destination field dotted at the top level.
                    let d = o.remove("destination").unwrap();
                    for (key, v) in d.as_object().unwrap() {
                        o.insert(format!("destination.{key}"), v.clone());
                    }
                }
                1 => {
                    o.insert("rule".into(), serde_json::json!({"name": "Allow-Outbound"}));
                    o.insert("event.severity".into(), Value::from(3));
                }
                2 => {
                    o["destination"]["geo"] = Value::from("unknown");
                    o.insert("rule.name".into(), Value::from("fw-42"));
                }
                3 => {
                    o.insert("egresswatch".into(), Value::from("mine"));
                    o["event"].as_object_mut().unwrap().remove("kind");
                }
                _ => {
                    o.insert(
                        "destination.geo".into(),
                        serde_json::json!({"city_name": "X"}),
                    );
                    o.insert("threat".into(), serde_json::json!([]));
                }
            }
            k += 1;
        }
        reshaped.push_str(&e.to_string());
        reshaped.push('\n');
    }
    let input = dir.join("reshaped.ndjson");
    fs::write(&input, reshaped).unwrap();
    fs::remove_file(dir.join("ew.state")).unwrap();
    assert_eq!(same_verdicts(&dir, &script, &input), flagged);
}
