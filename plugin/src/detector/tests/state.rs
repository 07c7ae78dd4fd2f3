//! Loading state job by job: a job whose definition changed restarts, the others keep what
//! they learnt; a state that cannot be read changes nothing.

use super::bytes::bytes_baseline;
use super::*;
use crate::catalog::JobCatalog;
use crate::detector::saved::{read, rewrite};
use crate::detector::state::{changes, definition};

const COUNTRY_JOB: &str = "rare_destination_country";
const BYTES_JOB: &str = "ded_high_sent_bytes_destination_ip_ea";

/// The built-in definition of job `id` as configuration, with `change` applied.
fn job_config(id: &str, change: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
    let def = JobCatalog::builtin()
        .get(id)
        .cloned()
        .expect("a built-in job");
    let mut job = serde_json::to_value(def).expect("a job definition serialises");
    change(&mut job);
    job
}

/// A detector whose country job has the built-in definition with `change` applied.
fn country_job_changed(change: impl FnOnce(&mut serde_json::Value)) -> Detector {
    detector(json!({ "jobs": [job_config(COUNTRY_JOB, change)] }))
}

/// A detector of the two shipped rules, after 25 3h buckets of uploads to 30 destinations in
/// Ireland (which the country job learns too).
fn trained() -> Detector {
    let mut d = detector(json!({}));
    bytes_baseline(&mut d, 25);
    d
}

/// What follows the training: a first connection to a never-seen country (the country job's
/// news), then an upload of 2 GB in chunks to a new address (the bytes job's).
fn after_training() -> (String, Vec<String>) {
    let start = T0 + 25 * HOURS3;
    let country = event(start, "175.45.179.109", Some("North Korea"), None);
    let upload = (0..10)
        .map(|i| {
            event(
                start + 60_000 + i * 1000,
                "93.184.216.34",
                Some("Ireland"),
                Some(json!(200_000_000)),
            )
        })
        .collect();
    (country, upload)
}

/// The rule that flagged `verdict`, if any.
fn flagged_by(verdict: &Verdict) -> Option<String> {
    annotated(verdict).map(|a| a["rule"]["id"].as_str().unwrap_or_default().to_owned())
}

#[test]
fn a_job_whose_bucket_span_changed_restarts_and_the_other_judges_as_without_the_change() {
    let mut running = trained();
    let saved = running.save_state().unwrap();
    let mut changed = country_job_changed(|job| job["bucket_span"] = json!("30m"));
    let report = changed.restore_state(&saved).unwrap();
    assert_eq!(report.kept, [BYTES_JOB]);
    assert_eq!(
        report.restarted,
        [(COUNTRY_JOB.to_owned(), "bucket_span 15m -> 30m".to_owned())]
    );
    assert!(
        report.new.is_empty() && report.dropped.is_empty(),
        "{report:?}"
    );

    let (country, upload) = after_training();
    // The country job restarted: learning, it flags nothing; the running one flags.
    assert_eq!(
        flagged_by(&running.at(&country)).as_deref(),
        Some(RARE_RULE),
        "the trained detector no longer flags a new country: the test's premise is gone"
    );
    assert_eq!(changed.at(&country), Verdict::PASS);
    // The bytes job kept its state: every chunk is judged as by the detector never reloaded,
    // alert fields included.
    let mut flagged = 0;
    for (i, line) in upload.iter().enumerate() {
        let (before, after) = (running.at(line), changed.at(line));
        assert_eq!(after, before, "chunk {i} judged differently after the load");
        flagged += usize::from(flagged_by(&after).as_deref() == Some(EXFIL_RULE));
    }
    assert!(
        flagged > 0,
        "the upload was not flagged: the comparison shows nothing"
    );
    // Without the state the bytes job would still be learning.
    let mut fresh = country_job_changed(|job| job["bucket_span"] = json!("30m"));
    assert!(upload.iter().all(|line| fresh.at(line) == Verdict::PASS));
}

#[test]
fn the_load_is_said_in_the_warnings_with_what_changed() {
    let saved = trained().save_state().unwrap();
    let mut changed = country_job_changed(|job| {
        job["by_field_name"] = json!("destination.geo.country_iso_code");
        job["filters"] = json!([{"category_contains": "network"}]);
    });
    let before = changed.warnings().len();
    changed.load_state(&saved).unwrap();
    let said = changed.warnings()[before..].join("\n");
    assert!(
        said.contains(
            "job rare_destination_country starts learning afresh: its definition changed \
             (by_field_name destination.geo.country_name -> destination.geo.country_iso_code; \
             filters "
        ),
        "{said}"
    );
    assert!(!said.contains(BYTES_JOB), "{said}");
}

#[test]
fn what_alerts_say_and_the_model_tuning_are_not_part_of_a_definition() {
    let saved = trained().save_state().unwrap();
    let mut reworded = country_job_changed(|job| {
        job["description"] = json!("Countries we never talk to");
        job["influencers"] = json!(["source.ip"]);
    });
    let mut kept = reworded.restore_state(&saved).unwrap().kept;
    kept.sort();
    assert_eq!(kept, [BYTES_JOB, COUNTRY_JOB]);
    let mut tuned = detector(
        json!({"models": {"jobs": {"rare_destination_country": {"learning_buckets": 30}}}}),
    );
    assert_eq!(tuned.restore_state(&saved).unwrap().kept.len(), 2);
    // `field_name` means nothing to `rare`: setting it changes nothing the model counts.
    let rare = JobCatalog::builtin().get(COUNTRY_JOB).cloned().unwrap();
    let with_field = JobDef {
        field_name: Some("source.bytes".into()),
        ..rare.clone()
    };
    assert_eq!(definition(&rare), definition(&with_field));
}

