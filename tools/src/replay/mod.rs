//! `egresswatch replay`: run recorded traffic through the detector on event time and report
//! what it would have flagged, how the scores looked, and (with labels) how good that was.
//!
//! # How it works
//! 1. The inputs (files or `-`, plain or gzip, any [`Format`]) are streamed, converted to ECS by
//!    the [`presets`] and merged in event-time order ([`input`]), on a reader thread that
//!    hands batches to the detector thread. Each event keeps its 1-based line number across the
//!    inputs in the order given, which is what labels refer to.
//! 2. One plugin instance is built from the configuration as `run` builds it, plus two options:
//!    score records, and `--threshold` when given. Its verdicts are `run`'s verdicts: the events
//!    it flags go to `flagged.ndjson` as `run` would write them. Its score records (one per rule
//!    and scored event: rule, job, score, learning, subject, reason) feed the summary, the plots,
//!    the top values, the quality figures and the baselines.
//! 3. Memory is flat in the number of events: per rule, plots keep bounded grids, top values a
//!    bounded table, quality counts; the baselines keep one entry per country, or the
//!    destinations of the current 3h bucket.
//!
//! # Configuration
//! The normal host configuration, plus an optional `replay:` section that only replay reads:
//! `mappings` (per preset: source field -> ECS field, `null` to drop one) and `constants` (ECS
//! fields set on every converted event). See [`presets`].

pub mod input;
pub mod presets;
pub mod quality;
pub mod report;

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Instant;

use abi_stable::std_types::{ROption, RStr};
use anyhow::{Context, Result};
use egresswatch_plugin_api::{BuildOption, ScoreExtra, ScoreRecord};
use serde::Deserialize;
use serde_json::Value;

use egresswatch::config::{ConfigError, HostConfig};
use egresswatch::engine::wall_clock_ms;
use egresswatch::loader::{self, LoadError};
use egresswatch_common::human;
use egresswatch_common::names::fields::{
    DESTINATION_COUNTRY_NAME as COUNTRY_FIELD, DESTINATION_IP as DESTINATION_FIELD,
};
use egresswatch_common::time;
pub use input::{Inputs, Record};
pub use presets::Format;
use presets::Preset;
use quality::{FixedBytes, Labels, NewCountry, Tally};
use report::{ReplayReport, RuleSummary, TopValue};

/// The bytes baseline's bucket.
const BYTES_BUCKET_MS: i64 = 3 * time::HOUR_MS;
/// The country baseline's alert bucket (as the country job's).
const COUNTRY_BUCKET_MS: i64 = 15 * 60 * 1000;
/// Top values listed per rule.
const TOP_VALUES: usize = 5;
/// Distinct flagged values tracked per rule for the top list (least frequent dropped beyond).
const TOP_CAPACITY: usize = 4096;
/// Batches the reader thread may be ahead of the detector.
const READ_AHEAD: usize = 4;

/// Options of `egresswatch replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// The configuration file (the same as for `run`; an optional `replay:` section adds field
    /// mappings).
    #[arg(short, long)]
    pub(crate) config: PathBuf,
    /// The plugin library; overrides `plugin:` in the config.
    #[arg(long, env = "EGRESSWATCH_PLUGIN")]
    pub(crate) plugin: Option<PathBuf>,
    /// Input format; `auto` decides per file from its first line.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    pub(crate) format: Format,
    /// Labels (NDJSON from `egresswatch generate --labels`): print, per rule and for the two
    /// baselines, alerts, alert precision, false alerts per day and episodes caught, then
    /// precision and recall per event.
    #[arg(long)]
    pub(crate) labels: Option<PathBuf>,
    /// Flag at this score (0 to 100) instead of each rule's `anomaly_threshold`.
    #[arg(long, value_parser = score)]
    pub(crate) threshold: Option<f64>,
    /// Where flagged.ndjson and report.html are written.
    #[arg(long, default_value = "replay-out")]
    pub(crate) out_dir: PathBuf,
    /// Country baseline: a country not seen in this many days is flagged.
    #[arg(long, default_value_t = 7.0)]
    pub(crate) baseline_days: f64,
    /// Bytes baseline: bytes sent to one destination IP in one 3 h bucket that are flagged;
    /// a number of bytes, or with a unit: 100MB, 1.5GiB (kB/MB/GB/TB: powers of 1000;
    /// KiB/MiB/GiB/TiB: powers of 1024).
    #[arg(long, default_value = "100MB", value_parser = byte_size)]
    pub(crate) baseline_bytes: f64,
    /// Secret for the models' key hashes; the same seed gives the same replay (`run` draws a
    /// random one per installation, which changes nothing but the hashes).
    #[arg(long, default_value_t = 0)]
    pub(crate) hash_seed: u64,
    /// Input files (plain or .gz, `-` for standard input), replayed in event-time order
    /// across files.
    #[arg(required = true)]
    pub(crate) inputs: Vec<PathBuf>,
}

