//! Regression tests for the host's guards against hostile or broken files (issue #13, items
//! 5-7): state files, Unix socket paths, configuration and rule files. Each test fails on the
//! code before the guard and passes with it.

use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::util::{
    bin, build_plugins, run, run_command, stderr, temp_dir, wait_until, workspace, write, Running,
};

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

/// What a measured run of the program did.
struct Measured {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
    /// Peak resident memory of the process, in KiB (from `wait4`).
    max_rss_kib: i64,
    /// The test process's own peak (`VmHWM`) when it spawned the child. Linux carries the
    /// peak of the memory an exec replaces into the new program's `ru_maxrss`, and a spawn
    /// shares the test process's memory until the exec: so a child's figure is at least this,
    /// whatever the child itself used, and other tests running beside it move it.
    spawned_at_kib: i64,
}

/// How much more than the same command on ordinary input a guarded run may use at its peak:
/// far less than the hostile input it must not read whole (28 MB and more in these tests).
const RSS_MARGIN_KIB: i64 = 16 * 1024;

/// Asserts that `out` peaked within [`RSS_MARGIN_KIB`] of `baseline` (the same command on
/// ordinary input, measured in the same test, so the figure does not depend on the build).
fn assert_rss_near(baseline: &Measured, out: &Measured, what: &str) {
    let floor = baseline.max_rss_kib.max(out.spawned_at_kib);
    assert!(
        out.max_rss_kib < floor + RSS_MARGIN_KIB,
        "peak memory {} KiB for {what}, against {} KiB on ordinary input (the test process \
         peaked at {} KiB when it spawned it)",
        out.max_rss_kib,
        baseline.max_rss_kib,
        out.spawned_at_kib
    );
}

/// This process's peak resident memory so far (`VmHWM`), in KiB.
fn own_peak_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

/// Runs `egresswatch ARGS` with `stdin`, killing it (and failing) if it runs longer than
/// `EXIT`, and measures the peak memory of that process alone.
#[expect(
    clippy::zombie_processes,
    reason = "the child is reaped with wait4, which also returns its resource usage"
)]
fn run_measured(args: &[&str], stdin: &[u8]) -> Measured {
    build_plugins();
    let dir = tempfile_dir();
    let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
    let spawned_at_kib = own_peak_kib();
    let mut child = Command::new(bin())
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("egresswatch starts");
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let deadline = std::time::Instant::now() + EXIT;
    let mut raw_status = 0;
    // SAFETY: `rusage` is plain data that wait4 fills in; `pid` is our own unwaited child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        let waited = unsafe { libc::wait4(pid, &mut raw_status, libc::WNOHANG, &mut usage) };
        if waited == pid {
            break;
        }
        assert_eq!(waited, 0, "wait4 failed");
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "egresswatch {args:?} did not exit within {EXIT:?}:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    writer.join().unwrap();
    let mut stderr = String::new();
    let _ = std::fs::File::open(&err_path).and_then(|mut f| f.read_to_string(&mut stderr));
    Measured {
        status: ExitStatus::from_raw(raw_status),
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr,
        max_rss_kib: usage.ru_maxrss,
        spawned_at_kib,
    }
}

