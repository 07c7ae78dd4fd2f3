//! `egresswatch replay`: run recorded traffic through the detector on event time and report
//! what it would have flagged, how the scores looked, and (with labels) how good that was.
//!
//! # How it works
//! 1. Inputs (plain or gzip, any [`Format`]) are read whole, converted to ECS by the
//!    [presets](presets), and stably sorted by event time across files. Each event keeps its
//!    1-based line number across the inputs in the order given, which is what labels refer to.
//! 2. The rule files the configuration names are read and each `machine_learning` rule is copied
//!    into a temporary folder with `anomaly_threshold = 0`. Per rule the plugin is constructed
//!    twice with the user's detector settings (GeoIP, jobs, models, allow-list) and only that
//!    rule: a *scoring* instance, which annotates every event its job scores after the learning
//!    period, so every score can be plotted and any threshold applied afterwards; and a *probe*
//!    instance with no learning period, which annotates every event the job reads, so the count
//!    of events seen and the baselines use exactly the job's filters and enrichment. One rule
//!    per instance, because the plugin annotates an event with its best-scoring rule only.
//! 3. An event is flagged by a rule when its score reaches the rule's `anomaly_threshold`, or
//!    `--threshold`. `flagged.ndjson` holds each flagged event once, annotated by the rule that
//!    scored it highest (as `run` would write it), in event-time order.
//!
//! # Configuration
//! The normal host configuration, plus an optional `replay:` section that only replay reads:
//! `mappings` (per preset: source field -> ECS field, `null` to drop one) and `constants` (ECS
//! fields set on every converted event). See [`presets`].

pub mod presets;
pub mod quality;
pub mod report;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use abi_stable::std_types::{ROption, RStr};
use anyhow::{bail, Context, Result};
use egresswatch_plugin_api::BuildOption;
use serde::Deserialize;
use serde_json::Value;

use crate::config::{ConfigError, HostConfig};
use crate::loader;
use crate::time;
pub use presets::Format;
use presets::{get_path, Converter, Line, Preset};
use quality::{BytesEvent, CountryEvent, Labels};
use report::{Point, ReplayReport, RuleSummary, TopValue};

/// The ECS time field replay sorts on.
const TIMESTAMP: &str = "@timestamp";
/// The high-sum jobs' bucket, for the bytes baseline.
const BYTES_BUCKET_MS: i64 = 3 * 3_600_000;
/// Top values listed per rule.
const TOP_VALUES: usize = 5;

/// Options of `egresswatch replay`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// The configuration file (the same as for `run`; an optional `replay:` section adds field
    /// mappings).
    #[arg(short, long)]
    pub config: PathBuf,
    /// The plugin library; overrides `plugin:` in the config.
    #[arg(long)]
    pub plugin: Option<PathBuf>,
    /// Input format; `auto` decides per file from its first line.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    pub format: Format,
    /// Labels (NDJSON from `egresswatch generate --labels`): print precision and recall per
    /// rule and for the two baselines.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Flag at this score instead of each rule's `anomaly_threshold`.
    #[arg(long)]
    pub threshold: Option<f64>,
    /// Where flagged.ndjson and report.html are written.
    #[arg(long, default_value = "replay-out")]
    pub out_dir: PathBuf,
    /// Country baseline: a country not seen in this many days is flagged.
    #[arg(long, default_value_t = 7.0)]
    pub baseline_days: f64,
    /// Bytes baseline: bytes sent to one destination IP in one 3 h bucket that are flagged.
    #[arg(long, default_value_t = 100_000_000.0)]
    pub baseline_bytes: f64,
    /// Input files (plain or .gz), replayed in event-time order across files.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

/// The `replay:` section of the configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaySettings {
    /// Per preset (`zeek`, `zeek-json`, `suricata`, `argus`): source field -> ECS field;
    /// `null` drops the preset's mappings of that source field.
    #[serde(default)]
    pub mappings: BTreeMap<String, BTreeMap<String, Option<String>>>,
    /// ECS fields set on every converted event, e.g. `host.name`.
    #[serde(default)]
    pub constants: BTreeMap<String, Value>,
}

