//! [`Detector`]: events in, verdicts out.
//!
//! Construction loads the rules, resolves each supported rule's jobs in the catalog, builds one
//! model per job, and opens the GeoIP database. Per event: parse, enrich the destination's
//! country when it is missing, let every job whose filters the event passes score it, and flag
//! it when a score reaches a rule's `anomaly_threshold` after the job's learning period. A
//! flagged event gets its rule's action: alert fields, a route, or both. An event nothing flags
//! passes unchanged; the host then writes its original bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use egresswatch_plugin_api::{ErrorKind, PluginError, ScoreRecord, Verdict};

use crate::alert::{self, AlertFields, RuleTexts};
use crate::catalog::{BoundJob, JobDef, SharedFilters};
use crate::check::RuleSet;
use crate::config::{Action, BuildOptions, DetectorConfig, Problem};
use crate::fields::{Collision, Event, FieldId, Scanner, Schema, SchemaBuilder};
use crate::geo::{GeoCache, GeoDb};
use crate::models::{Model, Scored};
use crate::net::{self, CidrSet};
use crate::rules::Rule;
use crate::suppression::{AlertRef, Episodes};
use crate::time::TimeMemo;

use egresswatch_common::names::fields::{
    DESTINATION_COUNTRY_ISO_CODE as DESTINATION_COUNTRY_ISO, DESTINATION_COUNTRY_NAME,
    DESTINATION_IP,
};

mod jobs;
mod metrics;
mod saved;
mod scoring;
mod state;
#[cfg(test)]
mod tests;
mod threads;

use jobs::build_jobs;
use scoring::{alert_detail, enrich, expected_fields, geo_warnings, score, Owned, Scoring};
pub use state::LoadReport;
use threads::{Helpers, MIN_SHARED};

/// Events read with none qualifying for any job before the detector says so, once.
const NO_QUALIFYING_WARNING_AFTER: u64 = 10_000;

/// Version of the saved-state layout written by [`Detector::save_state_to`] (4: the models
/// first, their sizes in an index at the end, so that a save streams). States of version 3 are
/// still read; older ones are refused and the models relearn.
pub const STATE_FORMAT_VERSION: u32 = 4;

/// The detector: rules, jobs with their models, enrichment, and counters.
pub struct Detector {
    config: DetectorConfig,
    options: BuildOptions,
    jobs: Vec<ActiveJob>,
    /// The filters several jobs have, checked once per event.
    shared_filters: SharedFilters,
    geo: Option<GeoCache>,
    allow: CidrSet,
    /// The fields the jobs and the detector read from every event.
    schema: Arc<Schema>,
    /// The scan stage: taken out while a batch is evaluated (so that it can lend its records
    /// while the rest of the detector judges them), built again if a panic lost it.
    stage: Option<Box<Stage>>,
    /// Threads a batch is evaluated on ([`crate::config::Threads`], resolved).
    threads: usize,
    /// The fields the detector itself reads.
    fixed: FixedFields,
    /// The fields alerts write.
    alert_fields: AlertFields,
    metrics: Metrics,
    /// What loading skipped (unsupported rules, unknown jobs), for the host to report.
    warnings: Vec<String>,
    /// Score records of the current batch, when asked for ([`BuildOptions::score_records`]).
    scores: Option<Vec<ScoreRecord>>,
    /// Index in its batch of the event being evaluated, for its score records.
    event_index: u32,
    /// The hour of the last event time read ([`crate::time`]).
    time: TimeMemo,
    /// Key texts of the job being scored that the event does not hold as they are
    /// ([`scoring`]'s `Owned`).
    owned: Owned,
}

/// Reads the wanted fields from events: on the calling thread, and with helpers once a batch
/// large enough to share them has been seen ([`threads`]).
struct Stage {
    scanner: Scanner,
    helpers: Option<Helpers>,
}

impl Stage {
    fn new(schema: &Arc<Schema>) -> Box<Self> {
        Box::new(Stage {
            scanner: Scanner::new(Arc::clone(schema)),
            helpers: None,
        })
    }
}

/// The fields the detector reads besides the jobs' own.
struct FixedFields {
    time: FieldId,
    destination_ip: FieldId,
    country_iso: FieldId,
    country_name: FieldId,
}

/// A job some supported rule uses, its model, and the rules that read its scores.
struct ActiveJob {
    def: JobDef,
    /// The job's fields, resolved for the scanner.
    bound: BoundJob,
    /// Which of by, over and partition hold an address (`*.ip`): keyed by the address, not
    /// by its text, so that one destination written two ways is one entity.
    addresses: [bool; 3],
    model: Box<dyn Model>,
    rules: Vec<ActiveRule>,
    scored: u64,
}