#[test]
fn jobs_no_rule_uses_are_dropped_and_jobs_new_to_the_state_start_learning() {
    let country_only = || {
        let rule = format!("{}/rare_destination_country.toml", rules_dir());
        detector(json!({ "rules": [rule] }))
    };
    let mut d = country_only();
    let report = d.restore_state(&trained().save_state().unwrap()).unwrap();
    assert_eq!(report.kept, [COUNTRY_JOB]);
    assert_eq!(report.dropped, [BYTES_JOB]);

    let mut both = trained();
    let report = both
        .restore_state(&country_only().save_state().unwrap())
        .unwrap();
    assert_eq!(report.kept, [COUNTRY_JOB]);
    assert_eq!(report.new, [BYTES_JOB]);
    // The new job's model is empty, not the one it had before the load.
    let (_, upload) = after_training();
    assert!(upload.iter().all(|line| both.at(line) == Verdict::PASS));
}

#[test]
fn a_damaged_model_or_another_format_is_refused_and_changes_nothing() {
    let mut d = trained();
    let saved = d.save_state().unwrap();
    let mut state = read(&saved).unwrap();
    let bytes_job = state.jobs.iter_mut().find(|j| j.id == BYTES_JOB).unwrap();
    bytes_job.model = &bytes_job.model[..bytes_job.model.len() / 2];
    let damaged = rewrite(&state, STATE_FORMAT_VERSION);
    let err = d.load_state(&damaged).unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::State));
    assert!(err.message.contains(BYTES_JOB), "{}", err.message);

    let older = rewrite(&state, 2);
    let err = d.load_state(&older).unwrap_err();
    assert!(
        err.message
            .contains("state format 2 is not supported (this plugin reads 3 and 4)"),
        "{}",
        err.message
    );
    // Neither load touched the running models: the upload is flagged as by a twin never
    // offered them.
    let mut twin = trained();
    let (country, upload) = after_training();
    let mut flagged = 0;
    for line in std::iter::once(&country).chain(&upload) {
        let verdict = d.at(line);
        assert_eq!(verdict, twin.at(line));
        flagged += usize::from(annotated(&verdict).is_some());
    }
    assert!(
        flagged > 1,
        "the trained detector flags less than the test needs"
    );
}

#[test]
fn a_change_is_described_key_by_key() {
    let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let saved = [
        pair("function", "rare"),
        pair("by_field_name", "a"),
        pair("old", "x"),
    ];
    let now = [
        pair("function", "rare"),
        pair("by_field_name", ""),
        pair("new", "y"),
    ];
    assert_eq!(
        changes(&saved, &now),
        "by_field_name a -> (none); new (absent) -> y; old x -> (absent)"
    );
    assert_eq!(changes(&now, &now), "");
}

/// A writer that takes `left` bytes, then fails as a full disk would.
struct FailsAfter {
    left: usize,
    taken: Vec<u8>,
}

impl std::io::Write for FailsAfter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Err(std::io::Error::other("disk full (test)"));
        }
        let n = buf.len().min(self.left);
        self.taken.extend_from_slice(&buf[..n]);
        self.left -= n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_save_into_a_writer_that_fails_midway_reports_the_writers_error_and_changes_nothing() {
    let d = trained();
    let whole = d.save_state().unwrap();
    // Streaming writes what the in-memory save returns, byte for byte.
    let mut streamed = FailsAfter {
        left: usize::MAX,
        taken: Vec::new(),
    };
    d.save_state_to(&mut streamed).unwrap();
    assert_eq!(streamed.taken, whole);
    for left in [0, 1, 7, whole.len() / 2, whole.len() - 1] {
        let mut out = FailsAfter {
            left,
            taken: Vec::new(),
        };
        let err = d.save_state_to(&mut out).unwrap_err();
        assert_eq!(err.kind(), Some(ErrorKind::State));
        assert!(
            err.message.contains("disk full (test)"),
            "after {left} bytes: {}",
            err.message
        );
        assert_eq!(out.taken, whole[..left], "after {left} bytes");
    }
    // The detector saves as before after the failures.
    assert_eq!(d.save_state().unwrap(), whole);
}

/// A state of format 3 saved by the release before the streamed save (main at 9d4322c):
/// `trained().save_state()`.
const FORMAT_3: &[u8] = include_bytes!("data/state-format-3.bin");

#[test]
fn a_state_of_the_format_before_is_still_loaded_whole() {
    assert_eq!(FORMAT_3[0], 3, "the fixture is of format 3");
    let mut loaded = detector(json!({}));
    let report = loaded.restore_state(FORMAT_3).unwrap();
    assert_eq!(report.kept.len(), 2, "{report:?}");
    // It holds what the release before learnt from the events this one learns from: saved
    // again, it is the size of this one's state after the same round trip. Not the same bytes:
    // the order of a bucket's sums is the order they came in now, a hash table's before, and
    // a closed bucket's sums go into the histograms as per-bin counts (the last bits of a bin
    // can differ from adding them one by one).
    let mut trained = trained();
    let mut round_trip = detector(json!({}));
    round_trip
        .load_state(&trained.save_state().unwrap())
        .unwrap();
    assert_eq!(
        loaded.save_state().unwrap().len(),
        round_trip.save_state().unwrap().len(),
        "the format 3 state holds something else than this build learns"
    );
    let (country, upload) = after_training();
    for line in std::iter::once(&country).chain(&upload) {
        assert_eq!(loaded.at(line), trained.at(line));
    }
    // A damaged one is refused whole.
    let mut d = detector(json!({}));
    let err = d.load_state(&FORMAT_3[..FORMAT_3.len() / 2]).unwrap_err();
    assert!(err.message.contains("format 3"), "{}", err.message);
}