impl ReplaySettings {
    /// The preset of a format with the custom mappings and constants applied.
    pub fn preset(&self, format: Format) -> Preset {
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
pub fn load_config(path: &Path) -> Result<(HostConfig, ReplaySettings)> {
    let text = std::fs::read_to_string(path).map_err(|reason| ConfigError::Read {
        path: path.to_owned(),
        reason,
    })?;
    let is_toml = path.extension().is_some_and(|e| e == "toml");
    let parse_err = |message: String| ConfigError::Parse {
        path: path.to_owned(),
        message,
    };
    let (host_text, section): (String, Option<String>) = if is_toml {
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| parse_err(e.to_string()))?;
        match table.remove("replay") {
            Some(section) => (
                toml::to_string(&table)?,
                Some(serde_json::to_string(&section)?),
            ),
            None => (text.clone(), None),
        }
    } else {
        let mut value: serde_yaml_ng::Value = if text.trim().is_empty() {
            serde_yaml_ng::Value::Null
        } else {
            serde_yaml_ng::from_str(&text).map_err(|e| parse_err(e.to_string()))?
        };
        let section = value
            .as_mapping_mut()
            .and_then(|m| m.remove("replay"))
            .map(|s| serde_json::to_string(&s))
            .transpose()?;
        match section {
            Some(s) => (serde_yaml_ng::to_string(&value)?, Some(s)),
            None => (text.clone(), None),
        }
    };
    let settings: ReplaySettings = match section {
        Some(json) => serde_json::from_str(&json).map_err(|e| parse_err(format!("replay: {e}")))?,
        None => ReplaySettings::default(),
    };
    let mut config = HostConfig::parse(&host_text, is_toml).map_err(parse_err)?;
    config.base_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    let mut problems = config.problems();
    problems.extend(settings.problems());
    if !problems.is_empty() {
        return Err(ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        }
        .into());
    }
    Ok((config, settings))
}

/// One event to replay.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Event time, epoch ms (an event without one takes the time of the event before it).
    pub time_ms: i64,
    /// 1-based line across the inputs, in the order given.
    pub line: u64,
    /// The ECS event as JSON text.
    pub json: String,
}

/// What reading the inputs gave.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// Events, sorted by time (stable).
    pub records: Vec<Record>,
    /// Per input: "path (format)".
    pub described: Vec<String>,
    /// Lines that were not events: (reason, count).
    pub skipped: BTreeMap<String, u64>,
}

/// Opens a file, decompressing gzip (by its magic bytes).
pub fn open(path: &Path) -> Result<Box<dyn BufRead>> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic)?;
    drop(file);
    let file = std::fs::File::open(path)?;
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(
            file,
        ))))
    } else {
        Ok(Box::new(BufReader::new(file)))
    }
}

/// Reads, converts and orders the inputs.
pub fn read_inputs(paths: &[PathBuf], format: Format, settings: &ReplaySettings) -> Result<Inputs> {
    let mut inputs = Inputs::default();
    let mut line_base = 0u64;
    for path in paths {
        let mut reader = open(path)?;
        let mut lines: Vec<String> = Vec::new();
        let mut buf = Vec::new();
        loop {
            buf.clear();
            if reader
                .read_until(b'\n', &mut buf)
                .with_context(|| format!("reading {}", path.display()))?
                == 0
            {
                break;
            }
            while matches!(buf.last(), Some(b'\n' | b'\r')) {
                buf.pop();
            }
            lines.push(String::from_utf8_lossy(&buf).into_owned());
        }
        let fmt = match format {
            Format::Auto => {
                let first = lines.iter().find(|l| !l.trim().is_empty());
                match first.and_then(|l| Format::detect(l)) {
                    Some(f) => f,
                    None if first.is_none() => Format::Ecs,
                    None => bail!(
                        "{}: cannot tell the format from the first line; use --format",
                        path.display()
                    ),
                }
            }
            f => f,
        };
        let before = inputs.records.len();
        let mut converter = (fmt != Format::Ecs).then(|| Converter::new(settings.preset(fmt)));
        let mut bad = 0u64;
        let mut first_error = None;
        let file_base = line_base;
        line_base += lines.len() as u64;
        for (i, text) in lines.into_iter().enumerate() {
            let line = file_base + i as u64 + 1;
            match converter.as_mut() {
                None => {
                    if text.trim().is_empty() {
                        continue;
                    }
                    let time_ms = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| get_path(&v, TIMESTAMP).and_then(time_of));
                    inputs.records.push(Record {
                        time_ms: time_ms.unwrap_or(i64::MIN),
                        line,
                        json: text,
                    });
                }
                Some(conv) => match conv.convert(&text) {
                    Ok(Line::Event(event, time_ms)) => inputs.records.push(Record {
                        time_ms: time_ms.unwrap_or(i64::MIN),
                        line,
                        json: event.to_string(),
                    }),
                    Ok(Line::Header) => {}
                    Ok(Line::Skipped) => {
                        *inputs
                            .skipped
                            .entry(format!("{} records other than flow", fmt.name()))
                            .or_default() += 1;
                    }
                    Err(e) => {
                        bad += 1;
                        first_error.get_or_insert(format!("line {}: {e}", i + 1));
                    }
                },
            }
        }
        if bad > 0 {
            *inputs
                .skipped
                .entry(format!(
                    "{}: unconvertible lines (first: {})",
                    path.display(),
                    first_error.unwrap_or_default()
                ))
                .or_default() += bad;
        }
        inputs.described.push(format!(
            "{} ({}, {} events)",
            path.display(),
            fmt.name(),
            inputs.records.len() - before
        ));
    }
    // Events without a time take the time of the event before them, then all are ordered.
    let mut last = i64::MIN;
    for r in &mut inputs.records {
        if r.time_ms == i64::MIN {
            r.time_ms = last;
        } else {
            last = r.time_ms;
        }
    }
    let first = inputs
        .records
        .iter()
        .map(|r| r.time_ms)
        .find(|&t| t != i64::MIN);
    for r in &mut inputs.records {
        if r.time_ms == i64::MIN {
            r.time_ms = first.unwrap_or(0);
        }
    }
    inputs.records.sort_by_key(|r| r.time_ms);
    Ok(inputs)
}

