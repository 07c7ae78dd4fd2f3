//! [`Detector`]: events in, verdicts out.
//!
//! Construction loads the rules, resolves each supported rule's jobs in the catalog, builds one
//! model per job, and opens the GeoIP database. Per event: parse, enrich the destination's
//! country when it is missing, let every job whose filters the event passes score it, and flag
//! it when a score reaches a rule's `anomaly_threshold` after the job's learning period. A
//! flagged event gets its rule's action: alert fields, a route, or both. An event nothing flags
//! passes unchanged; the host then writes its original bytes.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Arc;

use egresswatch_plugin_api::{ErrorKind, PluginError, Verdict};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::alert::{self, AlertDetail};
use crate::catalog::{Function, JobCatalog, JobDef};
use crate::config::{Action, BuildOptions, DetectorConfig, ModelSettings};
use crate::event;
use crate::fields::{Fields, FlatEvent, Scalar, Wanted};
use crate::geo::{self, GeoCache, GeoDb};
use crate::models::{self, ExtraValue, Model, Observation, Scored};
use crate::net::{self, CidrSet};
use crate::rules::{self, Rule};

/// ECS field of the destination address.
const DESTINATION_IP: &str = "destination.ip";
/// ECS field of the destination country's ISO code.
const DESTINATION_COUNTRY_ISO: &str = "destination.geo.country_iso_code";
/// ECS field of the destination country's English name.
const DESTINATION_COUNTRY_NAME: &str = "destination.geo.country_name";

/// How far ahead of the clock an event's time may be before it is not believed.
const MAX_FUTURE_MS: i64 = 24 * 3600 * 1000;

/// Version of the saved-state envelope written by [`Detector::save_state`].
pub const STATE_FORMAT_VERSION: u32 = 1;

/// The detector: rules, jobs with their models, enrichment, and counters.
pub struct Detector {
    config: DetectorConfig,
    options: BuildOptions,
    jobs: Vec<ActiveJob>,
    geo: Option<GeoCache>,
    allow: CidrSet,
    /// The fields the jobs read, scanned from every event.
    wanted: Arc<Wanted>,
    metrics: Metrics,
    /// What loading skipped (unsupported rules, unknown jobs), for the host to report.
    warnings: Vec<String>,
}

/// A job some supported rule uses, its model, and the rules that read its scores.
struct ActiveJob {
    def: JobDef,
    model: Box<dyn Model>,
    rules: Vec<ActiveRule>,
    scored: u64,
}

/// A supported rule as applied to one job's scores.
struct ActiveRule {
    rule: Arc<Rule>,
    threshold: f64,
    action: Action,
    flagged: u64,
}

/// Counters kept by the detector.
#[derive(Debug, Default)]
struct Metrics {
    events: u64,
    unreadable: u64,
    enriched: u64,
    flagged: u64,
    annotate_failures: u64,
}

/// The best (highest-scoring) rule that fired on an event.
struct Hit {
    job: usize,
    rule: usize,
    scored: Scored,
    field: String,
    value: String,
}

/// Saved state: one opaque blob per job, keyed by job id so that a changed rule set keeps what
/// still applies.
#[derive(Serialize, Deserialize)]
struct SavedState {
    format: u32,
    jobs: Vec<(String, Vec<u8>)>,
}

impl Detector {
    /// Builds a detector from its configuration as JSON text.
    pub fn from_json(text: &str) -> Result<Self, PluginError> {
        let config: DetectorConfig = serde_json::from_str(text).map_err(|e| {
            PluginError::new(ErrorKind::Config, format!("detector configuration: {e}"))
        })?;
        Self::new(config)
    }

    /// Builds a detector with default options (hash seed 0): for tests and benchmarks.
    pub fn new(config: DetectorConfig) -> Result<Self, PluginError> {
        Self::with_options(config, BuildOptions::default())
    }