/// The `replay:` section of the configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaySettings {
    /// Per preset (`zeek`, `zeek-json`, `suricata`, `argus`): source field -> ECS field;
    /// `null` drops the preset's mappings of that source field.
    #[serde(default)]
    pub(crate) mappings: BTreeMap<String, BTreeMap<String, Option<String>>>,
    /// ECS fields set on every converted event, e.g. `host.name`.
    #[serde(default)]
    pub(crate) constants: BTreeMap<String, Value>,
}

impl ReplaySettings {
    /// The preset of a format with the custom mappings and constants applied.
    pub(crate) fn preset(&self, format: Format) -> Preset {
        let mut preset = Preset::builtin(format);
        if let Some(custom) = self.mappings.get(format.name()) {
            preset = preset.with_custom(custom);
        }
        preset.constants = self.constants.clone();
        preset
    }

    fn problems(&self) -> Vec<String> {
        self.mappings
            .keys()
            .filter(|k| !Format::PRESETS.iter().any(|f| f.name() == k.as_str()))
            .map(|k| {
                format!("replay.mappings.{k}: unknown preset (zeek, zeek-json, suricata, argus)")
            })
            .collect()
    }
}

/// Loads the host configuration and its `replay:` section.
fn load_config(path: &Path) -> Result<(HostConfig, ReplaySettings)> {
    let config = HostConfig::load(path)?;
    let settings: ReplaySettings = match &config.replay {
        Some(section) => {
            serde_json::from_value(section.clone()).map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                message: format!("replay: {e}"),
            })?
        }
        None => ReplaySettings::default(),
    };
    let problems = settings.problems();
    if !problems.is_empty() {
        return Err(ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        }
        .into());
    }
    Ok((config, settings))
}

/// Per-rule working state, filled from score records.
struct RuleRun {
    summary: RuleSummary,
    top: HashMap<String, TopValue>,
    tally: Tally,
}

impl RuleRun {
    fn new(record: &ScoreRecord) -> RuleRun {
        RuleRun {
            summary: RuleSummary {
                name: record.rule_name.to_string(),
                job_id: record.job_id.to_string(),
                threshold: record.threshold,
                ..RuleSummary::default()
            },
            top: HashMap::new(),
            tally: Tally::default(),
        }
    }

    fn add(&mut self, record: &ScoreRecord, line: u64, labels: Option<&Labels>) {
        let s = &mut self.summary;
        s.seen += 1;
        s.seen_over_time.add(record.time_ms);
        if record.learning {
            return;
        }
        s.learning_end_ms.get_or_insert(record.time_ms);
        s.scored += 1;
        let attack = labels.is_some_and(|l| l.by_line.contains_key(&line));
        s.scores
            .add(record.time_ms, record.score, record.flagged, attack);
        if !record.flagged {
            return;
        }
        s.flagged += 1;
        if let Some(labels) = labels {
            self.tally.add(line, labels);
            self.tally.add_to_alert(line, &alert_of(record), labels);
        }
        let value = record.subject_value.as_str();
        if !self.top.contains_key(value) && self.top.len() >= TOP_CAPACITY {
            // Space-bounded top list: forget the values flagged least so far.
            let least = self.top.values().map(|t| t.count).min().unwrap_or(0);
            self.top.retain(|_, t| t.count > least);
        }
        let top = self
            .top
            .entry(value.to_owned())
            .or_insert_with(|| TopValue {
                field: record.subject_field.to_string(),
                value: value.to_owned(),
                count: 0,
                max_score: f64::MIN,
                reason: String::new(),
            });
        top.count += 1;
        if record.score > top.max_score {
            top.max_score = record.score;
            top.reason = record.reason.to_string();
        }
    }
}