fn time_of(value: &Value) -> Option<i64> {
    match value {
        Value::String(s) => time::parse_ms(s),
        Value::Number(n) => n.as_f64().map(|x| {
            if x < 1e11 {
                (x * 1000.0) as i64
            } else {
                x as i64
            }
        }),
        _ => None,
    }
}

/// A machine-learning rule found in the configured rule files.
#[derive(Debug, Clone)]
struct RuleFile {
    rule_id: String,
    name: String,
    threshold: f64,
    /// The copy with `anomaly_threshold = 0`.
    scoring_copy: PathBuf,
}

/// A temporary folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("egresswatch-replay-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn toml_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        entries.sort();
        for e in entries {
            toml_files(&e, out);
        }
    } else if path.extension().is_some_and(|e| e == "toml") {
        out.push(path.to_owned());
    }
}

/// Finds the machine-learning rules and writes their scoring copies into `dir`.
fn rule_files(config: &HostConfig, dir: &Path, notes: &mut Vec<String>) -> Result<Vec<RuleFile>> {
    let rules: Vec<PathBuf> = match config.detector.get("rules") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(PathBuf::from)
            .collect(),
        Some(Value::String(s)) => vec![PathBuf::from(s)],
        _ => vec![PathBuf::from("rules")],
    };
    let mut files = Vec::new();
    for r in &rules {
        toml_files(&config.resolve(r), &mut files);
    }
    let mut out = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading rule file {}", file.display()))?;
        let mut table: toml::Table = match toml::from_str(&text) {
            Ok(t) => t,
            Err(e) => {
                notes.push(format!("{}: not read: {e}", file.display()));
                continue;
            }
        };
        let Some(rule) = table.get_mut("rule").and_then(toml::Value::as_table_mut) else {
            continue;
        };
        if rule.get("type").and_then(toml::Value::as_str) != Some("machine_learning") {
            continue;
        }
        let text_of = |k: &str| {
            rule.get(k)
                .and_then(toml::Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (rule_id, name) = (text_of("rule_id"), text_of("name"));
        let threshold = match rule.get("anomaly_threshold") {
            Some(toml::Value::Integer(t)) => *t as f64,
            Some(toml::Value::Float(t)) => *t,
            _ => 75.0,
        };
        rule.insert("anomaly_threshold".to_owned(), toml::Value::Integer(0));
        let copy = dir.join(format!(
            "{i:03}-{}",
            file.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        ));
        std::fs::write(&copy, toml::to_string(&table)?)
            .with_context(|| format!("writing {}", copy.display()))?;
        out.push(RuleFile {
            rule_id,
            name,
            threshold,
            scoring_copy: copy,
        });
    }
    Ok(out)
}

