//! The detector's configuration: the `detector:` section of the host's config file, which the
//! host hands over as JSON text, and the construction options that come beside it.
//!
//! ```yaml
//! detector:
//!   rules: [rules/]                 # files and folders of Elastic detection-rules TOML
//!   fail_on_unsupported: false      # true: a rule of another type or unknown job is fatal
//!   geoip:
//!     database: data/geo/geo-whois-asn-country.mmdb
//!     cache_entries: 65536
//!   actions:
//!     default: { annotate: true }   # what a flagged event gets unless its rule says otherwise
//!     rules:
//!       cc653d77-ddd2-45b1-9197-c75ad19df66c: { annotate: true, route: anomalies }
//!   models:
//!     learning_buckets: 20
//!     lateness_buckets: 1
//!   allow_destinations: [198.51.100.0/24]
//!   jobs: []                        # extra or overriding job definitions
//!   threads: auto                   # 1, 2, ... or auto (see [`Threads`])
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::catalog::JobDef;
use crate::models::ModelConfig;
use crate::suppression::Suppress;

/// Construction options: what the caller decides about one detector instance, beside the
/// configuration the user wrote. The ABI's [`BuildOption`](egresswatch_plugin_api::BuildOption)s
/// map onto these one to one (see [`crate::export`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BuildOptions {
    /// Directory relative paths in the configuration are resolved against (the host passes its
    /// configuration file's directory); the working directory when unset.
    pub base_dir: Option<PathBuf>,
    /// Secret mixed into every model's key hashes, so that nobody who does not know it can aim
    /// hash collisions at the baseline. The host draws one at random; a model's saved state
    /// keeps the seed it was built with, so a loaded state goes on with its own.
    pub hash_seed: u64,
    /// Flag at this score instead of each rule's `anomaly_threshold`.
    pub threshold: Option<f64>,
    /// Learning period of every job, in buckets, instead of the configured one.
    pub learning_buckets: Option<u32>,
    /// Keep a score record for every scored event (see [`crate::Detector::take_scores`]).
    pub score_records: bool,
    /// Rule files and folders to load instead of the configuration's `rules`.
    pub rule_paths: Option<Vec<PathBuf>>,
}

impl BuildOptions {
    /// Resolves a configured path against [`BuildOptions::base_dir`].
    pub fn resolve(&self, path: &Path) -> PathBuf {
        match &self.base_dir {
            Some(base) if path.is_relative() => base.join(path),
            _ => path.to_owned(),
        }
    }
}

/// One problem with the configuration: the dotted key path at fault (empty for the whole
/// section) and what is wrong.
pub type Problem = (String, String);

/// Configuration of the detector.
///
/// Parsed by [`DetectorConfig::parse`], which reports every unknown key rather than only the
/// first (so the structs here do not deny unknown fields themselves), and checked as a whole by
/// [`DetectorConfig::validate`].
#[derive(Debug, Clone, Deserialize)]
pub struct DetectorConfig {
    /// Rule files and folders (folders are read recursively for `*.toml`).
    #[serde(default = "default_rules")]
    pub rules: Vec<PathBuf>,
    /// Make an unsupported rule (another type, or only unknown jobs) a startup error.
    #[serde(default)]
    pub fail_on_unsupported: bool,
    /// Job definitions added to, or replacing, the built-in catalog.
    #[serde(default)]
    pub jobs: Vec<JobDef>,
    /// GeoIP enrichment of destinations: on with the bundled database unless configured;
    /// `geoip: off` turns it off.
    #[serde(default, deserialize_with = "geoip_setting")]
    pub geoip: GeoIpConfig,
    /// What happens to a flagged event.
    #[serde(default)]
    pub actions: ActionsConfig,
    /// Learning, forgetting and memory settings of every model.
    #[serde(default)]
    pub models: ModelSettings,
    /// Destination networks never analysed (backup targets, known partners), as CIDRs.
    #[serde(default)]
    pub allow_destinations: Vec<String>,
    /// The event-time field; events without a readable one use the host's clock.
    #[serde(default = "default_time_field")]
    pub time_field: String,
    /// Threads a batch of events is evaluated on.
    #[serde(default)]
    pub threads: Threads,
}