/// The alert a flagged record is, or belongs to: the plugin's alert identity, or for a plugin
/// without one, its value and bucket.
fn alert_of(record: &ScoreRecord) -> String {
    for extra in record.extra.iter() {
        match extra.as_enum() {
            Ok(ScoreExtra::Alert { id }) => return id.to_string(),
            Ok(ScoreExtra::Suppressed { alert_id, .. }) => return alert_id.to_string(),
            _ => {}
        }
    }
    format!("{}@{}", record.subject_value, record.bucket_start_ms)
}

/// The two baselines, each fed the events of the first job of its kind: a `rare` job about
/// the destination country, a `high_sum` job about the destination address.
struct Baselines {
    days: f64,
    bytes_threshold: f64,
    country: Option<(String, NewCountry, Tally)>,
    bytes: Option<(String, FixedBytes, Tally)>,
}

impl Baselines {
    fn new(args: &ReplayArgs) -> Baselines {
        Baselines {
            days: args.baseline_days,
            bytes_threshold: args.baseline_bytes,
            country: None,
            bytes: None,
        }
    }

    fn observe(&mut self, record: &ScoreRecord, line: u64, labels: &Labels) {
        let job = record.job_id.as_str();
        let field = record.subject_field.as_str();
        let value = record.subject_value.as_str();
        if record.function.as_str() == "rare" && field == COUNTRY_FIELD {
            let (owner, baseline, tally) = self.country.get_or_insert_with(|| {
                (job.to_owned(), NewCountry::new(self.days), Tally::default())
            });
            if owner == job && baseline.observe(record.time_ms, value, record.learning) {
                tally.add(line, labels);
                let bucket = record.time_ms.div_euclid(COUNTRY_BUCKET_MS);
                tally.add_to_alert(line, &format!("{value}@{bucket}"), labels);
            }
        }
        if record.function.as_str() == "high_sum" && field == DESTINATION_FIELD {
            let (owner, baseline, tally) = self.bytes.get_or_insert_with(|| {
                (
                    job.to_owned(),
                    FixedBytes::new(BYTES_BUCKET_MS, self.bytes_threshold),
                    Tally::default(),
                )
            });
            if owner == job
                && baseline.observe(record.time_ms, value, record.value, record.learning)
            {
                tally.add(line, labels);
                let bucket = record.time_ms.div_euclid(BYTES_BUCKET_MS);
                tally.add_to_alert(line, &format!("{value}@{bucket}"), labels);
            }
        }
    }
}

/// A batch of events as the reader thread hands it over.
type Batch = Vec<Record>;

/// `--threshold`: an anomaly score, 0 to 100.
fn score(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if (0.0..=100.0).contains(&v) => Ok(v),
        Ok(_) => Err("a score is from 0 to 100".to_owned()),
        Err(e) => Err(format!("not a number ({e})")),
    }
}

/// A byte count, plain or with a unit: `100MB`, `1.5 GiB`, `512k`.
fn byte_size(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a size (e.g. 100000000, 100MB, 1.5GiB)"))?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` (B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            ))
        }
    };
    let bytes = number * scale;
    if bytes.is_finite() && bytes > 0.0 {
        Ok(bytes)
    } else {
        Err("a size must be more than 0".to_owned())
    }
}

