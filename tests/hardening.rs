//! Regression tests for the host's guards against hostile or broken files (issue #13, items
//! 5-7): state files, Unix socket paths, configuration and rule files. Each test fails on the
//! code before the guard and passes with it.

use std::path::Path;
use std::time::Duration;

use crate::util::{temp_dir, wait_until, workspace, write, Running};

const STARTUP: Duration = Duration::from_secs(30);
const EXIT: Duration = Duration::from_secs(20);

/// A detector section with the repository's rules.
fn detector() -> String {
    format!(
        "detector:\n  rules: ['{}']\n",
        workspace().join("rules").display()
    )
}

/// Makes some kind of file at a path.
type MakeFile = dyn Fn(&Path);

/// Makes a FIFO at `path` with the system's `mkfifo`.
fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success(), "mkfifo {}", path.display());
}

#[test]
fn a_unix_input_path_holding_another_kind_of_file_is_refused_and_left_alone() {
    let dir = temp_dir("hardening-unix-not-socket");
    let config = write(
        &dir,
        "c.yaml",
        format!("input: {{ type: unix, path: in.sock }}\n{}", detector()),
    );
    let path = dir.join("in.sock");
    let kinds: [(&str, &MakeFile); 4] = [
        ("a regular file", &|p| {
            std::fs::write(p, b"precious data\n").unwrap()
        }),
        ("a folder", &|p| std::fs::create_dir(p).unwrap()),
        ("a FIFO", &|p| mkfifo(p)),
        ("a symbolic link", &|p| {
            std::os::unix::fs::symlink(p.with_file_name("c.yaml"), p).unwrap()
        }),
    ];
    for (kind, make) in kinds {
        make(&path);
        // Bounded: before the guard, the listener replaced the file and ran until a signal.
        let mut egw = Running::start(&dir, &config);
        let status = egw.wait(EXIT);
        let err = egw.stderr();
        assert!(!status.success(), "{kind}: {err}");
        assert!(err.contains("input.path"), "{kind}: {err}");
        assert!(
            err.contains(&format!("is {kind}, not a socket")),
            "{kind}: {err}"
        );
        let meta = std::fs::symlink_metadata(&path);
        assert!(meta.is_ok(), "{kind} was removed");
        if kind == "a regular file" {
            assert_eq!(std::fs::read(&path).unwrap(), b"precious data\n");
        }
        if kind == "a folder" {
            std::fs::remove_dir(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
    assert!(
        dir.join("c.yaml").is_file(),
        "the symlink's target is intact"
    );
}

#[test]
fn a_stale_socket_is_replaced_but_a_file_put_in_its_place_is_not_removed_at_stop() {
    let dir = temp_dir("hardening-unix-stop");
    let path = dir.join("in.sock");
    // A socket file nobody listens on, as a crash leaves it.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let config = write(
        &dir,
        "c.yaml",
        format!("input: {{ type: unix, path: in.sock }}\n{}", detector()),
    );
    let mut egw = Running::start(&dir, &config);
    assert!(
        wait_until(STARTUP, || std::os::unix::net::UnixStream::connect(&path)
            .is_ok()),
        "{}",
        egw.stderr()
    );
    // Someone puts a regular file at the socket's path while egresswatch runs.
    let other = write(&dir, "other", b"not ours\n");
    std::fs::rename(&other, &path).unwrap();
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    assert_eq!(
        std::fs::read(&path).expect("the file is still there"),
        b"not ours\n"
    );
}
