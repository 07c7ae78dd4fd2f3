//! [`Detector`]: events in, verdicts out.
//!
//! Construction loads the rules, resolves each supported rule's jobs in the catalog, builds one
//! model per job, and opens the GeoIP database. Per event: parse, enrich the destination's
//! country when it is missing, let every job whose filters the event passes score it, and flag
//! it when a score reaches a rule's `anomaly_threshold` after the job's learning period. A
//! flagged event gets its rule's action: alert fields, a route, or both. An event nothing flags
//! passes unchanged; the host then writes its original bytes.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use abi_stable::std_types::RVec;
use egresswatch_plugin_api::{
    ErrorKind, Label, Metric, MetricKind, PluginError, ScoreExtra, ScoreRecord, Verdict,
};
use serde::{Deserialize, Serialize};

use crate::alert::{self, AlertDetail, AlertFields, RuleTexts};
use crate::catalog::{BoundJob, Function, JobDef};
use crate::check::RuleSet;
use crate::config::{Action, BuildOptions, DetectorConfig, Problem};
use crate::fields::{Collision, Event, FieldId, Scanner, SchemaBuilder};
use crate::geo::{self, GeoCache, GeoDb};
use crate::models::{self, ExtraValue, Model, Observation, Scored};
use crate::net::{self, CidrSet};
use crate::rules::Rule;
use crate::suppression::{AlertRef, Episodes, SavedEpisodes};

use egresswatch_common::names::fields::{
    DESTINATION_COUNTRY_ISO_CODE as DESTINATION_COUNTRY_ISO, DESTINATION_COUNTRY_NAME,
    DESTINATION_IP,
};
use egresswatch_common::names::DEFAULT_ANOMALY_THRESHOLD;

/// Events read with none qualifying for any job before the detector says so, once.
const NO_QUALIFYING_WARNING_AFTER: u64 = 10_000;

/// Version of the saved-state envelope written by [`Detector::save_state`].
pub const STATE_FORMAT_VERSION: u32 = 2;

/// The detector: rules, jobs with their models, enrichment, and counters.
pub struct Detector {
    config: DetectorConfig,
    options: BuildOptions,
    jobs: Vec<ActiveJob>,
    geo: Option<GeoCache>,
    allow: CidrSet,
    /// Reads the fields the jobs need from every event.
    scanner: Scanner,
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

/// Saved state: one opaque blob per job, keyed by job id so that a changed rule set keeps what
/// still applies; and each rule's open alert episodes, keyed by job and rule id, so that a
/// restart does not raise a second alert for an episode already alerted.
#[derive(Serialize, Deserialize)]
struct SavedState {
    format: u32,
    jobs: Vec<(String, Vec<u8>)>,
    alerts: Vec<(String, String, SavedEpisodes)>,
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
        let jobs = build_jobs(&config, &options, &set, &mut schema)?;
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
        Ok(Detector {
            scanner: Scanner::new(Arc::new(schema)),
            fixed,
            alert_fields,
            config,
            scores: options.score_records.then(Vec::new),
            options,
            jobs,
            geo,
            allow,
            metrics: Metrics::default(),
            warnings: set.warnings.into_iter().chain(geo_warnings).collect(),
            event_index: 0,
        })
    }

    /// A scanner for the fields this detector reads (for measuring the scanner alone).
    pub fn scanner(&self) -> Scanner {
        Scanner::new(Arc::clone(self.scanner.schema()))
    }