/// Runs a replay: streams the inputs through one plugin instance, writes `flagged.ndjson` and
/// `report.html` to the output folder and the summary to `out`.
pub fn replay(args: &ReplayArgs, out: &mut dyn Write) -> Result<()> {
    let (config, settings) = load_config(&args.config)?;
    let plugin_path = match (&args.plugin, &config.plugin) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => config.resolve(p),
        (None, None) => loader::default_plugin_path(),
    };
    let plugin = loader::load(&plugin_path)?;
    let labels = args.labels.as_deref().map(Labels::load).transpose()?;
    let mut options = vec![
        BuildOption::BaseDir(config.base_dir.to_string_lossy().as_ref().into()),
        BuildOption::HashSeed(args.hash_seed),
        BuildOption::ScoreRecords,
    ];
    if let Some(t) = args.threshold {
        options.push(BuildOption::Threshold(t));
    }
    let mut transform =
        plugin
            .construct(&config.detector_json(), options)
            .map_err(|e| match e {
                LoadError::Constructor { problems, .. } if !problems.is_empty() => {
                    anyhow::Error::from(ConfigError::Invalid {
                        path: args.config.clone(),
                        problems: config.detector_problems(&problems),
                    })
                }
                other => other.into(),
            })?;
    let mut notes: Vec<String> = transform
        .warnings()
        .into_result()
        .map(|w| w.iter().map(ToString::to_string).collect())
        .unwrap_or_default();

    let mut inputs = Inputs::open(&args.inputs, args.format, &settings, labels.is_some())?;
    let (bytes_read, total_bytes) = (
        std::sync::Arc::clone(&inputs.bytes_read),
        inputs.total_bytes,
    );
    let batch_size = config.batch.max_events.max(1);
    let (tx, rx) = mpsc::sync_channel::<Result<Batch>>(READ_AHEAD);
    let reader = std::thread::Builder::new()
        .name("replay-reader".into())
        .spawn(move || loop {
            let mut batch = Vec::with_capacity(batch_size);
            let result = loop {
                match inputs.next_record() {
                    Ok(Some(record)) => {
                        batch.push(record);
                        if batch.len() == batch_size {
                            break Ok(false);
                        }
                    }
                    Ok(None) => break Ok(true),
                    Err(e) => break Err(e),
                }
            };
            let done = matches!(result, Ok(true));
            let sent = match result {
                Ok(_) if batch.is_empty() => true,
                Ok(_) => tx.send(Ok(batch)).is_ok(),
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return inputs;
                }
            };
            if done || !sent {
                return inputs;
            }
        })
        .context("starting the reader thread")?;

    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    let flagged_path = args.out_dir.join("flagged.ndjson");
    let mut flagged_out = std::io::BufWriter::new(
        std::fs::File::create(&flagged_path)
            .with_context(|| format!("creating {}", flagged_path.display()))?,
    );

    let mut rules: Vec<RuleRun> = Vec::new();
    let mut rule_index: HashMap<String, usize> = HashMap::new();
    let mut any = Tally::default();
    let mut baselines = Baselines::new(args);
    let mut span: Option<(i64, i64)> = None;
    let mut events = 0u64;
    let mut flagged_events = 0u64;
    let mut progress = Progress::new(total_bytes);
    let mut flagged_in_event: Vec<bool> = Vec::new();
    for batch in rx {
        let batch = batch?;
        let texts: Vec<RStr<'_>> = batch.iter().map(|r| RStr::from_str(&r.json)).collect();
        let verdicts = transform
            .process(texts.as_slice().into(), wall_clock_ms())
            .into_result()
            .map_err(|e| anyhow::anyhow!("the plugin failed on a batch: {e}"))?;
        let records = transform
            .take_scores()
            .into_result()
            .map_err(|e| anyhow::anyhow!("plugin {} cannot replay: {e}", plugin.name()))?;
        flagged_in_event.clear();
        flagged_in_event.resize(batch.len(), false);
        for record in records.iter() {
            let Some(event) = batch.get(record.event as usize) else {
                continue;
            };
            let index = match rule_index.get(record.rule_id.as_str()) {
                Some(&index) => index,
                None => {
                    rules.push(RuleRun::new(record));
                    rule_index.insert(record.rule_id.to_string(), rules.len() - 1);
                    rules.len() - 1
                }
            };
            rules[index].add(record, event.line, labels.as_ref());
            if let Some(labels) = &labels {
                baselines.observe(record, event.line, labels);
                if record.flagged {
                    let alert = format!("{}/{}", record.rule_id, alert_of(record));
                    any.add_to_alert(event.line, &alert, labels);
                }
            }
            if record.flagged {
                flagged_in_event[record.event as usize] = true;
            }
        }
        for ((record, verdict), flagged) in batch.iter().zip(verdicts.iter()).zip(&flagged_in_event)
        {
            if record.time_ms != i64::MIN {
                span = Some(span.map_or((record.time_ms, record.time_ms), |(a, b)| {
                    (a.min(record.time_ms), b.max(record.time_ms))
                }));
            }
            if !*flagged {
                continue;
            }
            flagged_events += 1;
            if let Some(labels) = &labels {
                any.add(record.line, labels);
            }
            let text = match &verdict.replacement {
                ROption::RSome(text) => text.as_str(),
                ROption::RNone => record.json.as_str(),
            };
            writeln!(flagged_out, "{text}")?;
        }
        events += batch.len() as u64;
        progress.update(events, bytes_read.load(Ordering::Relaxed));
    }
    progress.finish();
    flagged_out.flush()?;
    let inputs = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the reader thread panicked"))?;
    if rules.is_empty() && events > 0 {
        notes.push(
            "no rule's job scored any event: check the rules' jobs and the events' fields"
                .to_owned(),
        );
    }
    notes.splice(
        0..0,
        inputs
            .skipped()
            .iter()
            .map(|(why, n)| format!("skipped {n} {why}")),
    );

    let days = span.map_or(0, |(a, b)| {
        (b.div_euclid(time::DAY_MS) - a.div_euclid(time::DAY_MS) + 1) as u64
    });
    let mut report = ReplayReport {
        inputs: inputs.described(),
        events,
        span_ms: span,
        days,
        notes,
        ..ReplayReport::default()
    };
    if let Some(labels) = &labels {
        let daysf = days as f64;
        let mut rows: Vec<_> = rules
            .iter()
            .map(|r| r.tally.quality(&r.summary.name, labels, daysf))
            .collect();
        if rules.len() > 1 {
            rows.push(any.quality("egresswatch, any rule", labels, daysf));
        }
        if let Some((_, _, tally)) = &baselines.country {
            rows.push(tally.quality(
                &format!("baseline: country not seen in {} days", args.baseline_days),
                labels,
                daysf,
            ));
        }
        if let Some((_, _, tally)) = &baselines.bytes {
            rows.push(tally.quality(
                &format!(
                    "baseline: >= {} per {DESTINATION_FIELD} per 3h",
                    human::bytes(args.baseline_bytes)
                ),
                labels,
                daysf,
            ));
        }
        report.notes.push(
            "baselines read the same events as the matching job and start when its learning \
             period ends"
                .to_owned(),
        );
        report.quality = Some((labels.kinds(), rows));
    }
    for run in rules {
        let mut summary = run.summary;
        summary.per_day = summary.flagged as f64 / (days.max(1) as f64);
        let mut top: Vec<TopValue> = run.top.into_values().collect();
        top.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then(b.max_score.total_cmp(&a.max_score))
                .then(a.value.cmp(&b.value))
        });
        top.truncate(TOP_VALUES);
        summary.top = top;
        report.rules.push(summary);
    }

    let html_path = args.out_dir.join("report.html");
    std::fs::write(&html_path, report::html(&report))
        .with_context(|| format!("writing {}", html_path.display()))?;
    out.write_all(report::summary_text(&report).as_bytes())?;
    writeln!(
        out,
        "\nwrote {flagged_events} flagged event(s) to {} and the report to {}",
        flagged_path.display(),
        html_path.display()
    )?;
    Ok(())
}

