//! One test per way loading the plugin can fail: each asserts the message a user sees and a
//! non-zero exit.

use crate::util::{self, library, run, run_env, stderr, temp_dir, write};

/// Runs `validate` with a minimal config and the given plugin; returns the exit status and
/// standard error.
fn validate_with(test: &str, plugin: &str, detector: &str, env: &[(&str, &str)]) -> (bool, String) {
    let dir = temp_dir(test);
    let config = write(&dir, "config.yaml", format!("detector: {detector}\n"));
    let output = run_env(
        &[
            "validate",
            "--config",
            config.to_str().unwrap(),
            "--plugin",
            plugin,
        ],
        b"",
        env,
    );
    (output.status.success(), stderr(&output))
}

#[test]
fn missing_plugin_file() {
    let (ok, err) = validate_with(
        "loading-missing",
        "/nonexistent/libegresswatch_plugin.so",
        "{}",
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("plugin not found: /nonexistent/libegresswatch_plugin.so"),
        "{err}"
    );
}

#[test]
fn file_that_is_not_a_shared_library() {
    let dir = temp_dir("loading-not-a-library");
    let fake = write(&dir, "libfake.so", "this is text, not ELF");
    let (ok, err) = validate_with(
        "loading-not-a-library-run",
        fake.to_str().unwrap(),
        "{}",
        &[],
    );
    assert!(!ok);
    assert!(err.contains("not a loadable shared library"), "{err}");
    assert!(err.contains("libfake.so"), "{err}");
}

#[test]
fn library_without_root_module() {
    let lib = library("egresswatch_test_no_root");
    let (ok, err) = validate_with("loading-no-root", lib.to_str().unwrap(), "{}", &[]);
    assert!(!ok);
    assert!(
        err.contains("is a shared library but not an egresswatch plugin"),
        "{err}"
    );
}

#[test]
fn plugin_built_against_the_previous_abi() {
    let lib = library("egresswatch_test_old_abi");
    let (ok, err) = validate_with("loading-old-abi", lib.to_str().unwrap(), "{}", &[]);
    assert!(!ok);
    assert!(
        err.contains("was built against plugin ABI 0.1.0, but this egresswatch speaks ABI 0.2.0: rebuild the plugin against egresswatch-plugin-api 0.2.0"),
        "{err}"
    );
}

#[test]
fn plugin_with_the_same_version_but_another_layout() {
    let lib = library("egresswatch_test_mismatch");
    let (ok, err) = validate_with("loading-mismatch", lib.to_str().unwrap(), "{}", &[]);
    assert!(!ok);
    assert!(
        err.contains("has an ABI layout that differs from this egresswatch's: rebuild both from the same source"),
        "{err}"
    );
    assert!(!err.contains("built against plugin ABI"), "{err}");
}

#[test]
fn an_older_plugin_with_fewer_prefix_fields_loads_and_the_host_degrades_gracefully() {
    let lib = library("egresswatch_test_older");
    let plugin = lib.to_str().unwrap();
    let dir = temp_dir("loading-older");
    let config = write(&dir, "config.yaml", "detector: {}\n");
    let config = config.to_str().unwrap();
    // validate: loads, constructs, and says what the plugin cannot give.
    let out = run(&["validate", "--config", config, "--plugin", plugin], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(": OK (plugin older-test-plugin"),
        "{stdout}"
    );
    // run: every event passes, the exit log says the metrics are missing, nothing else fails.
    let events = b"{\"a\":1}\n{\"b\":2}\n";
    let out = run(&["run", "--config", config, "--plugin", plugin], events);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, events);
    // The state is saved though the plugin cannot stream it: whole, in the same file format.
    let state = dir.join("state.bin");
    let with_state = write(
        &dir,
        "state.yaml",
        format!("detector: {{}}\nstate: {{ path: '{}' }}\n", state.display()),
    );
    let with_state = with_state.to_str().unwrap();
    let out = run(&["run", "--config", with_state, "--plugin", plugin], events);
    assert!(out.status.success(), "{}", stderr(&out));
    let file = std::fs::read(&state).expect("the state file is written");
    assert_eq!(
        egresswatch_plugin_api::state_file::decode("older-test-plugin", &file).unwrap(),
        b"older-test-plugin state"
    );
    // rules check: a clear refusal naming what is missing.
    let out = run(&["rules", "check", "--plugin", plugin, "rules"], b"");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("plugin older-test-plugin 0.1.0 cannot check rules: it was built against an older plugin ABI without it"),
        "{err}"
    );
}

#[test]
fn a_plugin_built_before_the_streamed_save_keeps_everything_else_and_its_state_is_saved_whole() {
    let lib = library("egresswatch_test_unstreamed");
    let plugin = lib.to_str().unwrap();
    let dir = temp_dir("loading-unstreamed");
    let state = dir.join("state.bin");
    let config = write(
        &dir,
        "config.yaml",
        format!("detector: {{}}\nstate: {{ path: '{}' }}\n", state.display()),
    );
    let config = config.to_str().unwrap();
    // Without its own layout the loader took it for a baseline plugin: no rule check, no
    // warnings, no metrics.
    let out = run(&["validate", "--config", config, "--plugin", plugin], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("it saves its state whole"), "{stdout}");
    assert!(!stdout.contains("cannot check rules"), "{stdout}");
    let out = run(&["rules", "check", "--plugin", plugin, "rules"], b"");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(
        text.contains("unstreamed-test-plugin checked the rules"),
        "{text}"
    );
    let events = b"{\"a\":1}\n";
    let out = run(&["run", "--config", config, "--plugin", plugin], events);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, events);
    let err = stderr(&out);
    assert!(err.contains("unstreamed-test-plugin says hello"), "{err}");
    assert!(!err.contains("metrics are unavailable"), "{err}");
    let file = std::fs::read(&state).expect("the state file is written");
    assert_eq!(
        egresswatch_plugin_api::state_file::decode("unstreamed-test-plugin", &file).unwrap(),
        b"unstreamed-test-plugin state"
    );
}

