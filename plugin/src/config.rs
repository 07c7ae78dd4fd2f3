//! The detector's configuration: the `detector:` section of the host's config file, which the
//! host hands over as JSON text.
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
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::catalog::JobDef;

/// Construction options: what the caller decides about one detector instance, beside the
/// configuration the user wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BuildOptions {
    /// Secret mixed into every model's key hashes, so that nobody who does not know it can aim
    /// hash collisions at the baseline. The host draws one at random; a model's saved state
    /// keeps the seed it was built with, so a loaded state goes on with its own.
    pub hash_seed: u64,
}

/// Configuration of the detector.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorConfig {
    /// Directory relative paths are resolved against; the host sets it to the directory of its
    /// config file.
    #[serde(default)]
    pub base_dir: Option<PathBuf>,
    /// Rule files and folders (folders are read recursively for `*.toml`).
    #[serde(default = "default_rules")]
    pub rules: Vec<PathBuf>,
    /// Make an unsupported rule (another type, or only unknown jobs) a startup error.
    #[serde(default)]
    pub fail_on_unsupported: bool,
    /// Job definitions added to, or replacing, the built-in catalog.
    #[serde(default)]
    pub jobs: Vec<JobDef>,
    /// GeoIP enrichment of destinations.
    #[serde(default)]
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
    /// The event-time field; events without a readable one use the time they are processed.
    #[serde(default = "default_time_field")]
    pub time_field: String,
}

fn default_rules() -> Vec<PathBuf> {
    vec![PathBuf::from("rules")]
}

fn default_time_field() -> String {
    "@timestamp".to_owned()
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            base_dir: None,
            rules: default_rules(),
            fail_on_unsupported: false,
            jobs: Vec::new(),
            geoip: GeoIpConfig::default(),
            actions: ActionsConfig::default(),
            models: ModelSettings::default(),
            allow_destinations: Vec::new(),
            time_field: default_time_field(),
        }
    }
}

impl DetectorConfig {
    /// Resolves a configured path against [`DetectorConfig::base_dir`].
    pub fn resolve(&self, path: &Path) -> PathBuf {
        match &self.base_dir {
            Some(base) if path.is_relative() => base.join(path),
            _ => path.to_owned(),
        }
    }
}

/// GeoIP enrichment settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoIpConfig {
    /// A MaxMind DB file: GeoIP2/GeoLite2 Country or City, or ip-location-db's country layout.
    /// Without one, events must carry `destination.geo.country_name` themselves.
    #[serde(default)]
    pub database: Option<PathBuf>,
    /// Entries in the lookup cache (rounded up to a power of two).
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
}

fn default_cache_entries() -> usize {
    crate::geo::DEFAULT_CACHE_CAPACITY
}

impl Default for GeoIpConfig {
    fn default() -> Self {
        GeoIpConfig {
            database: None,
            cache_entries: default_cache_entries(),
        }
    }
}

/// What happens to a flagged event: the default, and per rule (by `rule_id`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
pub struct Action {
    /// Add the alert fields to the event.
    #[serde(default = "default_annotate")]
    pub annotate: bool,
    /// Send the event to this named output instead of `default`.
    #[serde(default)]
    pub route: Option<String>,
}

fn default_annotate() -> bool {
    true
}

impl Default for Action {
    fn default() -> Self {
        Action {
            annotate: default_annotate(),
            route: None,
        }
    }
}

/// Learning, forgetting and memory settings; unset keys keep each model's defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
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
