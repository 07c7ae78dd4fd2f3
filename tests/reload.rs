//! Reloading job by job (issue #11): a SIGHUP whose new configuration changes one job's
//! definition restarts that job and leaves the other judging exactly as without the reload; a
//! start with a state file saved before the same change does the same. A reload that changes an
//! output or the input is refused and the running ones go on. Loopback only, every wait
//! bounded.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::util::{
    connect_when_ready, count_lines, figure, free_address, http_get, run, stderr, temp_dir,
    wait_until, wait_until_read, workspace, write, Running,
};

const EXIT: Duration = Duration::from_secs(60);
const COUNTRY_RULE: &str = "35f86980-1fb1-4dff-b311-3be941549c8d";
const EXFIL_RULE: &str = "cc653d77-ddd2-45b1-9197-c75ad19df66c";

/// What the plugin logs when the country job's bucket span goes from 15 to 30 minutes.
const COUNTRY_RESTARTS: &str = "job rare_destination_country starts learning afresh: its \
     definition changed (bucket_span 15m -> 30m); the other jobs keep what they learnt";

/// The shipped rules, with their built-in jobs.
fn detector_as_shipped() -> String {
    format!(
        "detector: {{ rules: ['{}'] }}\n",
        workspace().join("rules").display()
    )
}

/// The shipped rules with the country job redefined: its built-in definition, but 30-minute
/// buckets instead of 15. The bytes job is untouched.
fn detector_country_job_changed() -> String {
    format!(
        "detector:\n  rules: ['{}']\n  jobs:\n    - {{ id: rare_destination_country, function: \
         rare, by_field_name: destination.geo.country_name, bucket_span: 30m, filters: \
         [{{category_contains: network}}, {{field_exists: destination.geo.country_name}}, \
         not_shipping_agent] }}\n",
        workspace().join("rules").display()
    )
}

/// The sample's lines, and where the third day (2026-11-03) begins. By then the bytes job has
/// learnt 16 of the 20 3h buckets it needs and flags its first upload that evening; the
/// country job flags a new country that morning.
fn sample() -> (Vec<Vec<u8>>, usize) {
    let data = std::fs::read(workspace().join("examples/data/sample.ndjson")).expect("sample");
    let lines: Vec<Vec<u8>> = data
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    let split = lines
        .iter()
        .position(|l| l.starts_with(b"{\"@timestamp\":\"2026-11-03"))
        .expect("the sample covers 2026-11-03");
    (lines, split)
}