#[test]
fn a_panic_while_checking_rules_is_reported_not_an_abort() {
    let lib = library("egresswatch_test_faulty");
    let out = run(
        &["rules", "check", "--plugin", lib.to_str().unwrap(), "rules"],
        b"",
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("plugin panicked: while checking rules in the faulty test plugin: deliberate panic while checking rules"),
        "{err}"
    );
}

#[test]
fn constructor_returns_an_error() {
    let lib = library("egresswatch_test_faulty");
    let (ok, err) = validate_with(
        "loading-ctor-error",
        lib.to_str().unwrap(),
        "{fail: error}",
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("plugin faulty-test-plugin 0.1.0 could not start: configuration error: deliberate failure"),
        "{err}"
    );
}

#[test]
fn constructor_panics() {
    let lib = library("egresswatch_test_faulty");
    let (ok, err) = validate_with(
        "loading-ctor-panic",
        lib.to_str().unwrap(),
        "{fail: panic}",
        &[],
    );
    assert!(!ok);
    assert!(
        err.contains("could not start: plugin panicked: while constructing the faulty test plugin: deliberate panic in the constructor"),
        "{err}"
    );
}

#[test]
fn root_module_panics() {
    let lib = library("egresswatch_test_faulty");
    let (ok, err) = validate_with(
        "loading-root-panic",
        lib.to_str().unwrap(),
        "{}",
        &[("EGRESSWATCH_TEST_ROOT_PANIC", "1")],
    );
    assert!(!ok);
    assert!(
        err.contains("panicked while initialising its root module"),
        "{err}"
    );
}

#[test]
fn the_real_plugin_is_found_beside_the_executable() {
    util::build_plugins();
    let output = run(&["version"], b"");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        out.contains("egresswatch 0.1.0 (plugin ABI 0.2.0)"),
        "{out}"
    );
    assert!(
        out.contains("plugin egresswatch-plugin 0.1.0 (ABI 0.2.0)"),
        "{out}"
    );
}

#[test]
fn a_bad_config_names_the_file_and_field() {
    let dir = temp_dir("loading-bad-config");
    let config = write(&dir, "bad.yaml", "batch:\n  max_events: 0\n  flush: 3\n");
    let output = run(&["validate", "--config", config.to_str().unwrap()], b"");
    let err = stderr(&output);
    assert!(!output.status.success());
    assert!(err.contains("bad.yaml"), "{err}");
    assert!(err.contains("unknown field `flush`"), "{err}");
    assert!(err.contains("line 3"), "{err}");
}

#[test]
fn detector_problems_are_all_reported_with_the_yaml_line_and_key_path() {
    let dir = temp_dir("loading-detector-problems");
    let rules = util::workspace().join("rules");
    let config = write(
        &dir,
        "bad.yaml",
        format!(
            "outputs:\n  default: {{type: stdout}}\ndetector:\n  rules: [{}]\n  geoip:\n    databse: x.mmdb\n  actions:\n    rules:\n      not-a-rule-id: {{annotate: true}}\n  models:\n    jobs:\n      rare_destination_cuntry: {{learning_buckets: 5}}\n      rare_destination_country: {{jobs: {{x: {{}}}}}}\n",
            rules.display()
        ),
    );
    let output = run(&["validate", "--config", config.to_str().unwrap()], b"");
    let err = stderr(&output);
    assert!(!output.status.success());
    let file = config.display().to_string();
    for expected in [
        format!("{file}:6: detector.geoip.databse: unknown key"),
        format!("{file}:9: detector.actions.rules.not-a-rule-id: no loaded rule has this rule_id"),
        format!("{file}:12: detector.models.jobs.rare_destination_cuntry: no job has this id"),
        format!("{file}:13: detector.models.jobs.rare_destination_country.jobs: per-job settings cannot hold"),
    ] {
        assert!(err.contains(&expected), "missing `{expected}` in\n{err}");
    }
}

#[test]
fn the_configuration_example_in_the_readme_is_valid() {
    let readme = std::fs::read_to_string(util::workspace().join("README.md")).unwrap();
    let start = readme
        .find("```yaml\nplugin:")
        .expect("README has the config example")
        + 8;
    let end = start + readme[start..].find("```").unwrap();
    // As printed, where the README says to save it (the repository root), under a name no one
    // else uses; only `--plugin` differs, pointing at the plugin of this build.
    let path = util::workspace().join(format!("readme-example-{}.yaml", std::process::id()));
    std::fs::write(&path, &readme[start..end]).unwrap();
    let plugin = util::library("egresswatch_plugin");
    let output = run(
        &[
            "validate",
            "--config",
            path.to_str().unwrap(),
            "--plugin",
            plugin.to_str().unwrap(),
        ],
        b"",
    );
    std::fs::remove_file(&path).unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains(": OK ("));
}