/// A supported rule as applied to one job's scores.
struct ActiveRule {
    rule: Arc<Rule>,
    /// The rule's part of every alert, serialised once.
    texts: RuleTexts,
    threshold: f64,
    action: Action,
    /// Open alert episodes, by key ([`crate::suppression`]).
    episodes: Episodes,
    flagged: u64,
    /// Flagged events that followed an alert (not new alerts).
    suppressed: u64,
}

/// Counters kept by the detector.
#[derive(Debug, Default)]
struct Metrics {
    events: u64,
    unreadable: u64,
    enriched: u64,
    flagged: u64,
    /// Flagged events that followed an alert of the same rule and key.
    suppressed: u64,
    annotate_failures: u64,
    /// Events at least one job qualified.
    qualified: u64,
    /// Parts of alerts that could not be written, by field and reason.
    annotation_failures: BTreeMap<(&'static str, &'static str), u64>,
}

/// The best (highest-scoring) rule that fired on an event.
struct Hit {
    job: usize,
    rule: usize,
    scored: Scored,
    field: String,
    value: String,
    /// The alert the event is, or belongs to.
    alert: AlertRef,
}

impl Detector {
    /// Builds a detector from its configuration as JSON text, with default options.
    pub fn from_json(text: &str) -> Result<Self, PluginError> {
        Self::build(text, BuildOptions::default())
    }

    /// Builds a detector from its configuration as JSON text and construction options. This is
    /// the entry point every face of the plugin uses (the ABI's constructor, tests, benches).
    pub fn build(text: &str, options: BuildOptions) -> Result<Self, PluginError> {
        let (config, unknown) = DetectorConfig::parse(text).map_err(PluginError::config)?;
        Self::construct(config, options, unknown)
    }

    /// Builds a detector with default options (hash seed 0): for tests and benchmarks.
    pub fn new(config: DetectorConfig) -> Result<Self, PluginError> {
        Self::with_options(config, BuildOptions::default())
    }

    /// Builds a detector: loads the rules, the catalog, the models and the GeoIP database.
    /// Every problem with the configuration is collected before anything is refused.
    pub fn with_options(
        config: DetectorConfig,
        options: BuildOptions,
    ) -> Result<Self, PluginError> {
        Self::construct(config, options, Vec::new())
    }

    /// [`Detector::with_options`], with problems found earlier (unknown keys) reported along.
    fn construct(
        config: DetectorConfig,
        options: BuildOptions,
        mut problems: Vec<Problem>,
    ) -> Result<Self, PluginError> {
        let set = RuleSet::load(&config, &options);
        problems.extend(config.validate(&set, &options));
        let geo = match (&config.geoip.database, config.geoip.enabled) {
            (_, false) => None,
            (Some(path), true) => match GeoDb::open(options.resolve(path)) {
                Ok(db) => Some(db),
                Err(e) => {
                    problems.push(("geoip.database".to_owned(), e.to_string()));
                    None
                }
            },
            (None, true) => match GeoDb::bundled() {
                Ok(db) => Some(db),
                Err(e) => {
                    problems.push(("geoip".to_owned(), e.to_string()));
                    None
                }
            },
        }
        .map(|db| GeoCache::new(Arc::new(db), config.geoip.cache_entries));
        let allow = net::parse_cidr_list(&config.allow_destinations).unwrap_or_default();
        if !problems.is_empty() {
            return Err(PluginError::config(problems));
        }
        let mut schema = SchemaBuilder::new();
        let mut jobs = build_jobs(&config, &options, &set, &mut schema)?;
        let shared_filters = SharedFilters::share(jobs.iter_mut().map(|j| &mut j.bound));
        let fixed = FixedFields {
            time: schema.field(&config.time_field),
            destination_ip: schema.field(DESTINATION_IP),
            country_iso: schema.field(DESTINATION_COUNTRY_ISO),
            country_name: schema.field(DESTINATION_COUNTRY_NAME),
        };
        let geo_warnings = geo_warnings(&jobs, geo.as_ref());
        let alert_fields =
            AlertFields::register(&mut schema, fixed.country_name, fixed.country_iso);
        let schema = schema
            .build()
            .map_err(|e| PluginError::new(ErrorKind::Config, format!("detector: {e}")))?;
        let schema = Arc::new(schema);
        let threads_warning = config.threads.oversubscribed();
        Ok(Detector {
            stage: Some(Stage::new(&schema)),
            schema,
            threads: config.threads.resolve(),
            fixed,
            alert_fields,
            config,
            scores: options.score_records.then(Vec::new),
            options,
            jobs,
            shared_filters,
            geo,
            allow,
            metrics: Metrics::default(),
            warnings: set
                .warnings
                .into_iter()
                .chain(geo_warnings)
                .chain(threads_warning)
                .collect(),
            event_index: 0,
            time: TimeMemo::default(),
            owned: Owned::default(),
        })
    }