fn default_rules() -> Vec<PathBuf> {
    vec![PathBuf::from("rules")]
}

fn default_time_field() -> String {
    egresswatch_common::names::fields::TIMESTAMP.to_owned()
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            rules: default_rules(),
            fail_on_unsupported: false,
            jobs: Vec::new(),
            geoip: GeoIpConfig::default(),
            actions: ActionsConfig::default(),
            models: ModelSettings::default(),
            allow_destinations: Vec::new(),
            time_field: default_time_field(),
            threads: Threads::default(),
        }
    }
}

/// `threads:`, the threads a batch of events is evaluated on: the calling thread, which runs
/// the filters and models in event order, and `n - 1` helpers that scan events ahead of it
/// (the scan is stateless; verdicts are the same whatever the number). The calling thread
/// scans too whenever no scanned event is waiting, so the work balances itself.
///
/// `auto` (the default) is 2 when the machine has two cores or more, 1 otherwise: the models'
/// part runs on the calling thread alone, so beyond one helper there is little to gain. A
/// number from 1 ([`Threads::MAX`] at most) sets it; 1 runs everything on the calling thread,
/// and no helper is ever started. Helpers are started on the first batch large enough to share
/// ([`crate::Detector::process`]); one event at a time (the C face) never starts one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Threads {
    /// As many as help on this machine.
    #[default]
    Auto,
    /// This many (at least 1).
    Count(u16),
}

impl Threads {
    /// The most threads `threads:` accepts.
    pub const MAX: u16 = 64;

    /// The number of threads to use on this machine.
    pub fn resolve(self) -> usize {
        match self {
            Threads::Count(n) => usize::from(n),
            Threads::Auto => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(2),
        }
    }
}

impl Threads {
    /// A warning when more threads are set than the machine has cores: they would take turns
    /// on the cores, and each batch would wait for a helper that is not running.
    pub fn oversubscribed(self) -> Option<String> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        match self {
            Threads::Count(n) if usize::from(n) > cores => Some(format!(
                "threads: {n}, but this machine has {cores} core(s): more threads than cores \
                 only make the batch wait for helpers that are not running (`auto` uses what \
                 there is)"
            )),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Threads {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Setting;
        impl serde::de::Visitor<'_> for Setting {
            type Value = Threads;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(
                    f,
                    "`auto` or a number of threads from 1 to {}",
                    Threads::MAX
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Threads, E> {
                match v {
                    "auto" => Ok(Threads::Auto),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Threads, E> {
                match u16::try_from(v) {
                    Ok(n @ 1..=Threads::MAX) => Ok(Threads::Count(n)),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Unsigned(v), &self)),
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Threads, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::invalid_value(serde::de::Unexpected::Signed(v), &self)),
                }
            }
        }
        d.deserialize_any(Setting)
    }
}

impl DetectorConfig {
    /// Parses the configuration from JSON text. Unknown keys do not stop the parse: they come
    /// back beside the configuration, each with its path, so that [`DetectorConfig::validate`]'s
    /// problems can join them. A value of the wrong type does (with its path).
    pub fn parse(text: &str) -> Result<(Self, Vec<Problem>), Vec<Problem>> {
        let mut unknown = Vec::new();
        let mut json = serde_json::Deserializer::from_str(text);
        let result: Result<DetectorConfig, _> = {
            let mut note = |path: serde_ignored::Path<'_>| {
                unknown.push((key_path(&path), "unknown key".to_owned()));
            };
            let ignored = serde_ignored::Deserializer::new(&mut json, &mut note);
            serde_path_to_error::deserialize(ignored)
        };
        let mut problems = unknown;
        match result.map(|config| (config, json.end())) {
            Ok((config, Ok(()))) => Ok((config, problems)),
            Ok((_, Err(e))) => {
                problems.push((String::new(), without_position(&e)));
                Err(problems)
            }
            Err(e) => {
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                problems.push((path, without_position(e.inner())));
                Err(problems)
            }
        }
    }
}