/// The detector configuration of one instance, as JSON text.
fn instance_json(config: &HostConfig, rule: &Path) -> String {
    let mut detector = config.detector.clone();
    if let Some(map) = detector.as_object_mut() {
        map.insert(
            "rules".to_owned(),
            Value::Array(vec![Value::String(rule.to_string_lossy().into_owned())]),
        );
        map.insert(
            "actions".to_owned(),
            serde_json::json!({"default": {"annotate": true}}),
        );
        map.insert("fail_on_unsupported".to_owned(), Value::Bool(false));
    }
    detector.to_string()
}

/// The field an alert of a job is about, for the "top values" list.
fn subject_field(job_id: &str) -> &'static str {
    if job_id.contains("country") {
        "destination.geo.country_name"
    } else if job_id.contains("region") {
        "destination.geo.region_name"
    } else if job_id.contains("destination_port") {
        "destination.port"
    } else {
        "destination.ip"
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Per-rule working state.
struct RuleRun {
    file: RuleFile,
    threshold: f64,
    scoring: crate::loader::Transform,
    probe: crate::loader::Transform,
    job_id: String,
    function: String,
    seen_times: Vec<i64>,
    points: Vec<Point>,
    flagged_lines: Vec<u64>,
    top: HashMap<String, TopValue>,
    learning_end_ms: Option<i64>,
    countries: Vec<CountryEvent>,
    bytes: Vec<BytesEvent>,
}

/// Everything a replay produced.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The report (summary, plots, quality).
    pub report: ReplayReport,
    /// Flagged events written.
    pub flagged_events: u64,
}