    /// Builds a detector: loads the rules, the catalog, the models and the GeoIP database.
    pub fn with_options(
        config: DetectorConfig,
        options: BuildOptions,
    ) -> Result<Self, PluginError> {
        let catalog = JobCatalog::builtin()
            .with_overrides(config.jobs.iter().cloned())
            .map_err(|problems| {
                let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
                PluginError::new(
                    ErrorKind::Config,
                    format!("detector.jobs: {}", list.join("; ")),
                )
            })?;
        let allow = net::parse_cidr_list(&config.allow_destinations).map_err(|e| {
            PluginError::new(
                ErrorKind::Config,
                format!("detector.allow_destinations: {e}"),
            )
        })?;
        let geo = match &config.geoip.database {
            Some(path) => {
                let db = GeoDb::open(config.resolve(path))
                    .map_err(|e| PluginError::new(ErrorKind::Geo, e.to_string()))?;
                Some(GeoCache::new(Arc::new(db), config.geoip.cache_entries))
            }
            None => None,
        };
        let (jobs, warnings) = build_jobs(&config, &catalog, options.hash_seed)?;
        let wanted = Wanted::new(jobs.iter().flat_map(|j| j.def.fields()).chain([
            config.time_field.as_str(),
            DESTINATION_IP,
            DESTINATION_COUNTRY_ISO,
            DESTINATION_COUNTRY_NAME,
        ]));
        Ok(Detector {
            wanted: Arc::new(wanted),
            config,
            options,
            jobs,
            geo,
            allow,
            metrics: Metrics::default(),
            warnings,
        })
    }

    /// The configuration this detector was built from.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Evaluates one event, a raw line without terminator.
    ///
    /// Only the fields the jobs read are scanned; the event is parsed in full only when it is
    /// flagged and its action annotates it.
    pub fn evaluate(&mut self, line: &str) -> Verdict {
        self.metrics.events += 1;
        let wanted = Arc::clone(&self.wanted);
        let Ok(mut flat) = FlatEvent::scan(line, &wanted) else {
            self.metrics.unreadable += 1;
            return Verdict::UNREADABLE;
        };
        let country = self.enrich(&mut flat);
        let Some(hit) = self.score(&flat) else {
            return Verdict::PASS;
        };
        self.metrics.flagged += 1;
        let job = &mut self.jobs[hit.job];
        let active = &mut job.rules[hit.rule];
        active.flagged += 1;
        let mut verdict = Verdict::PASS;
        if active.action.annotate {
            let detail = alert_detail(&job.def, &hit);
            match annotated(line, country, &active.rule, &detail) {
                Some(text) => verdict.replacement = Some(text.into()).into(),
                // The event has a non-object where an alert field goes: it keeps its route and
                // is counted, rather than having fields overwritten.
                None => self.metrics.annotate_failures += 1,
            }
        }
        if let Some(route) = &active.action.route {
            verdict.route = Some(route.as_str().into()).into();
        }
        verdict
    }

    /// Fills `destination.geo.country_iso_code` / `country_name` when the name is missing;
    /// returns the country it added, to be written on the event if it is annotated.
    fn enrich(&mut self, event: &mut FlatEvent<'_, '_>) -> Option<geo::Country> {
        if event.is_present(DESTINATION_COUNTRY_NAME) {
            return None;
        }
        let country = match event.get_str(DESTINATION_COUNTRY_ISO) {
            Some(code) => geo::Country::from_iso_code(code),
            None => {
                let ip = event.get_str(DESTINATION_IP).and_then(net::parse_ip)?;
                self.geo.as_mut()?.country(ip)
            }
        }?;
        event.set(
            DESTINATION_COUNTRY_ISO,
            Scalar::Str(country.iso_code().to_owned().into()),
        );
        event.set(DESTINATION_COUNTRY_NAME, Scalar::Str(country.name().into()));
        self.metrics.enriched += 1;
        Some(country)
    }