/// A fresh folder for one measured run's output files.
fn tempfile_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    temp_dir(&format!(
        "hardening-run-{}",
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A config file with a state file at `state` and the repository's rules.
fn state_config(dir: &Path, state: &Path, extra: &str) -> std::path::PathBuf {
    write(
        dir,
        "c.yaml",
        format!(
            "state: {{ path: '{}'{extra} }}\n{}",
            state.display(),
            detector()
        ),
    )
}

#[test]
fn a_fifo_at_the_state_path_is_refused_at_once_by_run_and_validate() {
    let dir = temp_dir("hardening-state-fifo");
    let state = dir.join("state.bin");
    mkfifo(&state);
    let config = state_config(&dir, &state, "");
    // Before the guard, `run` blocked for ever opening the FIFO (and ignored SIGTERM).
    let mut egw = Running::start(&dir, &config);
    let status = egw.wait(EXIT);
    let err = egw.stderr();
    assert!(!status.success(), "{err}");
    assert!(err.contains("state.path"), "{err}");
    assert!(err.contains("is a FIFO, not a regular file"), "{err}");
    let out = run(&["validate", "--config", config.to_str().unwrap()], b"");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("is a FIFO, not a regular file"), "{text}");
    assert!(std::fs::symlink_metadata(&state)
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn junk_state_files_are_set_aside_without_being_read() {
    let dir = temp_dir("hardening-state-junk");
    let state = dir.join("state.bin");
    let config = state_config(&dir, &state, "");
    let baseline = run_measured(
        &["run", "--config", config.to_str().unwrap()],
        b"{\"a\":1}\n",
    );
    assert!(baseline.status.success(), "{}", baseline.stderr);
    let _ = std::fs::remove_file(&state);
    // Sparse files, no disk blocks used: 2 GiB (over the default 1 GiB cap) and 512 MiB (under
    // it, but not a state file).
    for (size, reason) in [
        (2u64 << 30, "over state.max_bytes"),
        (512 << 20, "bad magic"),
    ] {
        let file = std::fs::File::create(&state).unwrap();
        file.set_len(size).unwrap();
        drop(file);
        let out = run_measured(
            &["run", "--config", config.to_str().unwrap()],
            b"{\"a\":1}\n",
        );
        assert!(out.status.success(), "{}", out.stderr);
        assert_eq!(out.stdout, b"{\"a\":1}\n");
        // Before the guard the whole file was read first: its size, resident.
        assert_rss_near(
            &baseline,
            &out,
            &format!("a junk state file of {size} bytes"),
        );
        assert!(out.stderr.contains(reason), "{}", out.stderr);
        assert!(out.stderr.contains("renamed aside"), "{}", out.stderr);
        std::fs::remove_file(&state).unwrap();
    }

    // Over the configured cap: refused by size, whatever it holds.
    let big = egresswatch::state::encode("egresswatch-plugin", &vec![0u8; 8192]);
    std::fs::write(&state, big).unwrap();
    let config = state_config(&dir, &state, ", max_bytes: 4096");
    let out = run(&["run", "--config", config.to_str().unwrap()], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("over state.max_bytes (4096)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unusable_state_files_set_aside_in_the_same_second_keep_every_copy() {
    let dir = temp_dir("hardening-state-aside");
    let state = dir.join("state.bin");
    let config = state_config(&dir, &state, "");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Earlier set-aside files under every name the next minute could produce.
    for secs in now..now + 60 {
        write(
            &dir,
            &format!("state.bin.corrupt-{secs}"),
            b"an earlier copy",
        );
    }
    for round in 0..2 {
        std::fs::write(&state, format!("junk {round}")).unwrap();
        let out = run(&["run", "--config", config.to_str().unwrap()], b"");
        assert!(out.status.success(), "{}", stderr(&out));
        // The run saved a fresh state; make it unusable again for the next round.
        assert!(state.is_file());
    }
    let mut earlier = 0;
    let mut junk = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.to_string_lossy().contains("state.bin.corrupt-") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        if text == "an earlier copy" {
            earlier += 1;
        } else {
            junk.push(text);
        }
    }
    junk.sort();
    assert_eq!(earlier, 60, "an earlier set-aside file was overwritten");
    assert_eq!(junk, ["junk 0", "junk 1"]);
}

#[test]
fn validate_asks_the_plugin_whether_it_accepts_the_state() {
    let dir = temp_dir("hardening-state-validate");
    let state = dir.join("state.bin");
    // A valid envelope and checksum around bytes the plugin cannot decode.
    std::fs::write(
        &state,
        egresswatch::state::encode("egresswatch-plugin", b"\xff\xff\xff\xff not a model"),
    )
    .unwrap();
    let config = state_config(&dir, &state, "");
    let out = run(&["validate", "--config", config.to_str().unwrap()], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("unusable (the plugin refused it"), "{text}");
    assert!(!text.contains("state.bin: OK"), "{text}");
    assert!(state.is_file(), "validate changes nothing");

    // A state the plugin saved itself is accepted.
    std::fs::remove_file(&state).unwrap();
    let out = run(&["run", "--config", config.to_str().unwrap()], b"");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&["validate", "--config", config.to_str().unwrap()], b"");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(": OK (") && text.contains("accepted by the plugin"),
        "{text}"
    );
}

#[test]
fn sigterm_stops_a_start_up_that_is_blocked() {
    let dir = temp_dir("hardening-startup-signal");
    // A file output that is a FIFO with no reader: opening it blocks start-up.
    let fifo = dir.join("out.fifo");
    mkfifo(&fifo);
    let config = write(
        &dir,
        "c.yaml",
        format!(
            "outputs:\n  default: {{ type: file, path: '{}' }}\n{}",
            fifo.display(),
            detector()
        ),
    );
    let mut egw = Running::start(&dir, &config);
    assert!(
        wait_until(STARTUP, || egw.stderr().contains("plugin loaded")),
        "{}",
        egw.stderr()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        egw.child.try_wait().unwrap().is_none(),
        "start-up should block"
    );
    egw.terminate();
    // Before the fix the handler only set a flag nobody looked at yet: it never exited.
    let status = egw.wait(EXIT);
    assert_eq!(status.code(), Some(143), "{}", egw.stderr());
}

/// `egresswatch validate --config CONFIG`, bounded in time, with its peak memory.
fn validate(config: &Path) -> Measured {
    run_measured(&["validate", "--config", config.to_str().unwrap()], b"")
}

#[test]
fn configuration_files_are_bounded_in_depth_size_and_kind() {
    let dir = temp_dir("hardening-config-limits");
    // 100k levels of flow nesting: before the limit, still parsing after minutes.
    let deep = write(
        &dir,
        "deep.yaml",
        format!(
            "{}\ndetector: {}{}\n",
            detector(),
            "[".repeat(100_000),
            "]".repeat(100_000)
        ),
    );
    let out = validate(&deep);
    assert!(!out.status.success());
    assert!(
        out.stderr
            .contains("deep.yaml: line 4: nested deeper than 64 levels"),
        "{}",
        out.stderr
    );
    // A FIFO named like a config file: before, validate waited for a writer for ever.
    let fifo = dir.join("fifo.yaml");
    mkfifo(&fifo);
    let out = validate(&fifo);
    assert!(!out.status.success());
    assert!(
        out.stderr
            .contains("fifo.yaml: is a FIFO, not a regular file"),
        "{}",
        out.stderr
    );
    // Larger than 1 MiB.
    let big = write(
        &dir,
        "big.yaml",
        format!("{}# {}\n", detector(), "x".repeat(1 << 20)),
    );
    let out = validate(&big);
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("over the limit of 1048576 bytes"),
        "{}",
        out.stderr
    );
}

#[test]
fn rule_folders_are_bounded_in_size_and_kind() {
    let dir = temp_dir("hardening-rules-limits");
    let rules = dir.join("rules");
    std::fs::create_dir(&rules).unwrap();
    let rule = "rare_destination_country.toml";
    std::fs::copy(workspace().join("rules").join(rule), rules.join(rule)).unwrap();
    let config = write(
        &dir,
        "c.yaml",
        format!("detector:\n  rules: ['{}']\n", rules.display()),
    );
    let baseline = validate(&config);
    assert!(baseline.status.success(), "{}", baseline.stderr);

    // A FIFO named *.toml in the rules folder: before, validate blocked on it for ever.
    mkfifo(&rules.join("pipe.toml"));
    let out = validate(&config);
    assert!(!out.status.success());
    assert!(
        out.stderr
            .contains("pipe.toml: cannot read: is a FIFO, not a regular file"),
        "{}",
        out.stderr
    );
    std::fs::remove_file(rules.join("pipe.toml")).unwrap();

    // 28 MB of 2M keys: before, 946 MB to parse it.
    let mut keys = String::with_capacity(30 << 20);
    keys.push_str("[rule]\n");
    for i in 0..2_000_000 {
        keys.push_str(&format!("k{i:07} = 1\n"));
    }
    std::fs::write(rules.join("huge.toml"), keys).unwrap();
    let out = validate(&config);
    assert_rss_near(&baseline, &out, "a 28 MB rule file");
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("huge.toml: cannot read: is")
            && out.stderr.contains("over the limit of 262144 bytes"),
        "{}",
        out.stderr
    );
}