/// The lines of `path`, each with its newline.
fn lines_of(path: &Path) -> Vec<Vec<u8>> {
    std::fs::read(path)
        .unwrap_or_default()
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

/// The rule that flagged an output line, if any.
fn rule_of(line: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    value["rule"]["id"].as_str().map(str::to_owned)
}

/// What one uninterrupted run with the shipped rules makes of the sample.
fn reference(dir: &Path) -> Vec<Vec<u8>> {
    let config = write(
        dir,
        "reference.yaml",
        format!(
            "outputs: {{ default: {{ type: file, path: reference.ndjson }} }}\n{}",
            detector_as_shipped()
        ),
    );
    let (lines, _) = sample();
    let out = run(
        &["run", "--config", config.to_str().unwrap()],
        &lines.concat(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    lines_of(&dir.join("reference.ndjson"))
}

/// Checks a run whose country job was redefined at `split` (by a reload or a restart) against
/// the uninterrupted `reference`: the same lines before; after, the bytes rule flags the same
/// events with the same alerts (its job kept what it learnt: started afresh it would learn for
/// 60 h, past the end of the sample), and the country job, learning again, does not flag the
/// first new country the reference flags after `split`.
fn check_country_job_restarted_bytes_job_kept(
    reference: &[Vec<u8>],
    got: &[Vec<u8>],
    split: usize,
) {
    let (input, _) = sample();
    assert_eq!(got.len(), reference.len(), "lines lost or added");
    assert!(
        got[..split] == reference[..split],
        "the lines before the change differ from the uninterrupted run"
    );
    let mut exfil = 0;
    for i in split..got.len() {
        let (want, have) = (rule_of(&reference[i]), rule_of(&got[i]));
        let bytes_rule = |rule: &Option<String>| rule.as_deref() == Some(EXFIL_RULE);
        assert_eq!(
            bytes_rule(&want),
            bytes_rule(&have),
            "line {i}: the bytes rule judged it differently\nreference: {}\ngot: {}",
            String::from_utf8_lossy(&reference[i]),
            String::from_utf8_lossy(&got[i])
        );
        if bytes_rule(&want) {
            assert!(got[i] == reference[i], "line {i}: another alert");
            exfil += 1;
        }
    }
    assert!(
        exfil > 0,
        "the reference flags no upload after the change: nothing shows the bytes job kept its state"
    );
    let first_country = (split..reference.len())
        .find(|&i| rule_of(&reference[i]).as_deref() == Some(COUNTRY_RULE))
        .expect("the reference flags a new country after the change");
    assert!(
        got[first_country] == input[first_country],
        "line {first_country}: the country job, redefined, flagged it as if it had not restarted"
    );
}

#[test]
fn sighup_changing_one_jobs_definition_restarts_that_job_and_the_other_keeps_its_state() {
    let dir = temp_dir("reload-per-job");
    let reference = reference(&dir);
    let input = free_address();
    let metrics = free_address();
    let settings = format!(
        "input: {{ type: tcp, address: '{input}' }}\nmetrics: {{ address: '{metrics}' }}\n\
         outputs: {{ default: {{ type: file, path: out.ndjson }} }}\n"
    );
    let config = write(
        &dir,
        "c.yaml",
        format!("{settings}{}", detector_as_shipped()),
    );
    let mut egw = Running::start(&dir, &config);
    let mut conn = connect_when_ready(&input);
    let (lines, split) = sample();
    conn.write_all(&lines[..split].concat()).unwrap();
    assert!(
        wait_until(EXIT, || figure(
            &http_get(&metrics, "/metrics"),
            "egresswatch_events_in_total"
        )
        .unwrap_or(0.0)
            >= split as f64),
        "the engine did not read the first {split} lines"
    );
    write(
        &dir,
        "c.yaml",
        format!("{settings}{}", detector_country_job_changed()),
    );
    reload(&egw, "configuration reloaded");
    assert!(egw.stderr().contains(COUNTRY_RESTARTS), "{}", egw.stderr());
    assert!(
        !egw.stderr()
            .contains("ded_high_sent_bytes_destination_ip_ea starts"),
        "{}",
        egw.stderr()
    );
    conn.write_all(&lines[split..].concat()).unwrap();
    drop(conn);
    let output = dir.join("out.ndjson");
    assert!(
        wait_until(EXIT, || count_lines(&output) == lines.len()),
        "{} of {} lines arrived\n{}",
        count_lines(&output),
        lines.len(),
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    check_country_job_restarted_bytes_job_kept(&reference, &lines_of(&output), split);
}

#[test]
fn a_state_file_from_before_a_job_changed_restarts_that_job_and_keeps_the_other() {
    let dir = temp_dir("reload-state-at-start");
    let reference = reference(&dir);
    let (lines, split) = sample();
    let settings = |out: &str| {
        format!(
            "state: {{ path: state.bin }}\noutputs: {{ default: {{ type: file, path: {out} }} \
             }}\n"
        )
    };
    let before = write(
        &dir,
        "before.yaml",
        format!("{}{}", settings("first.ndjson"), detector_as_shipped()),
    );
    let first = run(
        &["run", "--config", before.to_str().unwrap()],
        &lines[..split].concat(),
    );
    assert!(first.status.success(), "{}", stderr(&first));
    let after = write(
        &dir,
        "after.yaml",
        format!(
            "{}{}",
            settings("second.ndjson"),
            detector_country_job_changed()
        ),
    );
    // `validate` says what the start will do, and changes nothing.
    let checked = run(&["validate", "--config", after.to_str().unwrap()], b"");
    let said = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{}", stderr(&checked));
    assert!(said.contains("accepted by the plugin"), "{said}");
    assert!(said.contains(COUNTRY_RESTARTS), "{said}");
    let second = run(
        &["run", "--config", after.to_str().unwrap()],
        &lines[split..].concat(),
    );
    let log = stderr(&second);
    assert!(second.status.success(), "{log}");
    assert!(log.contains(COUNTRY_RESTARTS), "{log}");
    assert!(log.contains("model state loaded"), "{log}");
    let set_aside: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("corrupt"))
        .collect();
    assert!(set_aside.is_empty(), "the state file was set aside: {log}");
    let got = [
        lines_of(&dir.join("first.ndjson")),
        lines_of(&dir.join("second.ndjson")),
    ]
    .concat();
    check_country_job_restarted_bytes_job_kept(&reference, &got, split);
}

#[test]
fn sighup_moving_the_input_binds_the_new_address_and_keeps_reading_the_old_connections() {
    let dir = temp_dir("reload-input-moved");
    let (old_address, new_address) = (free_address(), free_address());
    let settings = |input: &str| {
        format!(
            "input: {{ type: tcp, address: '{input}' }}\noutputs: {{ default: {{ type: file, \
             path: out.ndjson }} }}\n{}",
            detector_as_shipped()
        )
    };
    let config = write(&dir, "c.yaml", settings(&old_address));
    let mut egw = Running::start(&dir, &config);
    let mut conn = connect_when_ready(&old_address);
    let output = dir.join("out.ndjson");
    conn.write_all(&numbered(0, 100)).unwrap();
    assert!(wait_until(EXIT, || count_lines(&output) == 100));
    write(&dir, "c.yaml", settings(&new_address));
    reload(&egw, "configuration reloaded");
    assert!(
        egw.stderr().contains("input replaced by the reload"),
        "{}",
        egw.stderr()
    );
    // The open connection is still read, even after a quiet spell longer than a stop's 2 s
    // drain would allow: a reload cuts no sender off.
    std::thread::sleep(Duration::from_secs(3));
    conn.write_all(&numbered(100, 200)).unwrap();
    let mut new_conn = connect_when_ready(&new_address);
    new_conn.write_all(&numbered(200, 300)).unwrap();
    drop(new_conn);
    assert!(
        wait_until(EXIT, || count_lines(&output) == 300),
        "{} of 300 lines arrived\n{}",
        count_lines(&output),
        egw.stderr()
    );
    // The old address no longer listens.
    assert!(
        wait_until(EXIT, || std::net::TcpStream::connect(&old_address).is_err()),
        "the old listener still accepts"
    );
    drop(conn);
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    let mut got: Vec<u64> = lines_of(&output)
        .iter()
        .map(|l| {
            serde_json::from_slice::<serde_json::Value>(l).unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    got.sort_unstable();
    assert!(got.into_iter().eq(0..300), "lines lost or repeated");
}

#[test]
fn sighup_moving_the_input_to_an_address_in_use_is_refused_and_the_old_one_goes_on() {
    let dir = temp_dir("reload-input-taken");
    let input = free_address();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_address = taken.local_addr().unwrap().to_string();
    let settings = |input: &str, out: &str| {
        format!(
            "input: {{ type: tcp, address: '{input}' }}\noutputs: {{ default: {{ type: file, \
             path: {out} }} }}\n{}",
            detector_as_shipped()
        )
    };
    let config = write(&dir, "c.yaml", settings(&input, "out.ndjson"));
    let mut egw = Running::start(&dir, &config);
    let mut conn = connect_when_ready(&input);
    let output = dir.join("out.ndjson");
    conn.write_all(&numbered(0, 100)).unwrap();
    assert!(wait_until(EXIT, || count_lines(&output) == 100));
    // Another output too: the reload is refused whole, that one is not started either.
    write(&dir, "c.yaml", settings(&taken_address, "elsewhere.ndjson"));
    let log = reload(&egw, "the new configuration is refused");
    assert!(
        log.contains("the changed input could not be set up: input.address: cannot listen on"),
        "{log}"
    );
    // The running input and output go on, for the open connection and new ones.
    conn.write_all(&numbered(100, 200)).unwrap();
    drop(conn);
    let mut again = connect_when_ready(&input);
    again.write_all(&numbered(200, 300)).unwrap();
    drop(again);
    assert!(
        wait_until(EXIT, || count_lines(&output) == 300),
        "{} of 300 lines arrived\n{}",
        count_lines(&output),
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    assert!(!dir.join("elsewhere.ndjson").exists());
}

#[test]
fn sighup_reopens_a_file_output_that_log_rotation_renamed() {
    let dir = temp_dir("reload-rotate");
    let input = free_address();
    let config = write(
        &dir,
        "c.yaml",
        format!(
            "input: {{ type: tcp, address: '{input}' }}\noutputs: {{ default: {{ type: file, \
             path: out.ndjson }} }}\n{}",
            detector_as_shipped()
        ),
    );
    let mut egw = Running::start(&dir, &config);
    let mut conn = connect_when_ready(&input);
    let (lines, _) = sample();
    let output = dir.join("out.ndjson");
    let rotated = dir.join("out.ndjson.1");
    conn.write_all(&lines[..100].concat()).unwrap();
    assert!(wait_until(EXIT, || count_lines(&output) == 100));
    // What logrotate does in its default `create` mode: rename, then SIGHUP from postrotate.
    std::fs::rename(&output, &rotated).unwrap();
    reload(&egw, "configuration reloaded");
    conn.write_all(&lines[100..250].concat()).unwrap();
    drop(conn);
    assert!(
        wait_until(EXIT, || count_lines(&output) == 150),
        "{} of 150 lines in the new file, {} in the renamed one\n{}",
        count_lines(&output),
        count_lines(&rotated),
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    assert!(
        egw.stderr().contains("reopened (SIGHUP)"),
        "{}",
        egw.stderr()
    );
    // Nothing lost, nothing twice: the renamed file keeps the first 100 lines, the new one the
    // next 150, each in order (lines pass through unchanged when not flagged).
    let (old, new) = (lines_of(&rotated), lines_of(&output));
    assert_eq!(old.len(), 100);
    for (got, sent) in old.iter().chain(new.iter()).zip(&lines[..250]) {
        if rule_of(got).is_none() {
            assert_eq!(got.trim_ascii_end(), sent.trim_ascii_end());
        }
    }
}

/// Sends SIGHUP and waits until the log says `said` (`configuration reloaded`, `the new
/// configuration is refused`) once more than before; returns the log.
fn reload(egw: &Running, said: &str) -> String {
    let before = egw.stderr().matches(said).count();
    egw.signal("HUP");
    assert!(
        wait_until(EXIT, || egw.stderr().matches(said).count() > before),
        "{}",
        egw.stderr()
    );
    egw.stderr()
}

/// Lines `{"n":N}` for N in `from..to`.
fn numbered(from: u64, to: u64) -> Vec<u8> {
    (from..to)
        .flat_map(|n| format!("{{\"n\":{n}}}\n").into_bytes())
        .collect()
}

/// The numbers received by a plain TCP downstream, per connection, in order.
type Received = std::sync::Arc<std::sync::Mutex<Vec<Vec<u64>>>>;

/// A TCP downstream on a loopback port (returned): reads every connection to its end and keeps
/// the `n` of each line it receives, per connection.
fn downstream() -> (String, Received) {
    downstream_of(|line| {
        let v: serde_json::Value = serde_json::from_slice(line).unwrap();
        v["n"].as_u64().unwrap()
    })
}

/// [`downstream`], reading each line's number with `number`.
fn downstream_of(number: fn(&[u8]) -> u64) -> (String, Received) {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let received = Received::default();
    let shared = std::sync::Arc::clone(&received);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let received = std::sync::Arc::clone(&shared);
            let index = {
                let mut all = received.lock().unwrap();
                all.push(Vec::new());
                all.len() - 1
            };
            std::thread::spawn(move || {
                let (mut partial, mut chunk) = (Vec::new(), [0u8; 8192]);
                while let Ok(n @ 1..) = conn.read(&mut chunk) {
                    partial.extend_from_slice(&chunk[..n]);
                    while let Some(nl) = partial.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = partial.drain(..=nl).collect();
                        received.lock().unwrap()[index].push(number(&line));
                    }
                }
            });
        }
    });
    (address, received)
}

/// Every number a downstream received, connections in the order they were accepted.
fn all_of(received: &Received) -> Vec<u64> {
    received.lock().unwrap().concat()
}

#[test]
fn sighup_moving_an_output_to_another_peer_delivers_every_line_once_in_order() {
    let dir = temp_dir("reload-output-moved");
    let (first, at_first) = downstream();
    let (second, at_second) = downstream();
    let input = free_address();
    let settings = |peer: &str| {
        format!(
            "input: {{ type: tcp, address: '{input}' }}\noutputs: {{ default: {{ type: tcp, \
             address: '{peer}' }} }}\n{}",
            detector_as_shipped()
        )
    };
    let config = write(&dir, "c.yaml", settings(&first));
    let mut egw = Running::start(&dir, &config);
    let mut conn = connect_when_ready(&input);
    conn.write_all(&numbered(0, 1000)).unwrap();
    assert!(
        wait_until(EXIT, || all_of(&at_first).len() == 1000),
        "{}",
        egw.stderr()
    );
    write(&dir, "c.yaml", settings(&second));
    egw.signal("HUP");
    // Lines keep coming while the reload happens, in small writes.
    for from in (1000..3000).step_by(50) {
        conn.write_all(&numbered(from, from + 50)).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        wait_until(EXIT, || egw.stderr().contains("configuration reloaded")),
        "{}",
        egw.stderr()
    );
    // Written after the reload: they can only go to the new peer.
    conn.write_all(&numbered(3000, 4000)).unwrap();
    drop(conn);
    let arrived = || all_of(&at_first).len() + all_of(&at_second).len();
    assert!(
        wait_until(EXIT, || arrived() == 4000),
        "{} of 4000 lines arrived\n{}",
        arrived(),
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    let (old, new) = (all_of(&at_first), all_of(&at_second));
    assert!(
        old.len() >= 1000 && new.len() >= 1000,
        "{} then {}",
        old.len(),
        new.len()
    );
    // The old peer has a beginning and the new one the rest: none lost, none twice, in order.
    assert!(
        old.iter().chain(&new).copied().eq(0..4000),
        "lines lost, repeated or out of order across the switch"
    );
    assert!(
        egw.stderr().contains("output rebuilt by the reload"),
        "{}",
        egw.stderr()
    );
}

#[test]
fn sighup_with_an_output_that_cannot_be_built_is_refused_and_the_old_one_goes_on() {
    let dir = temp_dir("reload-output-bad");
    let input = free_address();
    let settings = |out: &str| {
        format!(
            "input: {{ type: tcp, address: '{input}' }}\noutputs: {{ default: {{ type: file, \
             path: {out} }} }}\n{}",
            detector_as_shipped()
        )
    };
    let config = write(&dir, "c.yaml", settings("out.ndjson"));
    let mut egw = Running::start(&dir, &config);
    let mut conn = connect_when_ready(&input);
    let output = dir.join("out.ndjson");
    conn.write_all(&numbered(0, 100)).unwrap();
    assert!(wait_until(EXIT, || count_lines(&output) == 100));
    // A folder that does not exist: the file cannot be opened.
    write(&dir, "c.yaml", settings("missing/out.ndjson"));
    let log = reload(&egw, "the new configuration is refused");
    assert!(
        log.contains("a changed output could not be built: output default: cannot open"),
        "{log}"
    );
    assert!(log.contains("missing/out.ndjson"), "{log}");
    conn.write_all(&numbered(100, 200)).unwrap();
    drop(conn);
    assert!(
        wait_until(EXIT, || count_lines(&output) == 200),
        "{} of 200 lines arrived\n{}",
        count_lines(&output),
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
}

#[test]
fn sighup_replacing_a_down_output_hands_what_it_held_to_the_new_one() {
    let dir = temp_dir("reload-output-down");
    // Nobody listens at the first address: the output holds its lines and retries.
    let down = free_address();
    let (up, received) = downstream();
    let (input, metrics) = (free_address(), free_address());
    let settings = |peer: &str| {
        format!(
            "input: {{ type: tcp, address: '{input}' }}\nmetrics: {{ address: '{metrics}' }}\n\
             outputs: {{ default: {{ type: tcp, address: '{peer}' }} }}\n{}",
            detector_as_shipped()
        )
    };
    let config = write(&dir, "c.yaml", settings(&down));
    let mut egw = Running::start(&dir, &config);
    let mut conn = connect_when_ready(&input);
    conn.write_all(&numbered(0, 1000)).unwrap();
    assert!(wait_until_read(&metrics, 1000), "{}", egw.stderr());
    write(&dir, "c.yaml", settings(&up));
    reload(&egw, "configuration reloaded");
    conn.write_all(&numbered(1000, 2000)).unwrap();
    drop(conn);
    assert!(
        wait_until(EXIT, || all_of(&received).len() == 2000),
        "{} of 2000 lines arrived\n{}",
        all_of(&received).len(),
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    assert!(
        all_of(&received).into_iter().eq(0..2000),
        "lines lost, repeated or out of order"
    );
    // The batch the old output was retrying went to the new one.
    assert!(
        egw.stderr().contains("its replacement delivers them first"),
        "{}",
        egw.stderr()
    );
}

#[test]
fn sighup_moving_the_metrics_endpoint_serves_it_at_the_new_address() {
    let dir = temp_dir("reload-metrics");
    let input = free_address();
    let (old, new) = (free_address(), free_address());
    let settings = |metrics: &str| {
        format!(
            "input: {{ type: tcp, address: '{input}' }}\nmetrics: {{ address: '{metrics}' }}\n\
             outputs: {{ default: {{ type: file, path: out.ndjson }} }}\n{}",
            detector_as_shipped()
        )
    };
    let config = write(&dir, "c.yaml", settings(&old));
    let mut egw = Running::start(&dir, &config);
    let mut conn = connect_when_ready(&input);
    conn.write_all(&numbered(0, 10)).unwrap();
    assert!(wait_until_read(&old, 10), "{}", egw.stderr());
    write(&dir, "c.yaml", settings(&new));
    reload(&egw, "configuration reloaded");
    // The same counters, at the new address; the old one is gone.
    conn.write_all(&numbered(10, 20)).unwrap();
    drop(conn);
    assert!(wait_until_read(&new, 20), "{}", egw.stderr());
    assert!(
        wait_until(EXIT, || http_get(&old, "/metrics").is_empty()),
        "the old endpoint still answers"
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
}

/// A peer that accepts and never reads, with a small receive buffer (inherited by the accepted
/// connection), so that an output to it blocks soon; and its address.
fn stuck_peer() -> (std::net::TcpListener, String) {
    let stuck = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = stuck.local_addr().unwrap().to_string();
    let size: libc::c_int = 4096;
    // SAFETY: SO_RCVBUF takes an int of this size; the socket is open until `stuck` drops.
    let set = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&stuck),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            std::ptr::from_ref(&size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
    (stuck, address)
}

/// The numbers of the whole lines a stuck peer's kernel took (read now, after the output
/// reset the connection).
fn taken_by(mut peer: std::net::TcpStream) -> Vec<u64> {
    use std::io::Read;
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut taken = Vec::new();
    let _ = peer.read_to_end(&mut taken);
    taken
        .split_inclusive(|&b| b == b'\n')
        .filter(|l| l.ends_with(b"\n"))
        .map(|l| {
            serde_json::from_slice::<serde_json::Value>(l).unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// Settings with a TCP input, a metrics endpoint, a far shutdown deadline (a hand-over never
/// waits for it) and `default` a TCP output to `peer` with `buffer` (YAML, may be empty).
fn stuck_settings(input: &str, metrics: &str, peer: &str, buffer: &str) -> String {
    format!(
        "input: {{ type: tcp, address: '{input}' }}\nmetrics: {{ address: '{metrics}' }}\n\
         shutdown_timeout_secs: 600\n\
         outputs: {{ default: {{ type: tcp, address: '{peer}'{buffer} }} }}\n{}",
        detector_as_shipped()
    )
}

#[test]
fn sighup_replacing_an_output_whose_peer_stopped_reading_hands_over_what_it_did_not_take() {
    let dir = temp_dir("reload-output-stuck");
    let (stuck, stuck_address) = stuck_peer();
    let (up, received) = downstream();
    let (input, metrics) = (free_address(), free_address());
    let total = 500_000;
    // The old output's deadline is far off: it hands over because its peer takes nothing.
    let config = write(
        &dir,
        "c.yaml",
        stuck_settings(&input, &metrics, &stuck_address, ""),
    );
    let mut egw = Running::start(&dir, &config);
    let (old_peer, _) = stuck.accept().unwrap();
    let mut conn = connect_when_ready(&input);
    let sender = std::thread::spawn(move || {
        conn.write_all(&numbered(0, total)).unwrap();
        conn
    });
    // Everything is read: what the stuck socket does not take waits in the output's buffer
    // (8 MiB, not full).
    assert!(wait_until_read(&metrics, total), "{}", egw.stderr());
    write(&dir, "c.yaml", stuck_settings(&input, &metrics, &up, ""));
    reload(&egw, "configuration reloaded");
    let conn = sender.join().unwrap();
    drop(conn);
    assert!(
        wait_until(EXIT, || all_of(&received).last() == Some(&(total - 1))),
        "{} lines at the new peer\n{}",
        all_of(&received).len(),
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    let old = taken_by(old_peer);
    let new = all_of(&received);
    let (lost, repeated) = crate::util::tally(&[old.clone(), new.clone()], total);
    println!(
        "old peer took {}, new peer got {}: {lost} lost, {repeated} repeated",
        old.len(),
        new.len()
    );
    assert_eq!(lost, 0, "{}", egw.stderr());
}

#[test]
fn sighup_moves_an_output_whose_full_block_buffer_stalls_the_feed() {
    let dir = temp_dir("reload-output-blocked");
    let (stuck, stuck_address) = stuck_peer();
    let (up, received) = downstream();
    let (input, metrics) = (free_address(), free_address());
    // A small buffer that blocks: once the stuck socket and the buffer are full, the engine
    // waits for room, and the feed stalls.
    let buffer = ", buffer: { max_bytes: 65536, when_full: block }";
    // (More than the output's socket buffer takes, up to 4 MiB.)
    let total = 1_000_000;
    let config = write(
        &dir,
        "c.yaml",
        stuck_settings(&input, &metrics, &stuck_address, buffer),
    );
    let mut egw = Running::start(&dir, &config);
    let (old_peer, _) = stuck.accept().unwrap();
    let mut conn = connect_when_ready(&input);
    let sender = std::thread::spawn(move || {
        conn.write_all(&numbered(0, total)).unwrap();
        conn
    });
    // The feed stalls: the engine waits on the full buffer, and has read nothing for a second.
    let blocked = "egresswatch_output_blocked{output=\"default\"} 1";
    let mut read = (None, std::time::Instant::now());
    let stalled = wait_until(EXIT, || {
        let text = http_get(&metrics, "/metrics");
        let now = figure(&text, "egresswatch_events_in_total");
        if now != read.0 {
            read = (now, std::time::Instant::now());
        }
        text.contains(blocked) && read.1.elapsed() >= Duration::from_secs(1)
    });
    assert!(stalled, "{}", egw.stderr());
    // The operator moves the output to a peer that reads.
    write(
        &dir,
        "c.yaml",
        stuck_settings(&input, &metrics, &up, buffer),
    );
    reload(&egw, "configuration reloaded");
    let conn = sender.join().unwrap();
    drop(conn);
    assert!(
        wait_until(EXIT, || all_of(&received).last() == Some(&(total - 1))),
        "{} lines at the new peer\n{}",
        all_of(&received).len(),
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    let (old, new) = (taken_by(old_peer), all_of(&received));
    assert!(
        old.iter().chain(&new).copied().eq(0..total),
        "lines lost, repeated or out of order: the old peer took {}, the new one got {}",
        old.len(),
        new.len()
    );
}

#[test]
fn sighup_removing_a_down_output_takes_it_out_of_health() {
    let dir = temp_dir("reload-output-removed");
    let (input, metrics, down) = (free_address(), free_address(), free_address());
    let settings = |pager: &str| {
        format!(
            "input: {{ type: tcp, address: '{input}' }}\nmetrics: {{ address: '{metrics}' }}\n\
             shutdown_timeout_secs: 1\noutputs:\n  default: {{ type: file, path: out.ndjson \
             }}\n{pager}{}",
            detector_as_shipped()
        )
    };
    let config = write(
        &dir,
        "c.yaml",
        settings(&format!("  pager: {{ type: tcp, address: '{down}' }}\n")),
    );
    let mut egw = Running::start(&dir, &config);
    // The pager's peer is down: /health says so.
    assert!(
        wait_until(EXIT, || http_get(&metrics, "/health")
            .starts_with("HTTP/1.1 503")),
        "{}",
        http_get(&metrics, "/health")
    );
    write(&dir, "c.yaml", settings(""));
    reload(&egw, "configuration reloaded");
    assert!(
        wait_until(EXIT, || http_get(&metrics, "/health")
            .starts_with("HTTP/1.1 200")),
        "{}",
        http_get(&metrics, "/health")
    );
    assert!(!http_get(&metrics, "/metrics").contains("output=\"pager\""));
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
}

/// Makes a named pipe at `path`.
fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    let made = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(made, 0, "mkfifo: {}", std::io::Error::last_os_error());
}

#[test]
fn sighup_removing_then_re_adding_a_file_output_still_writing_keeps_its_lines_whole_and_in_order() {
    use std::io::Read;
    let dir = temp_dir("reload-output-readded");
    // The `errors` output writes into a pipe that is read only once everything is set up: its
    // writes block once the pipe is full, and its lines wait in its buffer meanwhile.
    let pipe = dir.join("errors.pipe");
    mkfifo(&pipe);
    let (release, released) = std::sync::mpsc::channel::<()>();
    let read = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = {
        let (pipe, read) = (pipe.clone(), std::sync::Arc::clone(&read));
        std::thread::spawn(move || {
            // (Opened as egresswatch opens its end; kept open, so that its writes never fail.)
            let mut end = std::fs::File::open(&pipe).unwrap();
            let _ = released.recv();
            // (In small reads: each wakes one blocked writer, in turn.)
            let mut chunk = [0u8; 1024];
            while let Ok(n @ 1..) = end.read(&mut chunk) {
                read.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        })
    };
    let (input, metrics) = (free_address(), free_address());
    let settings = |errors: bool| {
        let (unreadable, output) = if errors {
            ("errors", "\n  errors: { type: file, path: errors.pipe }")
        } else {
            ("pass", "")
        };
        format!(
            "input: {{ type: tcp, address: '{input}' }}\nmetrics: {{ address: '{metrics}' }}\n\
             shutdown_timeout_secs: 60\nunreadable: {unreadable}\noutputs:\n  default: {{ \
             type: file, path: out.ndjson }}{output}\n{}",
            detector_as_shipped()
        )
    };
    // Lines that are not JSON: `unreadable: errors` sends them to `errors`.
    let lines = |from: u64, to: u64| -> Vec<u8> {
        (from..to)
            .flat_map(|n| format!("u{n}\n").into_bytes())
            .collect()
    };
    let config = write(&dir, "c.yaml", settings(true));
    let mut egw = Running::start(&dir, &config);
    let mut conn = connect_when_ready(&input);
    // In many blocks: the output holds many batches, each a write of its own.
    for from in (0..100_000).step_by(1000) {
        conn.write_all(&lines(from, from + 1000)).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(wait_until_read(&metrics, 100_000), "{}", egw.stderr());
    // Removed while it still holds most of its lines ...
    write(&dir, "c.yaml", settings(false));
    reload(&egw, "configuration reloaded");
    conn.write_all(&lines(100_000, 101_000)).unwrap();
    let out = dir.join("out.ndjson");
    assert!(
        wait_until(EXIT, || count_lines(&out) == 1000),
        "{}",
        egw.stderr()
    );
    // ... and added again, at the same path, while the removed one still writes there.
    write(&dir, "c.yaml", settings(true));
    reload(&egw, "configuration reloaded");
    conn.write_all(&lines(101_000, 102_000)).unwrap();
    drop(conn);
    release.send(()).unwrap();
    let arrived = || read.lock().unwrap().iter().filter(|&&b| b == b'\n').count();
    assert!(
        wait_until(EXIT, || arrived() == 101_000),
        "{} of 101000 lines came through the pipe\n{}",
        arrived(),
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    reader.join().unwrap();
    // Whole lines, each once, in order: the old output's, then the new one's.
    let expected = [lines(0, 100_000), lines(101_000, 102_000)].concat();
    let read = read.lock().unwrap();
    assert!(
        *read == expected,
        "the two outputs' lines were mixed: {} bytes, first difference at byte {:?}",
        read.len(),
        read.iter().zip(&expected).position(|(a, b)| a != b)
    );
}

#[test]
fn sighup_adding_back_a_removed_output_that_is_still_failing_takes_over_what_it_holds() {
    let dir = temp_dir("reload-output-readded-down");
    // `errors` goes to a peer that is down; it is removed, then added back toward a live one.
    let down = free_address();
    let (up, received) = downstream_of(|line| {
        let text = std::str::from_utf8(line).unwrap();
        text.trim_end().trim_start_matches('u').parse().unwrap()
    });
    let (input, metrics) = (free_address(), free_address());
    let settings = |errors: Option<&str>| {
        let (unreadable, output) = match errors {
            Some(peer) => (
                "errors",
                format!("\n  errors: {{ type: tcp, address: '{peer}' }}"),
            ),
            None => ("pass", String::new()),
        };
        // (Its deadline far off: it hands over because it is replaced, not because time is up.)
        format!(
            "input: {{ type: tcp, address: '{input}' }}\nmetrics: {{ address: '{metrics}' }}\n\
             shutdown_timeout_secs: 600\nunreadable: {unreadable}\noutputs:\n  default: {{ \
             type: file, path: out.ndjson }}{output}\n{}",
            detector_as_shipped()
        )
    };
    // Lines that are not JSON: `unreadable: errors` sends them to `errors`.
    let lines = |from: u64, to: u64| -> Vec<u8> {
        (from..to)
            .flat_map(|n| format!("u{n}\n").into_bytes())
            .collect()
    };
    let config = write(&dir, "c.yaml", settings(Some(&down)));
    let mut egw = Running::start(&dir, &config);
    let mut conn = connect_when_ready(&input);
    conn.write_all(&lines(0, 1000)).unwrap();
    assert!(wait_until_read(&metrics, 1000), "{}", egw.stderr());
    write(&dir, "c.yaml", settings(None));
    reload(&egw, "configuration reloaded");
    conn.write_all(&lines(1000, 1100)).unwrap();
    let out = dir.join("out.ndjson");
    assert!(
        wait_until(EXIT, || count_lines(&out) == 100),
        "{}",
        egw.stderr()
    );
    write(&dir, "c.yaml", settings(Some(&up)));
    reload(&egw, "configuration reloaded");
    conn.write_all(&lines(1100, 2100)).unwrap();
    drop(conn);
    let expected: Vec<u64> = (0..1000).chain(1100..2100).collect();
    assert!(
        wait_until(EXIT, || all_of(&received).len() == expected.len()),
        "{} of {} lines arrived\n{}",
        all_of(&received).len(),
        expected.len(),
        egw.stderr()
    );
    egw.terminate();
    assert!(egw.wait(EXIT).success(), "{}", egw.stderr());
    assert_eq!(
        all_of(&received),
        expected,
        "lost, repeated or out of order"
    );
}