/// A progress bar on standard error, drawn only when it is a terminal: events, events/s and,
/// when the inputs' size is known, how far through them and the time left.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
}

impl Progress {
    fn new(total_bytes: Option<u64>) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress {
                bar: None,
                started: Instant::now(),
            };
        }
        let target = indicatif::ProgressDrawTarget::stderr_with_hz(4);
        let bar = match total_bytes {
            Some(total) => {
                let bar = indicatif::ProgressBar::with_draw_target(Some(total), target);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "replay [{bar:30}] {percent:>3}% {msg} ETA {eta}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("#>."),
                );
                bar
            }
            None => {
                let bar = indicatif::ProgressBar::with_draw_target(None, target);
                bar.set_style(
                    indicatif::ProgressStyle::with_template("replay {spinner} {msg}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                );
                bar
            }
        };
        Progress {
            bar: Some(bar),
            started: Instant::now(),
        }
    }

    fn update(&mut self, events: u64, bytes: u64) {
        let Some(bar) = &self.bar else {
            return;
        };
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        bar.set_position(bytes);
        bar.set_message(format!(
            "{events} events, {:.0} events/s",
            events as f64 / secs
        ));
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_decimal_and_binary_units() {
        assert_eq!(byte_size("100000000"), Ok(1e8));
        assert_eq!(byte_size("100MB"), Ok(1e8));
        assert_eq!(byte_size("1.5 GiB"), Ok(1.5 * 1024.0 * 1024.0 * 1024.0));
        assert_eq!(byte_size("512k"), Ok(512_000.0));
        assert!(byte_size("100 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(byte_size("0MB").is_err());
        assert!(byte_size("MB").is_err());
    }

    #[test]
    fn a_threshold_is_a_score() {
        assert_eq!(score("75"), Ok(75.0));
        assert_eq!(score("0"), Ok(0.0));
        assert!(score("150").unwrap_err().contains("0 to 100"));
        assert!(score("-1").is_err());
        assert!(score("high").is_err());
    }
}