#[test]
fn the_geoip_cache_is_allocated_as_it_fills() {
    let dir = temp_dir("hardening-geo-cache");
    let database = workspace().join("data/geo/geo-whois-asn-country.mmdb");
    let baseline = validate(&write(
        &dir,
        "base.yaml",
        format!(
            "{}  geoip:\n    database: '{}'\n",
            detector(),
            database.display()
        ),
    ));
    assert!(baseline.status.success(), "{}", baseline.stderr);
    let config = write(
        &dir,
        "c.yaml",
        format!(
            "{}  geoip:\n    database: '{}'\n    cache_entries: 16777216\n",
            detector(),
            database.display()
        ),
    );
    let out = validate(&config);
    assert!(out.status.success(), "{}", out.stderr);
    // Before, 16M entries of 40 bytes were allocated and written at start: 670 MB.
    assert_rss_near(&baseline, &out, "cache_entries at its maximum");
}

/// Runs `egresswatch` as [`run`] does, but unable to write any file past `max_bytes`: writes
/// past it fail with EFBIG, as on a full disk (RLIMIT_FSIZE, with SIGXFSZ ignored).
fn run_file_size_limited(args: &[&str], stdin: &[u8], max_bytes: u64) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(bin());
    command.args(args);
    // SAFETY: between fork and exec only async-signal-safe calls (signal, setrlimit).
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: max_bytes,
                rlim_max: max_bytes,
            };
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    run_command(command, stdin)
}