/// A serde path as a dotted key path with `[i]` for sequence items (`jobs[0].function`).
fn key_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        Path::Map { parent, key } => match key_path(parent) {
            p if p.is_empty() => key.clone(),
            p => format!("{p}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_path(parent),
    }
}

/// serde_json's message without its " at line L column C" (a position in the JSON text the
/// host made, which means nothing to the person who wrote the YAML).
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(cut) if e.line() > 0 => text[..cut].to_owned(),
        _ => text,
    }
}

/// GeoIP enrichment settings.
#[derive(Debug, Clone, Deserialize)]
pub struct GeoIpConfig {
    /// False for `geoip: off`: events must carry `destination.geo.country_name` themselves.
    #[serde(skip, default = "enabled")]
    pub enabled: bool,
    /// A MaxMind DB file: GeoIP2/GeoLite2 Country or City, or ip-location-db's country layout.
    /// Without one, the database bundled with egresswatch (countries) is used.
    #[serde(default)]
    pub database: Option<PathBuf>,
    /// Entries in the lookup cache, for IPv4 addresses and as many for IPv6 (rounded up to a
    /// power of two).
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
}

fn default_cache_entries() -> usize {
    crate::geo::DEFAULT_CACHE_CAPACITY
}

fn enabled() -> bool {
    true
}

/// `geoip:` as a table, or `off` (also `false`) to turn GeoIP off.
fn geoip_setting<'de, D: serde::Deserializer<'de>>(d: D) -> Result<GeoIpConfig, D::Error> {
    struct Setting;
    impl<'de> serde::de::Visitor<'de> for Setting {
        type Value = GeoIpConfig;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a table (database, cache_entries) or `off`")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<GeoIpConfig, E> {
            match v {
                "off" => Ok(GeoIpConfig {
                    enabled: false,
                    ..GeoIpConfig::default()
                }),
                other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
            }
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<GeoIpConfig, E> {
            Ok(GeoIpConfig {
                enabled: v,
                ..GeoIpConfig::default()
            })
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<GeoIpConfig, A::Error> {
            GeoIpConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_any(Setting)
}

impl Default for GeoIpConfig {
    fn default() -> Self {
        GeoIpConfig {
            enabled: true,
            database: None,
            cache_entries: default_cache_entries(),
        }
    }
}

/// What happens to a flagged event: the default, and per rule (by `rule_id`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ActionsConfig {
    /// The action of rules not listed under `rules`.
    #[serde(default)]
    pub default: Action,
    /// Actions by `rule_id`.
    #[serde(default)]
    pub rules: BTreeMap<String, Action>,
}

impl ActionsConfig {
    /// The action for a rule.
    pub fn for_rule(&self, rule_id: &str) -> &Action {
        self.rules.get(rule_id).unwrap_or(&self.default)
    }
}

/// One action: annotate the event with alert fields, route it to a named output, or both.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Action {
    /// Add the alert fields to the event.
    #[serde(default = "default_annotate")]
    pub annotate: bool,
    /// Send the event to this named output instead of `default`.
    #[serde(default)]
    pub route: Option<String>,
    /// Which flagged events are alerts: one per key and bucket (default), per window, or all.
    #[serde(default)]
    pub suppress: Suppress,
}

fn default_annotate() -> bool {
    true
}

impl Default for Action {
    fn default() -> Self {
        Action {
            annotate: default_annotate(),
            route: None,
            suppress: Suppress::default(),
        }
    }
}

/// Learning, forgetting and memory settings; unset keys keep each model's defaults. The same
/// type holds the global settings and, under `jobs`, each job's overrides of them (a job's own
/// `jobs` is refused by [`DetectorConfig::validate`]).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ModelSettings {
    /// Buckets of data a model needs before it may flag anything (default 20).
    #[serde(default)]
    pub learning_buckets: Option<u32>,
    /// Half-life of history, in buckets.
    #[serde(default)]
    pub half_life_buckets: Option<f64>,
    /// Buckets behind the newest that still accept late events (default 1).
    #[serde(default)]
    pub lateness_buckets: Option<u32>,
    /// Most entities (values, destinations) tracked per job.
    #[serde(default)]
    pub max_entities: Option<usize>,
    /// Per-job overrides of the settings above, by job id.
    #[serde(default)]
    pub jobs: BTreeMap<String, ModelSettings>,
}