    /// Lets every qualifying job score the event; returns the highest-scoring rule that fired.
    fn score(&mut self, event: &FlatEvent<'_, '_>) -> Option<Hit> {
        // A timestamp from the future would age every model at once: it counts as absent.
        let now = now_ms();
        let time_ms = crate::time::epoch_ms(event, &self.config.time_field)
            .filter(|&t| t <= now + MAX_FUTURE_MS)
            .unwrap_or(now);
        let allowed = !self.allow.is_empty()
            && event
                .get_str(DESTINATION_IP)
                .and_then(net::parse_ip)
                .is_some_and(|ip| self.allow.contains(ip));
        if allowed {
            return None;
        }
        let mut best: Option<Hit> = None;
        for (j, job) in self.jobs.iter_mut().enumerate() {
            if !job.def.qualifies(event) {
                continue;
            }
            let Some(obs) = Extracted::from_event(&job.def, event) else {
                continue;
            };
            let Some(scored) = job.model.observe(&obs.observation(time_ms)) else {
                continue;
            };
            job.scored += 1;
            if scored.learning {
                continue;
            }
            for (r, rule) in job.rules.iter().enumerate() {
                let better = best.as_ref().is_none_or(|b| scored.score > b.scored.score);
                if scored.score >= rule.threshold && better {
                    let (field, value) = obs.subject(&job.def);
                    best = Some(Hit {
                        job: j,
                        rule: r,
                        scored,
                        field,
                        value,
                    });
                }
            }
        }
        best
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

    /// A JSON snapshot of the counters, per job and per rule.
    pub fn metrics_json(&self) -> String {
        let jobs: Map<String, Value> = self
            .jobs
            .iter()
            .map(|job| {
                let status = job.model.status();
                let rules: Map<String, Value> = job
                    .rules
                    .iter()
                    .map(|r| {
                        (
                            r.rule.rule_id.clone(),
                            serde_json::json!({"name": r.rule.name, "flagged": r.flagged}),
                        )
                    })
                    .collect();
                let value = serde_json::json!({
                    "function": job.def.function.as_str(),
                    "learning": status.learning,
                    "buckets_seen": status.buckets_seen,
                    "learning_buckets": status.learning_buckets,
                    "scored": job.scored,
                    "tracked_entities": status.tracked_entities,
                    "probationary_entities": status.probationary_entities,
                    "state_bytes": status.approx_bytes,
                    "evictions": status.evictions,
                    "far_late_events": status.far_late_events,
                    "rules": rules,
                });
                (job.def.id.clone(), value)
            })
            .collect();
        let mut out = serde_json::json!({
            "events": self.metrics.events,
            "unreadable": self.metrics.unreadable,
            "enriched": self.metrics.enriched,
            "flagged": self.metrics.flagged,
            "annotate_failures": self.metrics.annotate_failures,
            "jobs": jobs,
            "warnings": self.warnings,
        });
        if let Some(cache) = &self.geo {
            let stats = cache.stats();
            out["geoip_cache"] = serde_json::json!({"hits": stats.hits, "misses": stats.misses});
        }
        out.to_string()
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
        postcard::to_allocvec(&SavedState {
            format: STATE_FORMAT_VERSION,
            jobs,
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
            let mut model = build_model(
                &self.jobs[index].def,
                &self.config.models,
                self.options.hash_seed,
            )
            .map_err(|e| PluginError::new(ErrorKind::State, format!("job {id}: {e}")))?;
            model
                .load(bytes)
                .map_err(|e| PluginError::new(ErrorKind::State, format!("job {id}: {e}")))?;
            fresh.push((index, model));
        }
        for (index, model) in fresh {
            self.jobs[index].model = model;
        }
        Ok(())
    }
}

/// The values one job reads from an event, borrowed where the event holds strings.
struct Extracted<'a> {
    by: Option<Cow<'a, str>>,
    over: Option<Cow<'a, str>>,
    partition: Option<Cow<'a, str>>,
    value: f64,
}

impl<'a> Extracted<'a> {
    /// Reads the job's fields; `None` when a field the function needs is missing.
    fn from_event<E: Fields + ?Sized>(def: &JobDef, event: &'a E) -> Option<Self> {
        let read = |field: &Option<String>| -> Result<Option<Cow<'a, str>>, ()> {
            let Some(path) = field else {
                return Ok(None);
            };
            match event.get_str(path) {
                Some(text) => Ok(Some(Cow::Borrowed(text))),
                None => event
                    .get_f64(path)
                    .map(|n| Some(Cow::Owned(number_text(n))))
                    .ok_or(()),
            }
        };
        let by = read(&def.by_field).ok()?;
        let over = read(&def.over_field).ok()?;
        let partition = read(&def.partition_field).ok()?;
        let value = match &def.field_name {
            Some(field) if def.function.needs_field_name() => event.get_f64(field)?,
            _ => 1.0,
        };
        Some(Extracted {
            by,
            over,
            partition,
            value,
        })
    }