/// Runs a replay: reads inputs, scores them, writes `flagged.ndjson` and `report.html` to the
/// output folder and the summary to `out`.
pub fn replay(args: &ReplayArgs, out: &mut dyn Write) -> Result<Outcome> {
    let (config, settings) = load_config(&args.config)?;
    let plugin_path = match (&args.plugin, &config.plugin) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => config.resolve(p),
        (None, None) => loader::default_plugin_path(),
    };
    let plugin = loader::load(&plugin_path)?;
    let labels = args.labels.as_deref().map(Labels::load).transpose()?;
    let inputs = read_inputs(&args.inputs, args.format, &settings)?;
    let mut notes: Vec<String> = inputs
        .skipped
        .iter()
        .map(|(why, n)| format!("skipped {n} {why}"))
        .collect();

    let temp = TempDir::new()?;
    let files = rule_files(&config, &temp.0, &mut notes)?;
    let mut runs = Vec::new();
    for file in files {
        let build = |probe| {
            let mut options = vec![BuildOption::BaseDir(
                config.base_dir.to_string_lossy().as_ref().into(),
            )];
            if probe {
                options.push(BuildOption::LearningBuckets(0));
            }
            plugin.construct(&instance_json(&config, &file.scoring_copy), options)
        };
        match (build(false), build(true)) {
            (Ok(scoring), Ok(probe)) => runs.push(RuleRun {
                threshold: args.threshold.unwrap_or(file.threshold),
                file,
                scoring,
                probe,
                job_id: String::new(),
                function: String::new(),
                seen_times: Vec::new(),
                points: Vec::new(),
                flagged_lines: Vec::new(),
                top: HashMap::new(),
                learning_end_ms: None,
                countries: Vec::new(),
                bytes: Vec::new(),
            }),
            (Err(e), _) | (_, Err(e)) => {
                notes.push(format!(
                    "rule {} ({}) cannot run: {e}",
                    file.name, file.rule_id
                ));
            }
        }
    }
    if runs.is_empty() {
        bail!(
            "no machine-learning rule in the configured rules can run{}",
            notes
                .iter()
                .map(|n| format!("\n  - {n}"))
                .collect::<String>()
        );
    }

    let records = &inputs.records;
    let labels_ref = labels.as_ref();
    let mut best: HashMap<usize, (f64, String)> = HashMap::new();
    let batch = config.batch.max_events.max(1);
    let mut progress = Progress::new(records.len());
    for (chunk_no, chunk) in records.chunks(batch).enumerate() {
        let base = chunk_no * batch;
        let texts: Vec<RStr<'_>> = chunk.iter().map(|r| RStr::from_str(&r.json)).collect();
        for run in &mut runs {
            process_chunk(run, &texts, chunk, base, labels_ref, &mut best)?;
        }
        progress.update(base + chunk.len());
    }
    progress.finish();

    // Flagged events, once each, in time order.
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    let flagged_path = args.out_dir.join("flagged.ndjson");
    let mut flagged_out = std::io::BufWriter::new(
        std::fs::File::create(&flagged_path)
            .with_context(|| format!("creating {}", flagged_path.display()))?,
    );
    let mut order: Vec<&usize> = best.keys().collect();
    order.sort();
    for idx in &order {
        writeln!(flagged_out, "{}", best[idx].1)?;
    }
    flagged_out.flush()?;

    let span_ms = records
        .first()
        .zip(records.last())
        .map(|(a, b)| (a.time_ms, b.time_ms));
    let days = span_ms.map_or(0, |(a, b)| {
        (b.div_euclid(time::DAY_MS) - a.div_euclid(time::DAY_MS) + 1) as u64
    });
    let mut report = ReplayReport {
        inputs: inputs.described.clone(),
        events: records.len() as u64,
        span_ms,
        days,
        notes,
        ..ReplayReport::default()
    };

    // Quality, with the baselines on the events the matching jobs read.
    if let Some(labels) = &labels {
        let daysf = days as f64;
        let mut rows = Vec::new();
        for run in &runs {
            rows.push(quality::score(
                &run.file.name,
                &run.flagged_lines,
                labels,
                daysf,
            ));
        }
        let mut any: Vec<u64> = runs.iter().flat_map(|r| r.flagged_lines.clone()).collect();
        any.sort_unstable();
        any.dedup();
        if runs.len() > 1 {
            rows.push(quality::score("egresswatch, any rule", &any, labels, daysf));
        }
        let warmup = |run: &RuleRun| run.learning_end_ms.unwrap_or(i64::MAX);
        if let Some(run) = runs
            .iter()
            .find(|r| r.function == "rare" && r.job_id.contains("country"))
        {
            let flagged =
                quality::baseline_new_country(&run.countries, args.baseline_days, warmup(run));
            rows.push(quality::score(
                &format!("baseline: country not seen in {} days", args.baseline_days),
                &flagged,
                labels,
                daysf,
            ));
        }
        if let Some(run) = runs
            .iter()
            .find(|r| r.function == "high_sum" && r.job_id.contains("destination_ip"))
        {
            let flagged = quality::baseline_bytes(
                &run.bytes,
                BYTES_BUCKET_MS,
                args.baseline_bytes,
                warmup(run),
            );
            rows.push(quality::score(
                &format!(
                    "baseline: >= {} per destination.ip per 3h",
                    human_bytes(args.baseline_bytes)
                ),
                &flagged,
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

    for run in runs {
        let per_day = run.flagged_lines.len() as f64 / (days.max(1) as f64);
        let mut top: Vec<TopValue> = run.top.into_values().collect();
        top.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then(b.max_score.total_cmp(&a.max_score))
                .then(a.value.cmp(&b.value))
        });
        top.truncate(TOP_VALUES);
        report.rules.push(RuleSummary {
            rule_id: run.file.rule_id,
            name: run.file.name,
            job_id: run.job_id,
            threshold: run.threshold,
            seen: run.seen_times.len() as u64,
            scored: run.points.len() as u64,
            flagged: run.flagged_lines.len() as u64,
            per_day,
            top,
            points: run.points,
            seen_times: run.seen_times,
            learning_end_ms: run.learning_end_ms,
        });
    }

    let html_path = args.out_dir.join("report.html");
    std::fs::write(&html_path, report::html(&report))
        .with_context(|| format!("writing {}", html_path.display()))?;
    out.write_all(report::summary_text(&report).as_bytes())?;
    writeln!(
        out,
        "\nwrote {} flagged event(s) to {} and the report to {}",
        order.len(),
        flagged_path.display(),
        html_path.display()
    )?;
    Ok(Outcome {
        report,
        flagged_events: order.len() as u64,
    })
}

fn human_bytes(b: f64) -> String {
    for (unit, size) in [("GB", 1e9), ("MB", 1e6), ("kB", 1e3)] {
        if b >= size {
            return format!("{} {unit}", (b / size * 10.0).round() / 10.0);
        }
    }
    format!("{b} B")
}

/// Runs one chunk through one rule's two instances and records what they said.
fn process_chunk(
    run: &mut RuleRun,
    texts: &[RStr<'_>],
    chunk: &[Record],
    base: usize,
    labels: Option<&Labels>,
    best: &mut HashMap<usize, (f64, String)>,
) -> Result<()> {
    let probe = run
        .probe
        .process(texts.into(), time::now_ms())
        .into_result()
        .map_err(|e| anyhow::anyhow!("plugin failed on a batch: {e}"))?;
    for (record, verdict) in chunk.iter().zip(probe.iter()) {
        let ROption::RSome(text) = &verdict.replacement else {
            continue;
        };
        let Ok(event) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        run.seen_times.push(record.time_ms);
        if run.job_id.is_empty() {
            if let Some(Value::String(job)) = get_path(&event, "egresswatch.job_id") {
                run.job_id = job.clone();
            }
        }
        if let Some(Value::String(country)) = get_path(&event, "destination.geo.country_name") {
            run.countries.push(CountryEvent {
                time_ms: record.time_ms,
                line: record.line,
                country: country.clone(),
            });
        }
        let dest = get_path(&event, "destination.ip").and_then(Value::as_str);
        let bytes = get_path(&event, "source.bytes").and_then(Value::as_f64);
        if let (Some(dest), Some(bytes)) = (dest, bytes) {
            run.bytes.push(BytesEvent {
                time_ms: record.time_ms,
                line: record.line,
                destination: dest.to_owned(),
                bytes,
            });
        }
    }
    let scoring = run
        .scoring
        .process(texts.into(), time::now_ms())
        .into_result()
        .map_err(|e| anyhow::anyhow!("plugin failed on a batch: {e}"))?;
    for (i, (record, verdict)) in chunk.iter().zip(scoring.iter()).enumerate() {
        let ROption::RSome(text) = &verdict.replacement else {
            continue;
        };
        let Ok(mut event) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        let Some(score) = get_path(&event, "egresswatch.score").and_then(Value::as_f64) else {
            continue;
        };
        if run.function.is_empty() {
            let text_at = |p: &str| get_path(&event, p).map(value_text).unwrap_or_default();
            run.job_id = text_at("egresswatch.job_id");
            run.function = text_at("egresswatch.function");
        }
        run.learning_end_ms.get_or_insert(record.time_ms);
        let flagged = score >= run.threshold;
        let attack = labels.is_some_and(|l| l.by_line.contains_key(&record.line));
        run.points.push(Point {
            time_ms: record.time_ms,
            score,
            flagged,
            attack,
        });
        if !flagged {
            continue;
        }
        run.flagged_lines.push(record.line);
        let field = subject_field(&run.job_id);
        let value = get_path(&event, field).map(value_text).unwrap_or_default();
        let reason = get_path(&event, "egresswatch.reason")
            .map(value_text)
            .unwrap_or_default();
        let top = run.top.entry(value.clone()).or_insert_with(|| TopValue {
            field: field.to_owned(),
            value,
            count: 0,
            max_score: f64::MIN,
            reason: String::new(),
        });
        top.count += 1;
        if score > top.max_score {
            top.max_score = score;
            top.reason = reason;
        }
        let idx = base + i;
        if best.get(&idx).is_none_or(|(s, _)| score > *s) {
            presets::set_path(
                &mut event,
                "egresswatch.anomaly_threshold",
                if run.threshold.fract() == 0.0 {
                    Value::from(run.threshold as i64)
                } else {
                    serde_json::Number::from_f64(run.threshold).map_or(Value::Null, Value::Number)
                },
            );
            best.insert(idx, (score, event.to_string()));
        }
    }
    Ok(())
}

/// A progress bar on standard error, drawn only when it is a terminal.
struct Progress {
    total: usize,
    shown: Option<usize>,
    enabled: bool,
}

impl Progress {
    fn new(total: usize) -> Progress {
        Progress {
            total,
            shown: None,
            enabled: std::io::stderr().is_terminal() && total > 0,
        }
    }

    fn update(&mut self, done: usize) {
        if !self.enabled {
            return;
        }
        let pct = done * 100 / self.total;
        if self.shown == Some(pct) {
            return;
        }
        self.shown = Some(pct);
        let filled = pct * 30 / 100;
        eprint!(
            "\rreplay [{}{}] {pct:3}% {done}/{} events",
            "#".repeat(filled),
            ".".repeat(30 - filled),
            self.total
        );
        let _ = std::io::stderr().flush();
    }

    fn finish(&self) {
        if self.enabled {
            eprintln!();
        }
    }
}