impl ModelSettings {
    /// Applies these settings to a model's defaults for `job_id`: the job's own entries over
    /// the global ones, then the options that override every job.
    pub fn tune(&self, job_id: &str, config: &mut ModelConfig, options: &BuildOptions) {
        for layer in [Some(self), self.jobs.get(job_id)].into_iter().flatten() {
            config.learning_buckets = layer.learning_buckets.unwrap_or(config.learning_buckets);
            config.half_life_buckets = layer.half_life_buckets.unwrap_or(config.half_life_buckets);
            config.lateness_buckets = layer.lateness_buckets.unwrap_or(config.lateness_buckets);
            config.max_entities = layer.max_entities.unwrap_or(config.max_entities);
        }
        config.learning_buckets = options.learning_buckets.unwrap_or(config.learning_buckets);
        config.hash_seed = options.hash_seed;
    }

    /// Whether these settings set the key named `field` (a [`ModelConfig`] field name).
    pub(crate) fn sets(&self, field: &str) -> bool {
        match field {
            "learning_buckets" => self.learning_buckets.is_some(),
            "half_life_buckets" => self.half_life_buckets.is_some(),
            "lateness_buckets" => self.lateness_buckets.is_some(),
            "max_entities" => self.max_entities.is_some(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unknown_key_is_reported_with_its_path_and_the_config_still_parses() {
        let (config, unknown) = DetectorConfig::parse(
            r#"{"geoip": {"databse": "x"}, "jobs": [{"id": "a", "function": "rare",
                "by_field_name": "f", "bucket_span": "15m"}],
                "models": {"jobs": {"a": {"learning_bucket": 3}}}, "typo": 1}"#,
        )
        .unwrap();
        let paths: Vec<&str> = unknown.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            ["geoip.databse", "models.jobs.a.learning_bucket", "typo"]
        );
        assert_eq!(config.jobs.len(), 1);
    }

    #[test]
    fn threads_is_auto_by_default_a_number_from_one_or_auto_and_nothing_else() {
        let threads = |text: &str| DetectorConfig::parse(text).map(|(c, _)| c.threads);
        assert_eq!(threads("{}").unwrap(), Threads::Auto);
        assert_eq!(threads(r#"{"threads": "auto"}"#).unwrap(), Threads::Auto);
        assert_eq!(threads(r#"{"threads": 1}"#).unwrap(), Threads::Count(1));
        assert_eq!(threads(r#"{"threads": 64}"#).unwrap(), Threads::Count(64));
        assert_eq!(Threads::Count(3).resolve(), 3);
        assert_eq!(Threads::Auto.oversubscribed(), None);
        assert_eq!(Threads::Count(1).oversubscribed(), None);
        let warning = Threads::Count(64)
            .oversubscribed()
            .expect("64 threads on this machine");
        assert!(warning.contains("threads: 64"), "{warning}");
        let auto = Threads::Auto.resolve();
        assert!((1..=2).contains(&auto), "auto resolved to {auto}");
        for bad in ["0", "65", "-1", "1.5", r#""two""#, "true"] {
            let problems = threads(&format!(r#"{{"threads": {bad}}}"#)).unwrap_err();
            assert_eq!(problems[0].0, "threads", "{bad}: {problems:?}");
            assert!(
                problems[0].1.contains("`auto` or a number"),
                "{bad}: {problems:?}"
            );
        }
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_path_without_a_json_position() {
        let problems =
            DetectorConfig::parse(r#"{"models": {"jobs": {"a": {"max_entities": "lots"}}}}"#)
                .unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, "models.jobs.a.max_entities");
        assert!(!problems[0].1.contains("column"), "{}", problems[0].1);
    }
}