    fn observation(&self, time_ms: i64) -> Observation<'_> {
        Observation {
            time_ms,
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

/// A number as an entity key: integers without a fraction (`443`, not `443.0`).
fn number_text(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

/// The event, parsed in full, with the enriched country and the alert fields written on it.
fn annotated(
    line: &str,
    country: Option<geo::Country>,
    rule: &Rule,
    detail: &AlertDetail,
) -> Option<String> {
    let mut event: Value = serde_json::from_str(line).ok()?;
    if let Some(country) = country {
        let iso = Value::String(country.iso_code().to_owned());
        let name = Value::String(country.name().to_owned());
        event::insert(&mut event, DESTINATION_COUNTRY_ISO, iso).ok()?;
        event::insert(&mut event, DESTINATION_COUNTRY_NAME, name).ok()?;
    }
    alert::annotate(&mut event, rule, detail).ok()?;
    Some(event.to_string())
}

/// The alert fields' content for a hit.
fn alert_detail(def: &JobDef, hit: &Hit) -> AlertDetail {
    let extra: Map<String, Value> = hit
        .scored
        .extra()
        .into_iter()
        .map(|(key, value)| {
            let value = match value {
                ExtraValue::Int(i) => Value::from(i),
                ExtraValue::Float(f) => Value::from(f),
            };
            (key.to_owned(), value)
        })
        .collect();
    AlertDetail {
        job_id: def.id.clone(),
        function: def.function,
        score: (hit.scored.score * 10.0).round() / 10.0,
        bucket_start: hit.scored.bucket_start_ms.div_euclid(1000),
        actual: Some(hit.scored.actual),
        typical: Some(hit.scored.typical),
        influencers: def.influencers.clone(),
        reason: hit.scored.reason(&hit.field, &hit.value),
        extra,
    }
}

/// Builds one active job per job id that a supported rule names and the catalog knows.
/// Also returns a warning per rule or job that was skipped.
fn build_jobs(
    config: &DetectorConfig,
    catalog: &JobCatalog,
    hash_seed: u64,
) -> Result<(Vec<ActiveJob>, Vec<String>), PluginError> {
    let paths: Vec<_> = config.rules.iter().map(|p| config.resolve(p)).collect();
    let load = rules::load_paths(&paths, catalog);
    let mut problems: Vec<String> = load.errors().map(ToString::to_string).collect();
    if config.fail_on_unsupported {
        problems.extend(load.unsupported.iter().map(ToString::to_string));
    }
    if !problems.is_empty() {
        return Err(PluginError::new(
            ErrorKind::Rules,
            format!(
                "{} problem(s) loading rules:\n  - {}",
                problems.len(),
                problems.join("\n  - ")
            ),
        ));
    }
    let mut jobs: Vec<ActiveJob> = Vec::new();
    let mut unusable = Vec::new();
    for rule in load.supported() {
        let rule = Arc::new(rule.clone());
        let threshold = f64::from(rule.anomaly_threshold.unwrap_or(75));
        for job_id in &rule.job_ids {
            let Some(def) = catalog.get(job_id) else {
                continue;
            };
            let index = match jobs.iter().position(|j| &j.def.id == job_id) {
                Some(index) => index,
                None => match build_model(def, &config.models, hash_seed) {
                    Ok(model) => {
                        jobs.push(ActiveJob {
                            def: def.clone(),
                            model,
                            rules: Vec::new(),
                            scored: 0,
                        });
                        jobs.len() - 1
                    }
                    Err(e) => {
                        unusable.push(format!("{}: job {job_id}: {e}", rule.source.display()));
                        continue;
                    }
                },
            };
            jobs[index].rules.push(ActiveRule {
                rule: Arc::clone(&rule),
                threshold,
                action: config.actions.for_rule(&rule.rule_id).clone(),
                flagged: 0,
            });
        }
    }
    if !unusable.is_empty() && config.fail_on_unsupported {
        return Err(PluginError::new(ErrorKind::Rules, unusable.join("\n")));
    }
    let warnings: Vec<String> = load
        .unsupported
        .iter()
        .map(ToString::to_string)
        .chain(load.warnings.iter().map(ToString::to_string))
        .chain(unusable)
        .collect();
    if jobs.is_empty() {
        let where_ = paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let mut message = format!("no rule in {where_} can run: nothing would be detected");
        for line in &warnings {
            message.push_str("\n  - ");
            message.push_str(line);
        }
        return Err(PluginError::new(ErrorKind::Rules, message));
    }
    Ok((jobs, warnings))
}

/// The model a job's function calls for (from the registry in [`crate::models`]), with the
/// configured settings (the job's own over the global ones over the model's defaults) and the
/// installation's hash seed.
fn build_model(
    def: &JobDef,
    settings: &ModelSettings,
    hash_seed: u64,
) -> Result<Box<dyn Model>, String> {
    let Some(model) = models::registration(def.function) else {
        return Err(format!(
            "function `{}` has no model yet",
            def.function.as_str()
        ));
    };
    let mut config = (model.defaults)();
    config.bucket_span_secs =
        u32::try_from(def.bucket_span_secs).map_err(|_| "bucket_span too long".to_owned())?;
    let job = settings.jobs.get(&def.id);
    for s in job.into_iter().chain([settings]).rev() {
        config.learning_buckets = s.learning_buckets.unwrap_or(config.learning_buckets);
        config.half_life_buckets = s.half_life_buckets.unwrap_or(config.half_life_buckets);
        config.lateness_buckets = s.lateness_buckets.unwrap_or(config.lateness_buckets);
        config.max_entities = s.max_entities.unwrap_or(config.max_entities);
    }
    config.hash_seed = hash_seed;
    (model.build)(config).map_err(|e| e.to_string())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
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
    const HOURS3: i64 = 3 * 3600 * 1000;

    fn rules_dir() -> String {
        format!("{}/../rules", env!("CARGO_MANIFEST_DIR"))
    }

    fn detector(extra: serde_json::Value) -> Detector {
        let mut config = json!({ "rules": [rules_dir()] });
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
                let v = d.evaluate(&event(T0 + b * MIN15 + 60_000, ip, Some(country), None));
                assert_eq!(v, Verdict::PASS, "routine traffic flagged in bucket {b}");
            }
        }
    }

    #[test]
    fn a_never_seen_country_is_flagged_after_learning_with_the_rules_alert_fields() {
        let mut d = detector(json!({}));
        rare_baseline(&mut d, 40);
        let t = T0 + 40 * MIN15 + 5_000;
        let verdict = d.evaluate(&event(t, "175.45.179.109", Some("North Korea"), None));
        let alert = annotated(&verdict).expect("flagged");
        assert_eq!(alert["rule"]["id"], RARE_RULE);
        assert_eq!(alert["event"]["kind"], "alert");
        let score = alert["egresswatch"]["score"].as_f64().unwrap();
        assert!(score >= 75.0, "{score}");
        assert_eq!(alert["egresswatch"]["job_id"], "rare_destination_country");
        assert_eq!(
            alert["egresswatch"]["influencers"]["destination.ip"],
            "175.45.179.109"
        );
        let reason = alert["egresswatch"]["reason"].as_str().unwrap();
        assert!(reason.contains("North Korea seen in 0 of 40"), "{reason}");
        // Routine countries in the same bucket still pass.
        let routine = d.evaluate(&event(t + 1000, "8.8.8.8", Some("United States"), None));
        assert_eq!(routine, Verdict::PASS);
    }

    #[test]
    fn nothing_is_flagged_while_learning_and_metrics_say_so() {
        let mut d = detector(json!({}));
        rare_baseline(&mut d, 10);
        let v = d.evaluate(&event(
            T0 + 10 * MIN15,
            "175.45.179.109",
            Some("North Korea"),
            None,
        ));
        assert_eq!(v, Verdict::PASS);
        let metrics: serde_json::Value = serde_json::from_str(&d.metrics_json()).unwrap();
        assert_eq!(
            metrics["jobs"]["rare_destination_country"]["learning"],
            true
        );
        assert_eq!(metrics["flagged"], 0);
    }

    #[test]
    fn shipping_agents_and_non_network_events_are_ignored() {
        let mut d = detector(json!({}));
        rare_baseline(&mut d, 40);
        let t = T0 + 40 * MIN15;
        let mut agent: serde_json::Value =
            serde_json::from_str(&event(t, "175.45.179.109", Some("North Korea"), None)).unwrap();
        agent["process"] = json!({"name": "Filebeat.exe"});
        assert_eq!(d.evaluate(&agent.to_string()), Verdict::PASS);
        let mut process: serde_json::Value =
            serde_json::from_str(&event(t, "175.45.179.109", Some("North Korea"), None)).unwrap();
        process["event"]["category"] = json!(["process"]);
        assert_eq!(d.evaluate(&process.to_string()), Verdict::PASS);
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
        for b in 0..40 {
            for ip in ["8.8.8.8", "78.46.34.21", "52.95.1.1"] {
                assert_eq!(
                    d.evaluate(&event(T0 + b * MIN15, ip, None, None)),
                    Verdict::PASS
                );
            }
        }
        let t = T0 + 40 * MIN15;
        let alert =
            annotated(&d.evaluate(&event(t, "175.45.179.109", None, None))).expect("flagged");
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
            assert_eq!(d.evaluate(&e.to_string()), Verdict::PASS, "{ip:?}");
        }
        std::fs::remove_file(db).unwrap();
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
        assert_eq!(err.kind, ErrorKind::Geo);
        assert!(err.message.contains("/nope/x.mmdb"), "{}", err.message);
    }

