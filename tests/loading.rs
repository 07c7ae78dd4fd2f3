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
fn plugin_built_against_incompatible_abi() {
    let lib = library("egresswatch_test_old_abi");
    let (ok, err) = validate_with("loading-old-abi", lib.to_str().unwrap(), "{}", &[]);
    assert!(!ok);
    assert!(
        err.contains("was built against plugin ABI 9.0.0, but this egresswatch speaks ABI 0.1.0"),
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
        out.contains("egresswatch 0.1.0 (plugin ABI 0.1.0)"),
        "{out}"
    );
    assert!(
        out.contains("plugin egresswatch-plugin 0.1.0 (ABI 0.1.0)"),
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
fn the_configuration_example_in_the_readme_is_valid() {
    let readme = std::fs::read_to_string(util::workspace().join("README.md")).unwrap();
    let start = readme
        .find("```yaml\nplugin:")
        .expect("README has the config example")
        + 8;
    let end = start + readme[start..].find("```").unwrap();
    let root = util::workspace().display().to_string();
    let config: String = readme[start..end]
        .lines()
        .filter(|l| !l.starts_with("plugin:"))
        .map(|l| {
            l.replace("[rules/]", &format!("[{root}/rules/]"))
                .replace("database: data/", &format!("database: {root}/data/"))
                + "\n"
        })
        .collect();
    let dir = temp_dir("loading-readme-config");
    let path = write(&dir, "config.yaml", config);
    let output = run(&["validate", "--config", path.to_str().unwrap()], b"");
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains(": OK ("));
}
