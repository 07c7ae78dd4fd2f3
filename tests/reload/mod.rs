//! Reloading (issue #11): a SIGHUP whose new configuration changes one job's definition
//! restarts that job and leaves the other judging exactly as without the reload; a start with a
//! state file saved before the same change does the same. The input and the metrics endpoint
//! move, a file output reopens its path (log rotation), a reload that cannot be set up is
//! refused and the running configuration goes on. Reloads that rebuild outputs: `outputs.rs`;
//! those of outputs with a disk buffer: `disk.rs`.
//! Loopback only, every wait bounded.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

mod disk;
mod outputs;

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