    /// The configuration this detector was built from.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Evaluates a batch of events at the host's clock time `now_ms`: one verdict per event,
    /// in order. With [`BuildOptions::score_records`], the batch's score records are kept for
    /// [`Detector::take_scores`].
    pub fn process<'a>(
        &mut self,
        events: impl IntoIterator<Item = &'a str>,
        now_ms: i64,
    ) -> Vec<Verdict> {
        if let Some(scores) = &mut self.scores {
            scores.clear();
        }
        let events = events.into_iter();
        let mut verdicts = Vec::with_capacity(events.size_hint().0);
        for (i, line) in events.enumerate() {
            self.event_index = u32::try_from(i).unwrap_or(u32::MAX);
            verdicts.push(self.evaluate(line, now_ms));
        }
        verdicts
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
        self.metrics.events += 1;
        let Ok(mut event) = self.scanner.scan(line) else {
            self.metrics.unreadable += 1;
            return (Verdict::UNREADABLE, false);
        };
        let country = enrich(self.geo.as_mut(), &self.fixed, &mut event);
        if country.is_some() {
            self.metrics.enriched += 1;
        }
        let scoring = Scoring {
            allow: &self.allow,
            fixed: &self.fixed,
            scores: self.scores.as_mut(),
            event_index: self.event_index,
            now: now_ms,
        };
        let (hit, qualified) = score(&mut self.jobs, scoring, &event);
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
            return (Verdict::PASS, false);
        };
        self.metrics.flagged += 1;
        let job = &mut self.jobs[hit.job];
        let active = &mut job.rules[hit.rule];
        active.flagged += 1;
        if hit.alert.suppressed {
            self.metrics.suppressed += 1;
            active.suppressed += 1;
        }
        let mut verdict = Verdict::PASS;
        if active.action.annotate {
            let detail = alert_detail(&job.def, &job.bound, &hit);
            let mut text = String::new();
            let failures = match set {
                Some(set) => alert::fields(
                    &event,
                    &self.alert_fields,
                    &active.texts,
                    &detail,
                    country,
                    set,
                ),
                None => alert::annotate(
                    &event,
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
        (verdict, true)
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

    /// The counters, per job and per rule, as typed metrics (the names are ours; the host
    /// renders them without knowing them).
    pub fn metrics(&self) -> Vec<Metric> {
        let mut out = MetricSet::default();
        let m = &self.metrics;
        for (name, help, value) in [
            (
                "egresswatch_detector_events_total",
                "Events the detector evaluated.",
                m.events,
            ),
            (
                "egresswatch_detector_unreadable_total",
                "Events that were not JSON objects.",
                m.unreadable,
            ),
            (
                "egresswatch_detector_enriched_total",
                "Events given a destination country from GeoIP.",
                m.enriched,
            ),
            (
                "egresswatch_detector_flagged_total",
                "Events some rule flagged.",
                m.flagged,
            ),
            (
                "egresswatch_detector_suppressed_total",
                "Flagged events that followed an alert of the same rule and key (not new alerts).",
                m.suppressed,
            ),
            (
                "egresswatch_detector_annotate_failures_total",
                "Flagged events that could not take the alert fields.",
                m.annotate_failures,
            ),
        ] {
            out.counter(name, help, &[], value);
        }
        for ((field, reason), value) in &m.annotation_failures {
            out.counter(
                "egresswatch_detector_annotation_failures_total",
                "Parts of alerts that could not be written on the event, by field and reason.",
                &[("field", field), ("reason", reason)],
                *value,
            );
        }
        for job in &self.jobs {
            let status = job.model.status();
            let labels = [("job_id", job.def.id.as_str())];
            out.gauge(
                "egresswatch_job_learning",
                "1 while the job's model is still learning.",
                &labels,
                u64::from(status.learning),
            );
            out.gauge(
                "egresswatch_job_buckets_seen",
                "Buckets with data the job has seen.",
                &labels,
                status.buckets_seen,
            );
            out.gauge(
                "egresswatch_job_learning_buckets",
                "Buckets the job needs before it may flag.",
                &labels,
                status.learning_buckets,
            );
            out.counter(
                "egresswatch_job_scored_total",
                "Events the job scored (since start).",
                &labels,
                job.scored,
            );
            out.gauge(
                "egresswatch_job_tracked_entities",
                "Established entities the job tracks.",
                &labels,
                status.tracked_entities as u64,
            );
            out.gauge(
                "egresswatch_job_probationary_entities",
                "New entities on probation.",
                &labels,
                status.probationary_entities as u64,
            );
            out.gauge(
                "egresswatch_job_state_bytes",
                "Approximate memory of the job's model state.",
                &labels,
                status.approx_bytes as u64,
            );
            out.counter(
                "egresswatch_job_evictions_total",
                "Entities evicted to stay under max_entities.",
                &labels,
                status.evictions,
            );
            out.counter(
                "egresswatch_job_far_late_events_total",
                "Events older than the lateness window (scored, not learned).",
                &labels,
                status.far_late_events,
            );
            out.counter(
                "egresswatch_job_future_events_total",
                "Events whose time was not believed (ahead of the host clock or of the other \
                 events): counted into the current bucket, never moving the model clock.",
                &labels,
                status.future_events,
            );
            for r in &job.rules {
                let labels = [
                    ("job_id", job.def.id.as_str()),
                    ("rule_id", r.rule.rule_id.as_str()),
                    ("rule", r.rule.name.as_str()),
                ];
                out.counter(
                    "egresswatch_rule_flagged_total",
                    "Events each rule flagged (since start).",
                    &labels,
                    r.flagged,
                );
                out.counter(
                    "egresswatch_rule_suppressed_total",
                    "Flagged events that followed an alert of the rule (since start): flagged \
                     minus suppressed is the rule's alerts.",
                    &labels,
                    r.suppressed,
                );
            }
        }
        if let Some(cache) = &self.geo {
            let stats = cache.stats();
            out.counter(
                "egresswatch_geoip_cache_hits_total",
                "GeoIP lookups answered by the cache.",
                &[],
                stats.hits,
            );
            out.counter(
                "egresswatch_geoip_cache_misses_total",
                "GeoIP lookups that read the database.",
                &[],
                stats.misses,
            );
        }
        out.0
    }

    /// Serialises every job's model state, with a format version.
    pub fn save_state(&self) -> Result<Vec<u8>, PluginError> {
        let mut jobs = Vec::with_capacity(self.jobs.len());
        for job in &self.jobs {
            let bytes = job.model.save().map_err(|e| {
                PluginError::new(ErrorKind::State, format!("saving job {}: {e}", job.def.id))
            })?;
            jobs.push((job.def.id.clone(), bytes));
        }
        let alerts = self
            .jobs
            .iter()
            .flat_map(|job| {
                job.rules.iter().map(|r| {
                    let rule_id = r.rule.rule_id.clone();
                    (job.def.id.clone(), rule_id, r.episodes.save())
                })
            })
            .collect();
        postcard::to_allocvec(&SavedState {
            format: STATE_FORMAT_VERSION,
            jobs,
            alerts,
        })
        .map_err(|e| PluginError::new(ErrorKind::State, format!("encoding state: {e}")))
    }

    /// Restores model state saved by [`Detector::save_state`]. Jobs absent from the state keep
    /// learning from scratch; state of jobs no longer configured is ignored. Nothing changes
    /// when any part is unreadable.
    pub fn load_state(&mut self, state: &[u8]) -> Result<(), PluginError> {
        let saved: SavedState = postcard::from_bytes(state)
            .map_err(|e| PluginError::new(ErrorKind::State, format!("decoding state: {e}")))?;
        if saved.format != STATE_FORMAT_VERSION {
            return Err(PluginError::new(
                ErrorKind::State,
                format!(
                    "state format {} is not supported (this plugin reads {STATE_FORMAT_VERSION})",
                    saved.format
                ),
            ));
        }
        // Decode everything first into fresh models, so that a bad blob changes nothing.
        let mut fresh: Vec<(usize, Box<dyn Model>)> = Vec::new();
        for (id, bytes) in &saved.jobs {
            let Some(index) = self.jobs.iter().position(|j| &j.def.id == id) else {
                continue;
            };
            let job = &self.jobs[index];
            let thresholds = job.rules.iter().map(|r| (r.threshold, r.threshold));
            let range = thresholds.reduce(|a, b| (a.0.min(b.0), a.1.max(b.1)));
            let mut model = build_model(&job.def, &self.config, &self.options, range)
                .map_err(|e| PluginError::new(ErrorKind::State, format!("job {id}: {e}")))?;
            model
                .load(bytes)
                .map_err(|e| PluginError::new(ErrorKind::State, format!("job {id}: {e}")))?;
            fresh.push((index, model));
        }
        let mut episodes: Vec<(usize, usize, Episodes)> = Vec::new();
        for (job_id, rule_id, saved) in saved.alerts {
            let Some(j) = self.jobs.iter().position(|j| j.def.id == job_id) else {
                continue;
            };
            let Some(r) = self.jobs[j]
                .rules
                .iter()
                .position(|r| r.rule.rule_id == rule_id)
            else {
                continue;
            };
            let mut restored = self.jobs[j].rules[r].episodes.clone();
            restored.restore(saved).map_err(|e| {
                PluginError::new(
                    ErrorKind::State,
                    format!("alerts of rule {rule_id} (job {job_id}): {e}"),
                )
            })?;
            episodes.push((j, r, restored));
        }
        for (index, model) in fresh {
            self.jobs[index].model = model;
        }
        for (j, r, restored) in episodes {
            self.jobs[j].rules[r].episodes = restored;
        }
        Ok(())
    }
}

/// Fills `destination.geo.country_iso_code` / `country_name` when the name is missing;
/// returns the country it added, to be written on the event if it is annotated.
fn enrich(
    geo: Option<&mut GeoCache>,
    fixed: &FixedFields,
    event: &mut Event<'_>,
) -> Option<geo::Country> {
    if event.present(fixed.country_name) {
        return None;
    }
    let country = match event.str(fixed.country_iso) {
        Some(code) => geo::Country::from_iso_code(code),
        None => geo?.country(event.ip(fixed.destination_ip)?),
    }?;
    event.set(fixed.country_iso, country.iso_code());
    event.set(fixed.country_name, country.name());
    Some(country)
}

/// What scoring an event needs besides the jobs.
struct Scoring<'d> {
    allow: &'d CidrSet,
    fixed: &'d FixedFields,
    /// Score records of the batch, when the host asked for them.
    scores: Option<&'d mut Vec<ScoreRecord>>,
    /// Position of the event in its batch.
    event_index: u32,
    /// The host's clock.
    now: i64,
}

/// "the jobs expect: job (field, field), ...": what a user whose events never qualify should
/// check.
fn expected_fields(jobs: &[ActiveJob]) -> String {
    let list: Vec<String> = jobs
        .iter()
        .map(|job| {
            let mut fields: Vec<&str> = job.def.filters.iter().map(|f| f.field()).collect();
            for f in [&job.def.field_name, &job.def.by_field, &job.def.over_field]
                .into_iter()
                .flatten()
            {
                if !fields.contains(&f.as_str()) {
                    fields.push(f);
                }
            }
            format!("{} ({})", job.def.id, fields.join(", "))
        })
        .collect();
    format!("the jobs expect ECS fields: {}", list.join("; "))
}

/// A warning per job that reads a `destination.geo.*` field GeoIP enrichment cannot fill (it
/// adds the country only): such a job scores only events that carry the field themselves.
fn geo_warnings(jobs: &[ActiveJob], geo: Option<&GeoCache>) -> Vec<String> {
    let source = match geo {
        Some(cache) => format!("the GeoIP database ({})", cache.db().database_type()),
        None => "GeoIP (turned off)".to_owned(),
    };
    let fillable =
        |f: &str| geo.is_some() && (f == DESTINATION_COUNTRY_NAME || f == DESTINATION_COUNTRY_ISO);
    let mut out = Vec::new();
    for job in jobs {
        let def = &job.def;
        let fields = def.filters.iter().map(|f| f.field()).chain(
            [
                &def.field_name,
                &def.by_field,
                &def.over_field,
                &def.partition_field,
            ]
            .into_iter()
            .flatten()
            .map(String::as_str),
        );
        let mut seen = Vec::new();
        for field in fields {
            if field.starts_with("destination.geo.") && !fillable(field) && !seen.contains(&field) {
                seen.push(field);
                out.push(format!(
                    "job {} needs {field}, which {source} cannot fill: it scores only events \
                     that carry {field} themselves",
                    def.id
                ));
            }
        }
    }
    out
}

/// Lets every qualifying job score the event; returns the highest-scoring rule that fired, and
/// whether any job qualified the event.
fn score(jobs: &mut [ActiveJob], mut ctx: Scoring<'_>, event: &Event<'_>) -> (Option<Hit>, bool) {
    // Event time; the models' clocks decide how far ahead of the host's clock it is believed.
    let now = ctx.now;
    let time_ms = crate::time::epoch_ms(event, ctx.fixed.time).unwrap_or(now);
    let allowed = !ctx.allow.is_empty()
        && event
            .ip(ctx.fixed.destination_ip)
            .is_some_and(|ip| ctx.allow.contains(ip));
    if allowed {
        return (None, false);
    }
    let mut best: Option<Hit> = None;
    let mut qualified = false;
    for (j, job) in jobs.iter_mut().enumerate() {
        if !job.bound.qualifies(event) {
            continue;
        }
        qualified = true;
        let Some(obs) = Extracted::from_event(&job.bound, job.addresses, event) else {
            continue;
        };
        let Some(scored) = job.model.observe(&obs.observation(time_ms, now)) else {
            continue;
        };
        job.scored += 1;
        let key = [
            obs.by.as_deref(),
            obs.over.as_deref(),
            obs.partition.as_deref(),
        ];
        for (r, rule) in job.rules.iter_mut().enumerate() {
            // Every rule that flags the event places it among its own alerts.
            let alert = (!scored.learning && scored.score >= rule.threshold).then(|| {
                let span = scored.bucket_span_ms;
                rule.episodes
                    .place(&key, time_ms, scored.bucket_start_ms, span)
            });
            if let Some(scores) = ctx.scores.as_deref_mut() {
                scores.push(score_record(
                    ctx.event_index,
                    &job.def,
                    rule,
                    &scored,
                    &obs,
                    time_ms,
                    alert,
                ));
            }
            let better = best.as_ref().is_none_or(|b| scored.score > b.scored.score);
            if let (Some(alert), true) = (alert, better) {
                let (field, value) = obs.subject(&job.def);
                best = Some(Hit {
                    job: j,
                    rule: r,
                    scored,
                    field,
                    value,
                    alert,
                });
            }
        }
    }
    (best, qualified)
}

/// The values one job reads from an event, borrowed where the event holds strings.
struct Extracted<'a> {
    by: Option<Cow<'a, str>>,
    over: Option<Cow<'a, str>>,
    partition: Option<Cow<'a, str>>,
    value: f64,
}