    /// 25 3h buckets in which 30 destinations receive a few kB to a few MB each.
    fn bytes_baseline(d: &mut Detector, buckets: i64) {
        for b in 0..buckets {
            for k in 0..30i64 {
                let ip = format!("52.95.{}.{}", 10 + k, 1 + b % 5);
                let bytes = 2_000 * (1 + (k * 7 + b * 3) % 40) * (1 + k % 5).pow(2);
                let v = d.evaluate(&event(
                    T0 + b * HOURS3 + k * 60_000,
                    &ip,
                    Some("Ireland"),
                    Some(json!(bytes)),
                ));
                assert_eq!(v, Verdict::PASS, "baseline flagged at bucket {b}");
            }
        }
    }

    #[test]
    fn two_gigabytes_to_a_new_ip_are_flagged_at_the_crossing_event() {
        let mut d = detector(json!({}));
        bytes_baseline(&mut d, 25);
        let start = T0 + 25 * HOURS3;
        let ip = "93.184.216.34";
        for i in 0..5 {
            let v = d.evaluate(&event(
                start + i * 1000,
                ip,
                Some("Ireland"),
                Some(json!(10_000)),
            ));
            assert_eq!(v, Verdict::PASS, "small chunk {i} flagged");
        }
        let mut first_flag = None;
        for i in 0..10 {
            let v = d.evaluate(&event(
                start + 60_000 + i * 1000,
                ip,
                Some("Ireland"),
                Some(json!(200_000_000)),
            ));
            if let Some(alert) = annotated(&v) {
                assert_eq!(alert["rule"]["id"], EXFIL_RULE);
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
    fn a_destination_that_always_receives_gigabytes_is_not_flagged() {
        let mut d = detector(json!({}));
        let backup = "52.216.1.1";
        for b in 0..70 {
            for k in 0..30i64 {
                let ip = format!("52.95.{}.1", 10 + k);
                let v = d.evaluate(&event(
                    T0 + b * HOURS3 + k * 1000,
                    &ip,
                    None,
                    Some(json!(50_000 + k * 1000)),
                ));
                assert_eq!(v, Verdict::PASS);
            }
            for chunk in 0..20 {
                let t = T0 + b * HOURS3 + 60_000 + chunk * 1000;
                let v = d.evaluate(&event(t, backup, None, Some(json!(100_000_000))));
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
                let v = d.evaluate(&event(t + i, ip, None, Some(json!(5_000_000_000_u64))));
                assert_eq!(v, Verdict::PASS, "{ip} flagged");
            }
        }
        for bytes in [
            None,
            Some(json!("lots")),
            Some(json!(null)),
            Some(json!(-5)),
        ] {
            let v = d.evaluate(&event(t, "93.184.217.1", None, bytes.clone()));
            assert_eq!(v, Verdict::PASS, "{bytes:?}");
        }
    }

    #[test]
    fn the_hash_seed_reaches_the_models_and_a_loaded_state_keeps_its_own() {
        let config = |seed| {
            let config: DetectorConfig =
                serde_json::from_value(json!({ "rules": [rules_dir()] })).unwrap();
            Detector::with_options(config, BuildOptions { hash_seed: seed }).unwrap()
        };
        let (mut a, mut b) = (config(1), config(2));
        rare_baseline(&mut a, 40);
        rare_baseline(&mut b, 40);
        let (state_a, state_b) = (a.save_state().unwrap(), b.save_state().unwrap());
        assert_ne!(state_a, state_b, "the seed is part of each model's state");
        // A detector built with another seed that loads `a`'s state saves `a`'s keys again.
        let mut c = config(3);
        c.load_state(&state_a).unwrap();
        assert_eq!(c.save_state().unwrap(), state_a);
        let e = event(T0 + 40 * MIN15, "175.45.179.109", Some("North Korea"), None);
        assert_eq!(a.evaluate(&e), c.evaluate(&e));
        assert!(annotated(&b.evaluate(&e)).is_some());
    }

    #[test]
    fn state_round_trip_continues_where_it_stopped() {
        let mut a = detector(json!({}));
        rare_baseline(&mut a, 40);
        let saved = a.save_state().unwrap();
        let mut b = detector(json!({}));
        b.load_state(&saved).unwrap();
        let e = event(T0 + 40 * MIN15, "175.45.179.109", Some("North Korea"), None);
        assert_eq!(a.evaluate(&e), b.evaluate(&e));
        assert!(annotated(&b.evaluate(&e)).is_some());
        let err = b.load_state(b"garbage").unwrap_err();
        assert_eq!(err.kind, ErrorKind::State);
    }
}