    /// A scanner for the fields this detector reads (for measuring the scanner alone).
    pub fn scanner(&self) -> Scanner {
        Scanner::new(Arc::clone(&self.schema))
    }

    /// The configuration this detector was built from.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Evaluates a batch of events at the host's clock time `now_ms`: one verdict per event,
    /// in order. With [`BuildOptions::score_records`], the batch's score records are kept for
    /// [`Detector::take_scores`].
    ///
    /// With more than one thread configured (`threads`), a batch of at least [`MIN_SHARED`]
    /// events is scanned by helper threads ahead of the calling thread, which judges the
    /// events in order ([`threads`]): the verdicts, scores and state are those of one thread.
    pub fn process<'a>(
        &mut self,
        events: impl IntoIterator<Item = &'a str>,
        now_ms: i64,
    ) -> Vec<Verdict> {
        if let Some(scores) = &mut self.scores {
            scores.clear();
        }
        let mut stage = self.take_stage();
        let events = events.into_iter();
        let mut verdicts = Vec::with_capacity(events.size_hint().0);
        if self.threads > 1 && events.size_hint().0 >= MIN_SHARED {
            let lines: Vec<&str> = events.collect();
            if stage.helpers.is_none() {
                match Helpers::start(self.threads - 1, &self.schema) {
                    Ok(helpers) => stage.helpers = Some(helpers),
                    Err(e) => {
                        // Evaluated on this thread alone from now on; said once.
                        self.warnings.push(format!("{e}; evaluating on one thread"));
                        self.threads = 1;
                    }
                }
            }
            let Stage { scanner, helpers } = &mut *stage;
            let schema = Arc::clone(&self.schema);
            let schema = &*schema;
            match helpers {
                Some(helpers) => helpers.run(scanner, &lines, |i, line, record| {
                    self.event_index = u32::try_from(i).unwrap_or(u32::MAX);
                    let mut event = record.event(line, schema);
                    self.decide_into(&mut verdicts, line, event.as_mut().ok(), now_ms);
                }),
                None => {
                    for (i, line) in lines.into_iter().enumerate() {
                        self.event_index = u32::try_from(i).unwrap_or(u32::MAX);
                        let mut event = scanner.scan(line);
                        self.decide_into(&mut verdicts, line, event.as_mut().ok(), now_ms);
                    }
                }
            }
        } else {
            for (i, line) in events.enumerate() {
                self.event_index = u32::try_from(i).unwrap_or(u32::MAX);
                let mut event = stage.scanner.scan(line);
                self.decide_into(&mut verdicts, line, event.as_mut().ok(), now_ms);
            }
        }
        self.stage = Some(stage);
        verdicts
    }

    /// The scan stage, taken out of the detector until put back; a new one when a panic lost
    /// the last (its helpers, if it had any, are gone with it).
    fn take_stage(&mut self) -> Box<Stage> {
        self.stage
            .take()
            .unwrap_or_else(|| Stage::new(&self.schema))
    }

    /// The score records of the last [`Detector::process`] call (empty unless built with
    /// [`BuildOptions::score_records`]).
    pub fn take_scores(&mut self) -> Vec<ScoreRecord> {
        self.scores.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Evaluates one event, a raw line without terminator, at the host's clock time `now_ms`
    /// (used for events without a readable time, and to distrust times far ahead of it).
    ///
    /// Only the fields the jobs read are scanned; the event is parsed in full only when it is
    /// flagged and its action annotates it.
    pub fn evaluate(&mut self, line: &str, now_ms: i64) -> Verdict {
        self.judge(line, now_ms, None).0
    }

    /// [`Detector::evaluate`], with the alert of a flagged event that its action annotates
    /// pushed to `alert` as fields (path, JSON value: see [`alert::fields`]) instead of being
    /// inserted into the line: for faces that hold the event as a structure (the C face).
    /// Also says whether a rule flagged the event.
    pub fn evaluate_to_fields(
        &mut self,
        line: &str,
        now_ms: i64,
        alert: &mut Vec<(&'static str, String)>,
    ) -> (Verdict, bool) {
        self.judge(line, now_ms, Some(alert))
    }

    /// Evaluates one event; the alert goes into the line, or to `set` when given. True when a
    /// rule flagged it.
    fn judge(
        &mut self,
        line: &str,
        now_ms: i64,
        set: Option<&mut Vec<(&'static str, String)>>,
    ) -> (Verdict, bool) {
        let mut stage = self.take_stage();
        let mut event = stage.scanner.scan(line);
        let mut verdict = Verdict::PASS;
        let flagged = self.decide(line, event.as_mut().ok(), now_ms, set, &mut verdict);
        self.stage = Some(stage);
        (verdict, flagged)
    }

    /// [`Detector::decide`] for a batch: the verdict is pushed as a pass and written in place
    /// when the event is unreadable or flagged, not returned and copied into `verdicts`.
    #[inline(always)]
    fn decide_into(
        &mut self,
        verdicts: &mut Vec<Verdict>,
        line: &str,
        event: Option<&mut Event<'_>>,
        now_ms: i64,
    ) {
        verdicts.push(Verdict::PASS);
        // Always `Some`: the verdict was just pushed.
        if let Some(verdict) = verdicts.last_mut() {
            self.decide(line, event, now_ms, None, verdict);
        }
    }

    /// Judges one scanned event of `line` (`None`: the line is unreadable): enrichment,
    /// scores, the verdict, written into `verdict` (a pass until then) when the event is
    /// unreadable or flagged. True when a rule flagged it. `verdict` must be
    /// [`Verdict::PASS`] on entry: a passed event leaves it as it is.
    ///
    /// `#[inline(never)]`, one copy for every caller, and the event by reference: inlined into
    /// the loops of [`Detector::process`], or made generic over how the event is scanned, the
    /// scoring it calls was no longer inlined into it (instructions per event: 50 to 90 more,
    /// callgrind bench).
    #[inline(never)]
    fn decide(
        &mut self,
        line: &str,
        event: Option<&mut Event<'_>>,
        now_ms: i64,
        set: Option<&mut Vec<(&'static str, String)>>,
        verdict: &mut Verdict,
    ) -> bool {
        debug_assert_eq!(*verdict, Verdict::PASS, "decide starts from a pass");
        self.metrics.events += 1;
        let Some(event) = event else {
            self.metrics.unreadable += 1;
            *verdict = Verdict::UNREADABLE;
            return false;
        };
        let country = enrich(self.geo.as_mut(), &self.fixed, event);
        if country.is_some() {
            self.metrics.enriched += 1;
        }
        let scoring = Scoring {
            allow: &self.allow,
            shared_filters: &self.shared_filters,
            fixed: &self.fixed,
            scores: self.scores.as_mut(),
            event_index: self.event_index,
            now: now_ms,
            time: &mut self.time,
            owned: &mut self.owned,
        };
        let (hit, qualified) = score(&mut self.jobs, scoring, event);
        if qualified {
            self.metrics.qualified += 1;
        } else if self.metrics.qualified == 0 && self.metrics.events == NO_QUALIFYING_WARNING_AFTER
        {
            self.warnings.push(format!(
                "{NO_QUALIFYING_WARNING_AFTER} events read and none qualified for any job; {}",
                expected_fields(&self.jobs)
            ));
        }
        let Some(hit) = hit else {
            return false;
        };
        self.metrics.flagged += 1;
        let job = &mut self.jobs[hit.job];
        let active = &mut job.rules[hit.rule];
        active.flagged += 1;
        if hit.alert.suppressed {
            self.metrics.suppressed += 1;
            active.suppressed += 1;
        }
        if active.action.annotate {
            let detail = alert_detail(&job.def, &job.bound, &hit);
            let mut text = String::new();
            let failures = match set {
                Some(set) => alert::fields(
                    event,
                    &self.alert_fields,
                    &active.texts,
                    &detail,
                    country,
                    set,
                ),
                None => alert::annotate(
                    event,
                    &self.alert_fields,
                    &active.texts,
                    &detail,
                    country,
                    &mut text,
                ),
            };
            // Whatever could not be written, the event stays an alert: counted and routed.
            if !failures.is_empty() {
                self.metrics.annotate_failures += 1;
            }
            for failure in failures {
                let reason = match failure.collision {
                    Collision::Exists => "exists",
                    Collision::Blocked => "blocked",
                };
                let count = self
                    .metrics
                    .annotation_failures
                    .entry((failure.field, reason))
                    .or_default();
                if *count == 0 {
                    self.warnings.push(format!(
                        "a flagged event could not take `{}` ({}); the alert went out with the \
                         rest of the detection (counted in \
                         egresswatch_detector_annotation_failures_total, said once per kind)",
                        failure.field,
                        match failure.collision {
                            Collision::Exists => "the event already has that field",
                            Collision::Blocked => "a parent path is not an object",
                        }
                    ));
                }
                *count += 1;
            }
            if text.len() > line.len() {
                verdict.replacement = Some(text.into()).into();
            }
        }
        if let Some(route) = &active.action.route {
            verdict.route = Some(route.as_str().into()).into();
        }
        true
    }

    /// Output names the configured actions route to.
    pub fn routes(&self) -> Vec<String> {
        let actions = &self.config.actions;
        let names: BTreeSet<&String> = std::iter::once(&actions.default)
            .chain(actions.rules.values())
            .filter_map(|a| a.route.as_ref())
            .collect();
        names.into_iter().cloned().collect()
    }

    /// What construction skipped or doubted (unsupported rules, unknown jobs).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}