impl<'a> Extracted<'a> {
    /// Reads the job's fields; `None` when a field the function needs is missing. A field
    /// marked in `addresses` that holds an IPv6 address is read in its canonical form, an
    /// IPv4-mapped one as the IPv4 address (`::FFFF:1.2.3.4` is `1.2.3.4`): the models key by
    /// the text, and one destination must not be two entities whose sums an attacker splits.
    /// An IPv4 address is already canonical as the address parser accepts it (no leading
    /// zeros), so only text with a colon is looked at.
    fn from_event(job: &BoundJob, addresses: [bool; 3], event: &'a Event<'_>) -> Option<Self> {
        let read = |field: Option<FieldId>, address: bool| match field {
            None => Ok(None),
            Some(id) => key_part(event, id, address).map(Some).ok_or(()),
        };
        let by = read(job.by, addresses[0]).ok()?;
        let over = read(job.over, addresses[1]).ok()?;
        let partition = read(job.partition, addresses[2]).ok()?;
        let value = match job.field_name {
            Some(id) => event.number(id)?,
            None => 1.0,
        };
        Some(Extracted {
            by,
            over,
            partition,
            value,
        })
    }

    fn observation(&self, time_ms: i64, arrival_ms: i64) -> Observation<'_> {
        Observation {
            time_ms,
            arrival_ms,
            by: self.by.as_deref(),
            over: self.over.as_deref(),
            partition: self.partition.as_deref(),
            value: self.value,
        }
    }

    /// The field and value an alert's reason talks about: the `by` value for rarity, the `over`
    /// entity for a sum.
    fn subject(&self, def: &JobDef) -> (String, String) {
        let pick = |field: &Option<String>, value: &Option<Cow<'a, str>>| {
            field.clone().zip(value.as_deref().map(str::to_owned))
        };
        match def.function {
            Function::Rare => {
                pick(&def.by_field, &self.by).or_else(|| pick(&def.over_field, &self.over))
            }
            _ => pick(&def.over_field, &self.over).or_else(|| pick(&def.by_field, &self.by)),
        }
        .unwrap_or_else(|| (def.id.clone(), String::new()))
    }
}

/// The text a model keys a field by (see [`Extracted::from_event`]); `None` when it is absent.
#[inline]
fn key_part<'a>(event: &'a Event<'_>, id: FieldId, address: bool) -> Option<Cow<'a, str>> {
    let text = event.key_text(id)?;
    // IPv6 text has a colon in its first five bytes, IPv4 text none: a short look for every
    // address, a parse only for IPv6 ones.
    if address && text.bytes().take(5).any(|b| b == b':') {
        if let Some(canonical) = canonical_v6(event, id) {
            return Some(canonical.into());
        }
    }
    Some(text)
}

/// The canonical text of an IPv6 address field, the IPv4 address for an IPv4-mapped one.
#[cold]
#[inline(never)]
fn canonical_v6(event: &Event<'_>, id: FieldId) -> Option<String> {
    match event.ip(id)? {
        IpAddr::V6(v6) => Some(match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        }),
        IpAddr::V4(_) => None,
    }
}

/// The alert fields' content for a hit.
fn alert_detail(def: &JobDef, bound: &BoundJob, hit: &Hit) -> AlertDetail {
    AlertDetail {
        job_id: def.id.clone(),
        function: def.function,
        score: (hit.scored.score * 10.0).round() / 10.0,
        bucket_start: hit.scored.bucket_start_ms.div_euclid(1000),
        actual: Some(hit.scored.actual),
        typical: Some(hit.scored.typical),
        influencers: def
            .influencers
            .iter()
            .cloned()
            .zip(bound.influencers.iter().copied())
            .collect(),
        reason: hit.scored.reason(&hit.field, &hit.value),
        extra: hit.scored.extra(),
        alert: Some(hit.alert),
    }
}

/// Builds one active job per job id that a supported rule names and the catalog has a model
/// for. The rule set has been validated: what is left to fail is internal.
fn build_jobs(
    config: &DetectorConfig,
    options: &BuildOptions,
    set: &RuleSet,
    schema: &mut SchemaBuilder,
) -> Result<Vec<ActiveJob>, PluginError> {
    let threshold_of = |rule: &Rule| {
        options.threshold.unwrap_or_else(|| {
            f64::from(rule.anomaly_threshold.unwrap_or(DEFAULT_ANOMALY_THRESHOLD))
        })
    };
    // Each job's models report an episode once, at the highest threshold of its rules, and
    // need not compute scores below the lowest.
    let mut thresholds: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for rule in set.load.supported() {
        for job_id in &rule.job_ids {
            let t = threshold_of(rule);
            let (low, high) = thresholds.entry(job_id.as_str()).or_insert((t, t));
            (*low, *high) = (low.min(t), high.max(t));
        }
    }
    let mut jobs: Vec<ActiveJob> = Vec::new();
    for rule in set.load.supported() {
        let threshold = threshold_of(rule);
        let rule = Arc::new(rule.clone());
        for job_id in &rule.job_ids {
            let Some(def) = set.catalog.get(job_id) else {
                continue;
            };
            if models::registration(def.function).is_none() {
                continue;
            }
            let index = match jobs.iter().position(|j| &j.def.id == job_id) {
                Some(index) => index,
                None => {
                    let range = thresholds.get(job_id.as_str()).copied();
                    let model = build_model(def, config, options, range).map_err(|e| {
                        PluginError::new(ErrorKind::Internal, format!("job {job_id}: {e}"))
                    })?;
                    let address = |field: &Option<String>| {
                        field
                            .as_deref()
                            .is_some_and(|f| f == "ip" || f.ends_with(".ip"))
                    };
                    jobs.push(ActiveJob {
                        bound: def.bind(schema),
                        addresses: [
                            address(&def.by_field),
                            address(&def.over_field),
                            address(&def.partition_field),
                        ],
                        def: def.clone(),
                        model,
                        rules: Vec::new(),
                        scored: 0,
                    });
                    jobs.len() - 1
                }
            };
            let action = config.actions.for_rule(&rule.rule_id).clone();
            jobs[index].rules.push(ActiveRule {
                texts: RuleTexts::new(&rule),
                episodes: Episodes::new(&rule.rule_id, action.suppress),
                rule: Arc::clone(&rule),
                threshold,
                action,
                flagged: 0,
                suppressed: 0,
            });
        }
    }
    Ok(jobs)
}