/// `n` outbound uploads, each to its own public address, one every second from `start`.
fn uploads(start: u32, n: u32) -> Vec<u8> {
    let mut lines = String::new();
    for i in 0..n {
        let t = start + i;
        lines.push_str(&format!(
            "{{\"@timestamp\":\"2026-11-02T{:02}:{:02}:{:02}Z\",\"event\":{{\"kind\":\"event\",\"category\":[\"network\"],\"type\":[\"connection\",\"end\"]}},\"source\":{{\"ip\":\"10.0.0.5\",\"port\":54310,\"bytes\":{}}},\"destination\":{{\"ip\":\"{}.{}.{}.7\",\"port\":443}},\"network\":{{\"transport\":\"tcp\",\"direction\":\"outbound\"}}}}\n",
            t / 3600,
            t / 60 % 60,
            t % 60,
            1000 + i,
            20 + i / 65_536,
            i / 256 % 256,
            i % 256,
        ));
    }
    lines.into_bytes()
}

#[test]
fn a_state_save_that_fails_midway_keeps_the_previous_file_and_says_why() {
    let dir = temp_dir("hardening-state-full");
    let state = dir.join("state.bin");
    let config = state_config(&dir, &state, "");
    let config = config.to_str().unwrap();
    let first = run(&["run", "--config", config], &uploads(0, 10_000));
    assert!(first.status.success(), "{}", stderr(&first));
    let previous = std::fs::read(&state).unwrap();
    // Bigger than the 64 KiB buffers of the save: the next save fails while the plugin streams.
    assert!(previous.len() > 2 << 16, "{} bytes", previous.len());
    // The next run may write no file past 100 kB (RLIMIT_FSIZE, SIGXFSZ ignored): its save
    // fails as on a full disk, midway through the stream.
    let events = uploads(10_000, 2_000);
    let second = run_file_size_limited(&["run", "--config", config], &events, 100_000);
    let err = stderr(&second);
    assert!(err.contains("saving the model state failed"), "{err}");
    assert!(
        err.contains(&format!("writing {}: File too large", state.display())),
        "{err}"
    );
    assert_eq!(second.stdout, events, "every event passed");
    assert_eq!(
        std::fs::read(&state).unwrap(),
        previous,
        "the old state is kept"
    );
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains(".tmp")),
        "the failed save is cleaned up: {names:?}"
    );
    // And the next save, with the disk writable again, replaces it.
    let third = run(&["run", "--config", config], &uploads(12_000, 10));
    assert!(third.status.success(), "{}", stderr(&third));
    assert_ne!(std::fs::read(&state).unwrap(), previous);
}