/// The model a job's function calls for (from the registry in [`crate::models`]), with the
/// configured settings and the options (see [`ModelSettings::tune`]). `thresholds`: the lowest
/// and highest threshold of the job's rules (the score floor, unless every score is recorded,
/// and the alert score).
fn build_model(
    def: &JobDef,
    config: &DetectorConfig,
    options: &BuildOptions,
    thresholds: Option<(f64, f64)>,
) -> Result<Box<dyn Model>, String> {
    let Some(model) = models::registration(def.function) else {
        return Err(format!("function `{}` has no model yet", def.function));
    };
    let mut settings = (model.defaults)();
    settings.bucket_span_secs =
        u32::try_from(def.bucket_span_secs).map_err(|_| "bucket_span too long".to_owned())?;
    config.models.tune(&def.id, &mut settings, options);
    if let Some((low, high)) = thresholds {
        settings.alert_score = high.clamp(f64::MIN_POSITIVE, 100.0);
        if !options.score_records {
            settings.score_floor = low.clamp(0.0, settings.alert_score);
        }
    }
    (model.build)(settings).map_err(|e| e.to_string())
}

/// The score record of one rule on one scored event. The reason, the alert identity (first:
/// [`ScoreExtra::Alert`] or [`ScoreExtra::Suppressed`]) and the model's figures are written only
/// when the rule flags the event (`alert` is set).
fn score_record(
    event: u32,
    def: &JobDef,
    rule: &ActiveRule,
    scored: &Scored,
    obs: &Extracted<'_>,
    time_ms: i64,
    alert: Option<AlertRef>,
) -> ScoreRecord {
    let flagged = alert.is_some();
    let (field, value) = obs.subject(def);
    let (reason, extra) = if let Some(alert) = alert {
        let identity = if alert.suppressed {
            ScoreExtra::Suppressed {
                alert_id: alert.id_text().into(),
                count: alert.count,
            }
        } else {
            ScoreExtra::Alert {
                id: alert.id_text().into(),
            }
        };
        let extra = std::iter::once(identity.wrap())
            .chain(scored.extra().into_iter().map(|(name, value)| {
                let value = match value {
                    ExtraValue::Int(i) => i as f64,
                    ExtraValue::Float(f) => f,
                };
                ScoreExtra::Figure {
                    name: name.into(),
                    value,
                }
                .wrap()
            }))
            .collect();
        (scored.reason(&field, &value), extra)
    } else {
        (String::new(), RVec::new())
    };
    ScoreRecord {
        event,
        rule_id: rule.rule.rule_id.as_str().into(),
        rule_name: rule.rule.name.as_str().into(),
        job_id: def.id.as_str().into(),
        function: def.function.as_str().into(),
        time_ms,
        bucket_start_ms: scored.bucket_start_ms,
        score: scored.score,
        threshold: rule.threshold,
        learning: scored.learning,
        flagged,
        subject_field: field.into(),
        subject_value: value.into(),
        value: obs.value,
        actual: scored.actual,
        typical: scored.typical,
        reason: reason.into(),
        extra,
    }
}

/// Metrics as they are collected.
#[derive(Default)]
struct MetricSet(Vec<Metric>);

impl MetricSet {
    fn push(
        &mut self,
        kind: MetricKind,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        value: u64,
    ) {
        self.0.push(Metric {
            name: name.into(),
            help: help.into(),
            kind,
            labels: labels
                .iter()
                .map(|(name, value)| Label {
                    name: (*name).into(),
                    value: (*value).into(),
                })
                .collect(),
            value: value as f64,
        });
    }

    fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: u64) {
        self.push(MetricKind::COUNTER, name, help, labels, value);
    }

    fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: u64) {
        self.push(MetricKind::GAUGE, name, help, labels, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::mmdb_writer::{MmdbWriter, Value as Mmdb};
    use abi_stable::std_types::ROption;
    use serde_json::json;

    const RARE_RULE: &str = "35f86980-1fb1-4dff-b311-3be941549c8d";
    const EXFIL_RULE: &str = "cc653d77-ddd2-45b1-9197-c75ad19df66c";
    /// 2026-10-01T00:00:00Z.
    const T0: i64 = 1_790_812_800_000;
    const MIN15: i64 = 15 * 60 * 1000;
    /// Two days of 15-minute buckets: after them a never-seen country is news.
    const BASE: i64 = 2 * 96;
    const HOURS3: i64 = 3 * 3600 * 1000;

    /// The host's clock in these tests: a year after the events, so that every event time is
    /// believed.
    const NOW: i64 = T0 + 365 * 24 * 3600 * 1000;

    /// Evaluation at [`NOW`].
    trait At {
        fn at(&mut self, line: &str) -> Verdict;
    }

    impl At for Detector {
        fn at(&mut self, line: &str) -> Verdict {
            self.evaluate(line, NOW)
        }
    }

    fn rules_dir() -> String {
        format!("{}/../rules", env!("CARGO_MANIFEST_DIR"))
    }

    fn detector(extra: serde_json::Value) -> Detector {
        // GeoIP off unless a test configures it: the tests give countries in the events.
        let mut config = json!({ "rules": [rules_dir()], "geoip": "off" });
        if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        Detector::from_json(&config.to_string()).expect("detector builds")
    }

    fn iso(ms: i64) -> String {
        let secs = ms.div_euclid(1000);
        format!(
            "{}.{:03}Z",
            &crate::alert::rfc3339(secs)[..19],
            ms.rem_euclid(1000)
        )
    }

    /// A network event to `ip`, optionally with a country name and bytes sent.
    fn event(ms: i64, ip: &str, country: Option<&str>, bytes: Option<serde_json::Value>) -> String {
        let mut e = json!({
            "@timestamp": iso(ms),
            "event": {"category": ["network"]},
            "source": {"ip": "10.1.2.3"},
            "destination": {"ip": ip, "port": 443},
            "network": {"direction": "outbound"},
        });
        if let Some(c) = country {
            e["destination"]["geo"] = json!({ "country_name": c });
        }
        if let Some(b) = bytes {
            e["source"]["bytes"] = b;
        }
        e.to_string()
    }

    fn annotated(verdict: &Verdict) -> Option<serde_json::Value> {
        match &verdict.replacement {
            ROption::RSome(text) => Some(serde_json::from_str(text.as_str()).unwrap()),
            ROption::RNone => None,
        }
    }

    /// `buckets` 15-minute buckets of traffic to three routine countries.
    fn rare_baseline(d: &mut Detector, buckets: i64) {
        let routine = [
            ("8.8.8.8", "United States"),
            ("78.46.34.21", "Germany"),
            ("52.95.1.1", "Ireland"),
        ];
        for b in 0..buckets {
            for (ip, country) in routine {
                let v = d.at(&event(T0 + b * MIN15 + 60_000, ip, Some(country), None));
                assert_eq!(v, Verdict::PASS, "routine traffic flagged in bucket {b}");
            }
        }
    }

    #[test]
    fn a_never_seen_country_is_flagged_after_learning_with_the_rules_alert_fields() {
        let mut d = detector(json!({}));
        rare_baseline(&mut d, BASE);
        let t = T0 + BASE * MIN15 + 5_000;
        let verdict = d.at(&event(t, "175.45.179.109", Some("North Korea"), None));
        let alert = annotated(&verdict).expect("flagged");
        assert_eq!(alert["rule"]["id"], RARE_RULE);
        assert_eq!(alert["event"]["kind"], "alert");
        let score = alert["egresswatch"]["score"].as_f64().unwrap();
        assert!(score >= 75.0, "{score}");
        assert_eq!(alert["egresswatch"]["job_id"], "rare_destination_country");
        assert!(alert["egresswatch"]["influencers"]
            .as_array()
            .unwrap()
            .contains(&json!({"field": "destination.ip", "value": "175.45.179.109"})));
        let reason = alert["egresswatch"]["reason"].as_str().unwrap();
        assert!(reason.contains("North Korea seen in 0 of 192"), "{reason}");
        // Routine countries in the same bucket still pass.
        let routine = d.at(&event(t + 1000, "8.8.8.8", Some("United States"), None));
        assert_eq!(routine, Verdict::PASS);
    }

    #[test]
    fn nothing_is_flagged_while_learning_and_metrics_say_so() {
        let mut d = detector(json!({}));
        rare_baseline(&mut d, 10);
        let v = d.at(&event(
            T0 + 10 * MIN15,
            "175.45.179.109",
            Some("North Korea"),
            None,
        ));
        assert_eq!(v, Verdict::PASS);
        let metrics = d.metrics();
        let value = |name: &str, job: Option<&str>| {
            metrics
                .iter()
                .find(|m| {
                    m.name.as_str() == name
                        && job.is_none_or(|j| m.labels.iter().any(|l| l.value.as_str() == j))
                })
                .map(|m| m.value)
        };
        assert_eq!(
            value("egresswatch_job_learning", Some("rare_destination_country")),
            Some(1.0)
        );
        assert_eq!(value("egresswatch_detector_flagged_total", None), Some(0.0));
    }

    #[test]
    fn shipping_agents_and_non_network_events_are_ignored() {
        let mut d = detector(json!({}));
        rare_baseline(&mut d, BASE);
        let t = T0 + BASE * MIN15;
        let mut agent: serde_json::Value =
            serde_json::from_str(&event(t, "175.45.179.109", Some("North Korea"), None)).unwrap();
        agent["process"] = json!({"name": "Filebeat.exe"});
        assert_eq!(d.at(&agent.to_string()), Verdict::PASS);
        let mut process: serde_json::Value =
            serde_json::from_str(&event(t, "175.45.179.109", Some("North Korea"), None)).unwrap();
        process["event"]["category"] = json!(["process"]);
        assert_eq!(d.at(&process.to_string()), Verdict::PASS);
    }

    /// Writes a tiny country database in one of the two layouts; private space is (wrongly)
    /// given a country, as some real databases do.
    fn tiny_db(name: &str, geolite2: bool) -> std::path::PathBuf {
        let record = |code: &str, english: &str| {
            if geolite2 {
                Mmdb::geolite2_country(code, english)
            } else {
                Mmdb::ip_location_db(code)
            }
        };
        let kind = if geolite2 {
            "GeoLite2-Country"
        } else {
            "country"
        };
        let mut w = MmdbWriter::new(kind, 6, 28).unwrap();
        w.insert("8.8.8.0/24", record("US", "United States"))
            .unwrap();
        w.insert("78.46.0.0/15", record("DE", "Germany")).unwrap();
        w.insert("52.95.0.0/16", record("IE", "Ireland")).unwrap();
        w.insert("175.45.176.0/22", record("KP", "North Korea"))
            .unwrap();
        w.insert("10.0.0.0/8", record("AU", "Australia")).unwrap();
        let path =
            std::env::temp_dir().join(format!("ew-detector-{name}-{}.mmdb", std::process::id()));
        std::fs::write(&path, w.build().unwrap()).unwrap();
        path
    }

    fn enrichment_through(layout: &str, geolite2: bool) {
        let db = tiny_db(layout, geolite2);
        let mut d = detector(json!({ "geoip": { "database": db } }));
        for b in 0..BASE {
            for ip in ["8.8.8.8", "78.46.34.21", "52.95.1.1"] {
                assert_eq!(d.at(&event(T0 + b * MIN15, ip, None, None)), Verdict::PASS);
            }
        }
        let t = T0 + BASE * MIN15;
        let alert = annotated(&d.at(&event(t, "175.45.179.109", None, None))).expect("flagged");
        assert_eq!(alert["destination"]["geo"]["country_iso_code"], "KP");
        assert_eq!(alert["destination"]["geo"]["country_name"], "North Korea");
        // Events the detector cannot place pass untouched: no IP, a bad IP, private space.
        for ip in [
            None,
            Some("not-an-ip"),
            Some("10.9.9.9"),
            Some("192.168.1.1"),
        ] {
            let mut e: serde_json::Value =
                serde_json::from_str(&event(t, "0.0.0.0", None, None)).unwrap();
            match ip {
                Some(ip) => e["destination"]["ip"] = json!(ip),
                None => {
                    e["destination"].as_object_mut().unwrap().remove("ip");
                }
            }
            assert_eq!(d.at(&e.to_string()), Verdict::PASS, "{ip:?}");
        }
        std::fs::remove_file(db).unwrap();
    }

    /// A detector with the tiny country database that has learnt 40 buckets of three routine
    /// countries; returns it and the time of the next bucket.
    fn learnt_with_geoip(name: &str) -> (Detector, i64, std::path::PathBuf) {
        let db = tiny_db(name, false);
        let mut d = detector(json!({ "geoip": { "database": db } }));
        for b in 0..BASE {
            for ip in ["8.8.8.8", "78.46.34.21", "52.95.1.1"] {
                assert_eq!(d.at(&event(T0 + b * MIN15, ip, None, None)), Verdict::PASS);
            }
        }
        (d, T0 + BASE * MIN15, db)
    }

    #[test]
    fn a_repeated_or_dotted_destination_cannot_hide_the_address_downstream_sees() {
        let (mut d, t, db) = learnt_with_geoip("evasion");
        let head = format!(
            r#"{{"@timestamp":"{}","event":{{"category":["network"]}},"source":{{"ip":"10.1.2.3"}},"#,
            iso(t)
        );
        for (i, members) in [
            // A harmless address first, the real one last (downstream keeps the last).
            r#""destination":{"ip":"8.8.8.8","port":443},"destination":{"ip":"175.45.179.109","port":443}"#,
            // A dotted harmless address beside the nested real one, in either order.
            r#""destination.ip":"8.8.8.8","destination":{"ip":"175.45.179.109","port":443}"#,
            r#""destination":{"ip":"175.45.179.109","port":443},"destination.ip":"8.8.8.8""#,
            // A harmless country in an object that a repeated key then replaces.
            r#""destination":{"ip":"8.8.8.8","geo":{"country_name":"United States"}},"destination":{"ip":"175.45.179.109"}"#,
        ]
        .iter()
        .enumerate()
        {
            let line = format!("{head}{members}}}");
            let verdict = d.at(&line);
            // What a JSON reader downstream gets (serde_json keeps the last of a repeated key).
            let out = annotated(&verdict).unwrap_or_else(|| panic!("case {i} not flagged"));
            // The flagged event comes out with the address it was judged on, and its country.
            assert_eq!(out["destination"]["ip"], "175.45.179.109", "case {i}: {out}");
            assert_eq!(
                out["destination"]["geo"]["country_name"], "North Korea",
                "case {i}: {out}"
            );
            // Every original member is still there, byte for byte.
            let text = verdict.replacement.as_ref().map(|t| t.to_string()).unwrap();
            for part in members.split("},") {
                assert!(text.contains(part.trim_end_matches('}')), "case {i}: {part}");
            }
        }
        std::fs::remove_file(db).unwrap();
    }

    #[test]
    fn what_the_scanner_accepts_is_annotated_and_what_it_refuses_is_unreadable() {
        let (mut d, t, db) = learnt_with_geoip("hostile-values");
        let base = event(t, "175.45.179.109", None, None);
        for (i, extra) in [
            r#""note":"\ud800""#.to_owned(),
            r#""ratio":1e999"#.to_owned(),
            format!(r#""big":{}"#, "7".repeat(400)),
            format!(r#""deep":{}0{}"#, "[".repeat(120), "]".repeat(120)),
        ]
        .iter()
        .enumerate()
        {
            let line = format!("{},{extra}}}", &base[..base.len() - 1]);
            let verdict = d.at(&line);
            let text = verdict
                .replacement
                .as_ref()
                .map(|t| t.to_string())
                .unwrap_or_else(|| panic!("case {i}: flagged but not annotated"));
            assert!(text.contains(extra.as_str()), "case {i}: value rewritten");
            assert!(text.contains(r#""country_name":"North Korea""#), "case {i}");
        }
        let too_deep = format!(
            r#"{},"deep":{}0{}}}"#,
            &base[..base.len() - 1],
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(d.at(&too_deep), Verdict::UNREADABLE);
        std::fs::remove_file(db).unwrap();
    }

    fn scored_by(d: &Detector, job: &str) -> u64 {
        d.metrics()
            .iter()
            .find(|m| {
                m.name.as_str() == "egresswatch_job_scored_total"
                    && m.labels.iter().any(|l| l.value.as_str() == job)
            })
            .map_or(0, |m| m.value as u64)
    }

    #[test]
    fn without_a_geoip_section_the_bundled_database_lets_the_country_job_score() {
        let sample = std::fs::read_to_string(format!(
            "{}/../examples/data/sample.ndjson",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let lines: Vec<&str> = sample.lines().take(3000).collect();
        let config = json!({ "rules": [rules_dir()] }).to_string();
        let mut on = Detector::from_json(&config).unwrap();
        on.process(lines.iter().copied(), NOW);
        // The sample's events carry no country: only GeoIP can give the job something to read.
        assert!(lines.iter().all(|l| !l.contains("country_name")));
        assert!(scored_by(&on, "rare_destination_country") > 1000);
        let off = json!({ "rules": [rules_dir()], "geoip": "off" }).to_string();
        let mut off = Detector::from_json(&off).unwrap();
        off.process(lines.iter().copied(), NOW);
        assert_eq!(scored_by(&off, "rare_destination_country"), 0);
        assert!(Detector::from_json(&json!({"geoip": "sometimes"}).to_string()).is_err());
    }

    #[test]
    fn skipping_the_scores_below_the_floor_changes_no_verdict() {
        // Without score records the models skip the scores that cannot reach the lowest
        // threshold; with them every score is computed. The sample (bundled GeoIP) and a chunked
        // upload must give the same verdicts, alerts included, either way.
        let sample = std::fs::read_to_string(format!(
            "{}/../examples/data/sample.ndjson",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let mut lines: Vec<String> = sample.lines().map(str::to_owned).collect();
        for b in 0..30 {
            for k in 0..20i64 {
                let bytes = json!(300_000 * (1 + (k * 7 + b * 3) % 40));
                let t = T0 + b * HOURS3 + k * 60_000;
                let ip = format!("52.95.{}.1", 10 + k);
                lines.push(event(t, &ip, Some("Ireland"), Some(bytes)));
            }
        }
        for i in 0..15 {
            let t = T0 + 30 * HOURS3 + 60_000 + i * 30_000;
            lines.push(event(
                t,
                "198.51.7.9",
                Some("Ireland"),
                Some(json!(200_000_000)),
            ));
        }
        let config: DetectorConfig =
            serde_json::from_value(json!({ "rules": [rules_dir()] })).unwrap();
        let run = |score_records: bool| {
            let options = BuildOptions {
                score_records,
                ..BuildOptions::default()
            };
            let mut d = Detector::with_options(config.clone(), options).unwrap();
            let verdicts: Vec<Verdict> = lines
                .chunks(1024)
                .flat_map(|c| d.process(c.iter().map(String::as_str), NOW))
                .collect();
            (verdicts, d.take_scores())
        };
        let (floored, _) = run(false);
        let (exact, records) = run(true);
        let flagged = exact.iter().filter(|v| **v != Verdict::PASS).count();
        println!("{flagged} flagged of {}", exact.len());
        assert!(flagged >= 10, "{flagged}");
        assert!(floored == exact);
        // The last batch's records: scores above 0 below the threshold, the ones skipped.
        assert!(records.iter().any(|r| r.score > 0.0 && !r.flagged));
    }

    #[test]
    fn a_job_needing_a_field_geoip_cannot_fill_is_named() {
        let d = detector(json!({
            "geoip": {},
            "jobs": [{"id": "rare_destination_country", "function": "rare",
                      "by_field_name": "destination.geo.region_name", "bucket_span": "15m"}]
        }));
        let warnings = d.warnings().join("\n");
        assert!(
            warnings.contains("job rare_destination_country needs destination.geo.region_name"),
            "{warnings}"
        );
        assert!(!detector(json!({"geoip": {}}))
            .warnings()
            .iter()
            .any(|w| w.contains("cannot fill")));
    }

    #[test]
    fn events_that_never_qualify_are_reported_once_with_the_fields_expected() {
        let mut d = detector(json!({}));
        let line = r#"{"src_ip":"10.0.0.1","dest_ip":"8.8.8.8","bytes_out":1000}"#;
        for _ in 0..NO_QUALIFYING_WARNING_AFTER + 5 {
            assert_eq!(d.at(line), Verdict::PASS);
        }
        let said: Vec<&String> = d
            .warnings()
            .iter()
            .filter(|w| w.contains("none qualified"))
            .collect();
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].contains("rare_destination_country (event.category"),
            "{}",
            said[0]
        );
        assert!(said[0].contains("destination.ip"), "{}", said[0]);
    }

    #[test]
    fn enrichment_with_an_ip_location_db_database() {
        enrichment_through("iplocation", false);
    }

    #[test]
    fn enrichment_with_a_geolite2_database() {
        enrichment_through("geolite2", true);
    }

    #[test]
    fn a_missing_database_is_an_error_naming_the_path() {
        let err = Detector::from_json(
            &json!({"rules": [rules_dir()], "geoip": {"database": "/nope/x.mmdb"}}).to_string(),
        )
        .err()
        .unwrap();
        assert_eq!(err.kind(), Some(ErrorKind::Config));
        assert_eq!(err.problems[0].path.as_str(), "geoip.database");
        assert!(err.message.contains("/nope/x.mmdb"), "{}", err.message);
    }

    /// 25 3h buckets in which 30 destinations receive a few kB to a few MB each.
    fn bytes_baseline(d: &mut Detector, buckets: i64) {
        for b in 0..buckets {
            for k in 0..30i64 {
                let ip = format!("52.95.{}.{}", 10 + k, 1 + b % 5);
                let bytes = 2_000 * (1 + (k * 7 + b * 3) % 40) * (1 + k % 5).pow(2);
                let v = d.at(&event(
                    T0 + b * HOURS3 + k * 60_000,
                    &ip,
                    Some("Ireland"),
                    Some(json!(bytes)),
                ));
                assert_eq!(v, Verdict::PASS, "baseline flagged at bucket {b}");
            }
        }
    }

    /// Chunks of a 3 GB upload in 15 flagged, after a baseline where destinations get up to a
    /// few hundred MB (so only the sum stands out) and, if `forged`, one event 23 hours ahead;
    /// `live`: the host's clock is the events' time, else a year later (a replay).
    fn chunked_upload_flags(forged: bool, live: bool) -> usize {
        let mut d = detector(json!({}));
        let clock = |t: i64| if live { t } else { NOW };
        for b in 0..60 {
            for k in 0..30i64 {
                let t = T0 + b * HOURS3 + k * 60_000;
                let bytes = 400_000 * (1 + (k * 7 + b * 3) % 40) * (1 + k % 5).pow(2);
                let ip = format!("52.95.{}.{}", 10 + k, 1 + b % 5);
                let e = event(t, &ip, Some("Ireland"), Some(json!(bytes)));
                d.evaluate(&e, clock(t));
            }
            for k in 0..3 {
                let t = T0 + b * HOURS3 + 3_600_000 + k * 1000;
                let ip = format!("93.184.{b}.{k}");
                let bytes = json!(150_000_000 * (k + 1));
                d.evaluate(&event(t, &ip, Some("Ireland"), Some(bytes)), clock(t));
            }
        }
        let start = T0 + 60 * HOURS3 + 60_000;
        if forged {
            let far = event(start + 23 * 3_600_000, "8.8.4.4", None, Some(json!(1_000)));
            d.evaluate(&far, clock(start));
        }
        (0..15)
            .filter(|i| {
                let t = start + 60_000 + i * 30_000;
                let e = event(t, "198.51.7.9", Some("Ireland"), Some(json!(200_000_000)));
                annotated(&d.evaluate(&e, clock(t))).is_some()
            })
            .count()
    }

    #[test]
    fn one_event_a_day_ahead_does_not_blind_the_bytes_job() {
        // Issue 13: an event at now+23h made every later event "far late": 0 of 15 chunks.
        for live in [true, false] {
            let clean = chunked_upload_flags(false, live);
            let after = chunked_upload_flags(true, live);
            println!("live {live}: {clean} chunks flagged, {after} after a forged time");
            assert!(clean > 0);
            assert_eq!(after, clean, "live {live}");
        }
    }

    #[test]
    fn two_gigabytes_to_a_new_ip_are_flagged_at_the_crossing_event() {
        let mut d = detector(json!({}));
        bytes_baseline(&mut d, 25);
        let start = T0 + 25 * HOURS3;
        let ip = "93.184.216.34";
        for i in 0..5 {
            let v = d.at(&event(
                start + i * 1000,
                ip,
                Some("Ireland"),
                Some(json!(10_000)),
            ));
            assert_eq!(v, Verdict::PASS, "small chunk {i} flagged");
        }
        let mut first_flag = None;
        for i in 0..10 {
            let v = d.at(&event(
                start + 60_000 + i * 1000,
                ip,
                Some("Ireland"),
                Some(json!(200_000_000)),
            ));
            if let Some(alert) = annotated(&v) {
                assert_eq!(alert["egresswatch"]["rule"]["id"], EXFIL_RULE);
                assert!(alert["egresswatch"]["score"].as_f64().unwrap() >= 75.0);
                let reason = alert["egresswatch"]["reason"].as_str().unwrap();
                assert!(
                    reason.contains("sent to destination.ip 93.184.216.34 in this 3h bucket"),
                    "{reason}"
                );
                first_flag.get_or_insert(i);
            } else {
                assert!(
                    first_flag.is_none(),
                    "chunk {i} passed after the sum had crossed"
                );
            }
        }
        assert!(first_flag.is_some(), "2 GB to a new IP not flagged");
    }

    #[test]
    fn one_destination_written_as_ipv4_and_as_mapped_ipv6_is_one_sum() {
        // An upload in chunks too small to flag alone, all to `93.184.216.34` or alternating
        // with the address as IPv4-mapped IPv6 text: the sum must cross at the same chunk.
        let first_flagged = |mixed: bool| {
            let mut d = detector(json!({}));
            bytes_baseline(&mut d, 25);
            let start = T0 + 25 * HOURS3;
            (0..40).find(|&i| {
                let ip = if mixed && i % 2 == 1 {
                    "::FFFF:93.184.216.34"
                } else {
                    "93.184.216.34"
                };
                let e = event(start + i * 1000, ip, Some("Ireland"), Some(json!(CHUNK)));
                annotated(&d.at(&e)).is_some()
            })
        };
        const CHUNK: i64 = 4_000_000;
        let plain = first_flagged(false);
        println!("first flagged chunk: {plain:?}");
        assert!(
            plain.is_some_and(|i| i >= 2),
            "the sum, not one chunk, must flag"
        );
        assert_eq!(first_flagged(true), plain);
    }

    #[test]
    fn a_destination_that_always_receives_gigabytes_is_not_flagged() {
        let mut d = detector(json!({}));
        let backup = "52.216.1.1";
        for b in 0..70 {
            for k in 0..30i64 {
                let ip = format!("52.95.{}.1", 10 + k);
                let v = d.at(&event(
                    T0 + b * HOURS3 + k * 1000,
                    &ip,
                    None,
                    Some(json!(50_000 + k * 1000)),
                ));
                assert_eq!(v, Verdict::PASS);
            }
            for chunk in 0..20 {
                let t = T0 + b * HOURS3 + 60_000 + chunk * 1000;
                let v = d.at(&event(t, backup, None, Some(json!(100_000_000))));
                assert_eq!(v, Verdict::PASS, "backup flagged in bucket {b}");
            }
        }
    }

    #[test]
    fn private_reserved_and_allow_listed_destinations_and_bad_bytes_never_flag() {
        let mut d = detector(json!({ "allow_destinations": ["93.184.216.0/24"] }));
        bytes_baseline(&mut d, 25);
        let t = T0 + 25 * HOURS3;
        for ip in [
            "10.2.3.4",
            "172.20.1.1",
            "100.64.1.1",
            "203.0.113.9",
            "224.0.0.5",
            "255.255.255.255",
            "2001:db8::1",
            "fd00::1",
            "93.184.216.34",
        ] {
            for i in 0..5 {
                let v = d.at(&event(t + i, ip, None, Some(json!(5_000_000_000_u64))));
                assert_eq!(v, Verdict::PASS, "{ip} flagged");
            }
        }
        for bytes in [
            None,
            Some(json!("lots")),
            Some(json!(null)),
            Some(json!(-5)),
        ] {
            let v = d.at(&event(t, "93.184.217.1", None, bytes.clone()));
            assert_eq!(v, Verdict::PASS, "{bytes:?}");
        }
    }

    #[test]
    fn the_hash_seed_reaches_the_models_and_a_loaded_state_keeps_its_own() {
        let config = |seed| {
            let config: DetectorConfig =
                serde_json::from_value(json!({ "rules": [rules_dir()] })).unwrap();
            Detector::with_options(
                config,
                BuildOptions {
                    hash_seed: seed,
                    ..BuildOptions::default()
                },
            )
            .unwrap()
        };
        let (mut a, mut b) = (config(1), config(2));
        rare_baseline(&mut a, BASE);
        rare_baseline(&mut b, BASE);
        let (state_a, state_b) = (a.save_state().unwrap(), b.save_state().unwrap());
        assert_ne!(state_a, state_b, "the seed is part of each model's state");
        // A detector built with another seed that loads `a`'s state saves `a`'s keys again
        // (compared with `a`'s own detector after the same load: a loaded map may iterate in
        // another order than the one it was saved from).
        let mut c = config(3);
        c.load_state(&state_a).unwrap();
        let mut a_again = config(1);
        a_again.load_state(&state_a).unwrap();
        assert_eq!(c.save_state().unwrap(), a_again.save_state().unwrap());
        let e = event(
            T0 + BASE * MIN15,
            "175.45.179.109",
            Some("North Korea"),
            None,
        );
        assert_eq!(a.at(&e), c.at(&e));
        assert!(annotated(&b.at(&e)).is_some());
    }

    #[test]
    fn score_records_cover_every_scored_event_and_match_the_verdicts() {
        let config: DetectorConfig =
            serde_json::from_value(json!({ "rules": [rules_dir()] })).unwrap();
        let options = BuildOptions {
            score_records: true,
            ..BuildOptions::default()
        };
        let mut d = Detector::with_options(config, options).unwrap();
        rare_baseline(&mut d, BASE);
        let t = T0 + BASE * MIN15;
        let batch = [
            event(t, "8.8.8.8", Some("United States"), None),
            "not json".to_owned(),
            event(t + 1, "175.45.179.109", Some("North Korea"), None),
        ];
        let verdicts = d.process(batch.iter().map(String::as_str), NOW);
        let records = d.take_scores();
        assert!(d.take_scores().is_empty(), "taken once");
        assert_eq!(records.len(), 2, "{records:?}");
        assert_eq!(records[0].event, 0);
        assert!(!records[0].flagged && records[0].reason.is_empty());
        let flagged = &records[1];
        assert_eq!(flagged.event, 2);
        assert_eq!(flagged.rule_id.as_str(), RARE_RULE);
        assert_eq!(flagged.job_id.as_str(), "rare_destination_country");
        assert_eq!(flagged.function.as_str(), "rare");
        assert_eq!(flagged.subject_field.as_str(), DESTINATION_COUNTRY_NAME);
        assert_eq!(flagged.subject_value.as_str(), "North Korea");
        assert_eq!(flagged.time_ms, t + 1);
        assert!(flagged.flagged && !flagged.learning && flagged.score >= flagged.threshold);
        assert!(
            flagged.reason.contains("North Korea seen in 0 of 192"),
            "{}",
            flagged.reason
        );
        assert!(!flagged.extra.is_empty());
        assert!(annotated(&verdicts[2]).is_some() && annotated(&verdicts[0]).is_none());
        assert_eq!(verdicts[1], Verdict::UNREADABLE);
    }

    #[test]
    fn a_burst_is_one_alert_and_its_followers_reference_it() {
        let burst = |suppress: serde_json::Value| {
            let actions = json!({ "default": { "annotate": true, "suppress": suppress } });
            let config: DetectorConfig =
                serde_json::from_value(json!({ "rules": [rules_dir()], "actions": actions }))
                    .unwrap();
            let options = BuildOptions {
                score_records: true,
                ..BuildOptions::default()
            };
            let mut d = Detector::with_options(config, options).unwrap();
            rare_baseline(&mut d, BASE);
            let t = T0 + BASE * MIN15 + 5_000;
            let lines: Vec<String> = (0..5)
                .map(|i| event(t + i * 1000, "175.45.179.109", Some("North Korea"), None))
                .collect();
            let verdicts = d.process(lines.iter().map(String::as_str), NOW);
            let alerts: Vec<serde_json::Value> = verdicts
                .iter()
                .map(|v| annotated(v).expect("flagged"))
                .collect();
            (alerts, d.take_scores(), d.metrics())
        };
        let (alerts, records, metrics) = burst(json!("bucket"));
        let first = &alerts[0];
        assert_eq!(first["event"]["kind"], "alert");
        assert_eq!(first["rule"]["id"], RARE_RULE);
        let id = first["egresswatch"]["alert"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(first["egresswatch"]["alert"]["suppressed"], false);
        for (n, follower) in alerts.iter().enumerate().skip(1) {
            let a = &follower["egresswatch"]["alert"];
            assert_eq!(a["id"], id.as_str(), "follower {n} names the alert");
            assert_eq!(a["suppressed"], true);
            assert_eq!(a["count"], n as u64 + 1);
            assert!(follower["event"].get("kind").is_none(), "{follower}");
            assert!(follower.get("rule").is_none(), "{follower}");
            assert_eq!(follower["egresswatch"]["rule"]["id"], RARE_RULE);
        }
        // The score records say the same: one alert, four followers of it.
        let identity: Vec<String> = records
            .iter()
            .filter(|r| r.flagged)
            .map(|r| match r.extra.first().map(|e| e.as_enum()) {
                Some(Ok(ScoreExtra::Alert { id })) => format!("alert {id}"),
                Some(Ok(ScoreExtra::Suppressed { alert_id, count })) => {
                    format!("{alert_id} #{count}")
                }
                other => panic!("no alert identity: {other:?}"),
            })
            .collect();
        assert_eq!(
            identity,
            [
                format!("alert {id}"),
                format!("{id} #2"),
                format!("{id} #3"),
                format!("{id} #4"),
                format!("{id} #5")
            ]
        );
        let counter = |metrics: &[Metric], name: &str| {
            metrics
                .iter()
                .find(|m| m.name.as_str() == name)
                .map(|m| m.value)
        };
        assert_eq!(
            counter(&metrics, "egresswatch_detector_flagged_total"),
            Some(5.0)
        );
        assert_eq!(
            counter(&metrics, "egresswatch_detector_suppressed_total"),
            Some(4.0)
        );
        let rare_rule = metrics.iter().find(|m| {
            m.name.as_str() == "egresswatch_rule_suppressed_total"
                && m.labels.iter().any(|l| l.value.as_str() == RARE_RULE)
        });
        assert_eq!(rare_rule.map(|m| m.value), Some(4.0));
        // Suppression off: every flagged event is an alert of its own.
        let (alerts, _, metrics) = burst(json!("off"));
        let ids: BTreeSet<&str> = alerts
            .iter()
            .map(|a| {
                assert_eq!(a["event"]["kind"], "alert");
                a["egresswatch"]["alert"]["id"].as_str().unwrap()
            })
            .collect();
        assert_eq!(ids.len(), 5);
        assert_eq!(
            counter(&metrics, "egresswatch_detector_suppressed_total"),
            Some(0.0)
        );
        // A bad setting is refused with its path.
        let err = Detector::from_json(
            &json!({ "rules": [rules_dir()], "actions": { "default": { "suppress": "soon" } } })
                .to_string(),
        )
        .err()
        .expect("refused");
        assert!(
            err.to_string().contains("actions.default.suppress"),
            "{err}"
        );
    }

    #[test]
    fn the_threshold_and_learning_options_replace_the_configured_ones() {
        let config: DetectorConfig =
            serde_json::from_value(json!({ "rules": [rules_dir()] })).unwrap();
        let options = BuildOptions {
            threshold: Some(0.0),
            learning_buckets: Some(0),
            ..BuildOptions::default()
        };
        let mut d = Detector::with_options(config, options).unwrap();
        // No learning period and threshold 0: the very first event is flagged.
        let v = d.at(&event(T0, "8.8.8.8", Some("United States"), None));
        assert!(annotated(&v).is_some());
    }

    #[test]
    fn the_clock_given_is_the_only_time_without_an_event_time() {
        let mut d = detector(json!({}));
        rare_baseline(&mut d, BASE);
        let mut e: serde_json::Value = serde_json::from_str(&event(
            T0 + BASE * MIN15,
            "175.45.179.109",
            Some("North Korea"),
            None,
        ))
        .unwrap();
        e.as_object_mut().unwrap().remove("@timestamp");
        // Without a time the event is placed at the clock: the bucket after the baseline.
        let alert = annotated(&d.evaluate(&e.to_string(), T0 + BASE * MIN15)).expect("flagged");
        assert_eq!(alert["egresswatch"]["bucket_start"], "2026-10-03T00:00:00Z");
        // An event time more than a day past the clock is not believed either.
        let far = event(T0 + 90 * 86_400_000, "8.8.8.8", Some("United States"), None);
        let mut twin = detector(json!({}));
        rare_baseline(&mut twin, BASE);
        assert_eq!(
            d.evaluate(&far, T0 + BASE * MIN15),
            twin.evaluate(&far, T0 + BASE * MIN15)
        );
    }

    #[test]
    fn state_round_trip_continues_where_it_stopped() {
        let mut a = detector(json!({}));
        rare_baseline(&mut a, BASE);
        let saved = a.save_state().unwrap();
        let mut b = detector(json!({}));
        b.load_state(&saved).unwrap();
        let e = event(
            T0 + BASE * MIN15,
            "175.45.179.109",
            Some("North Korea"),
            None,
        );
        assert_eq!(a.at(&e), b.at(&e));
        assert!(annotated(&b.at(&e)).is_some());
        let err = b.load_state(b"garbage").unwrap_err();
        assert_eq!(err.kind(), Some(ErrorKind::State));
    }
}
