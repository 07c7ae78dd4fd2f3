//! The stable ABI between the `egresswatch` host and its detector plugin.
//!
//! This is the only crate both sides depend on. Everything that crosses the boundary is declared
//! here with [`abi_stable`], so that the host can check, when it loads a plugin, that the plugin
//! was built against a compatible version of this crate and that every type has the layout the
//! host expects. A mismatch is reported as an error by the loader; it never becomes undefined
//! behaviour.
//!
//! # Shape of the interface
//!
//! The surface is small, typed and batch oriented:
//!
//! - [`PluginModRef`] is the root module the plugin exports. It names the plugin; its
//!   [`new`](PluginMod::new) constructor turns the detector configuration (JSON text, the
//!   plugin's schema) plus typed [`BuildOption`]s into a transform, and
//!   [`check_rules`](PluginMod::check_rules) reports on rule files with the same loader and the
//!   same verdict as `new`.
//! - [`Transform`] processes a batch of raw event lines at a clock time given by the host and
//!   returns one [`Verdict`] per line: pass the original bytes unchanged, replace them with new
//!   text, route the event to a named output, or both. The host never re-serialises an event the
//!   plugin passed.
//! - Everything else the host reads is typed: [`Metric`]s (which the host renders for Prometheus
//!   without knowing any name), warnings, the [`RulesReport`], per-event [`ScoreRecord`]s for
//!   tools that need every score, and [`PluginError`]s whose configuration problems carry the
//!   key path at fault ([`ConfigProblem`]). Model state is opaque bytes, which the plugin
//!   writes into a [`StateSink`] the host lends it ([`Transform::save_state_to`]), so that a
//!   save streams.
//!
//! # Growing the interface (library evolution)
//!
//! - [`PluginMod`] is a prefix type with `missing_field(option)`: fields after `new` (its
//!   `last_prefix_field`) may be absent in a plugin built against an older 0.2 release, and the
//!   host sees them as `None`. New fields are only ever appended.
//! - [`Transform`] is a `#[sabi_trait]`: methods after `load_state` may be absent in an older
//!   plugin; each has a default body here (no warnings, no metrics, an
//!   [`ErrorKind::Unsupported`] error for score records, a state save written in one piece).
//!   New methods are appended, each with a default. abi_stable's layout check refuses a
//!   library with fewer methods than the host's (its issue #118), so the host also keeps each
//!   earlier layout ([`baseline`], [`unstreamed`]) and answers for what such a plugin lacks as
//!   these defaults do.
//! - Enums that can grow are either abi_stable `NonExhaustive` enums ([`ErrorKind`],
//!   [`BuildOption`], [`ScoreExtra`]: a value of a variant the reader does not know is seen as
//!   unknown, not misread) or, where a plain byte per event matters, a `u8` newtype with
//!   associated constants ([`EventStatus`], [`MetricKind`], [`RuleStatus`]), the other form
//!   abi_stable documents for field-less enums.
//! - Records are frozen `repr(C)` structs; a [`ScoreRecord`] grows through its list of
//!   [`ScoreExtra`] values, to which new variants can be added.
//!
//! [`baseline`] keeps the smallest layout a 0.2 plugin may have (prefix fields only), and
//! [`unstreamed`] the full layout from before [`Transform::save_state_to`], so that test plugins
//! can prove that such plugins still load and the host degrades gracefully.
//!
//! # Panics
//!
//! A panic must never unwind across the boundary. Plugins wrap every entry point that runs their
//! code in [`catch_panic`], which turns a panic into a [`PluginError`] of kind
//! [`ErrorKind::Panic`]; every such entry point therefore returns an `RResult`.

// `#[sabi_trait]` expands to impl blocks inside a const item, which this lint flags; the
// expansion is abi_stable's and sound.
#![allow(non_local_definitions)]

pub mod files;

use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    nonexhaustive_enum::NonExhaustive,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, ROption, RResult, RSlice, RStr, RString, RVec},
    StableAbi,
};

pub mod baseline;
pub mod sink;
pub mod state_file;
pub mod unstreamed;

pub use sink::{SinkWriter, StateSink, StateSinkMut, StateSink_TO, WriteSink};

/// Name of the output that receives every event not routed elsewhere.
pub const DEFAULT_OUTPUT: &str = "default";

/// Name of the output that receives unreadable events when the host is configured to keep them
/// apart, and failed batches when it fails closed.
pub const ERRORS_OUTPUT: &str = "errors";

/// The root module a plugin exports with `#[export_root_module]`.
///
/// Obtain it on the host side with [`RootModule::load_from_file`] on [`PluginModRef`] (or the
/// loader's equivalent), which checks the ABI version and the layout of every type reachable
/// from here.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(option))]
pub struct PluginMod {
    /// The plugin's name, e.g. `egresswatch-plugin`.
    pub name: extern "C" fn() -> RStr<'static>,
    /// The plugin's own version (its crate version), e.g. `0.1.0`.
    pub version: extern "C" fn() -> RStr<'static>,
    /// Builds a transform from the detector configuration (a JSON object; its schema is the
    /// plugin's) and construction options.
    ///
    /// Returns an error, never panics. A configuration error lists every problem found, each
    /// with its key path ([`PluginError::problems`]). An option the plugin does not know is an
    /// error too, so that a caller never believes an option applied when it did not.
    #[sabi(last_prefix_field)]
    pub new: extern "C" fn(
        config: RStr<'_>,
        options: RSlice<'_, BuildOption_NE>,
    ) -> RResult<TransformBox, PluginError>,
    /// Loads the rule files the configuration names (or those of a [`BuildOption::RulePaths`]
    /// option), with its user-defined jobs, and reports on every file, with the verdict
    /// [`PluginMod::new`] would reach on them. Optional.
    pub check_rules: extern "C" fn(
        config: RStr<'_>,
        options: RSlice<'_, BuildOption_NE>,
    ) -> RResult<RulesReport, PluginError>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "egresswatch_plugin";
    const NAME: &'static str = "egresswatch detector plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// The version of this ABI crate, which is what the loader compares with a plugin's.
pub const ABI_VERSION: &str = env!("CARGO_PKG_VERSION");

/// An owned, type-erased [`Transform`] as returned by [`PluginMod::new`].
pub type TransformBox = Transform_TO<'static, RBox<()>>;

/// The per-batch detector a plugin constructs.
///
/// Implementations must not panic across the boundary; see [`catch_panic`].
#[sabi_trait]
pub trait Transform: Send {
    /// Processes a batch of events, each one raw line without its line terminator, and returns
    /// exactly one verdict per event, in the same order. `now_ms` is the host's clock (ms since
    /// the Unix epoch) for this batch: the plugin reads no clock of its own, so its verdicts are
    /// a function of the events and this time.
    ///
    /// An error means the whole batch failed; the host then applies its failure policy.
    fn process(
        &mut self,
        events: RSlice<'_, RStr<'_>>,
        now_ms: i64,
    ) -> RResult<RVec<Verdict>, PluginError>;

    /// Output names the configured rules may route to, so the host can check its outputs.
    fn routes(&self) -> RResult<RVec<RString>, PluginError>;

    /// Serialises the model state; the format is the plugin's and carries its own version.
    fn save_state(&self) -> RResult<RVec<u8>, PluginError>;

    /// Replaces the model state with one produced by [`Transform::save_state`].
    ///
    /// On error the previous state is kept.
    #[sabi(last_prefix_field)]
    fn load_state(&mut self, state: RSlice<'_, u8>) -> RResult<(), PluginError>;

    /// What construction skipped or doubted (unsupported rules, unknown jobs), one complete
    /// message each, for the host to log.
    fn warnings(&self) -> RResult<RVec<RString>, PluginError> {
        RResult::ROk(RVec::new())
    }

    /// A snapshot of the plugin's metrics.
    fn metrics(&self) -> RResult<RVec<Metric>, PluginError> {
        RResult::ROk(RVec::new())
    }

    /// The score records of the last [`Transform::process`] call, when the transform was built
    /// with [`BuildOption::ScoreRecords`]; empty otherwise. Records are in event order.
    fn take_scores(&mut self) -> RResult<RVec<ScoreRecord>, PluginError> {
        RResult::RErr(PluginError::new(
            ErrorKind::Unsupported,
            "this plugin does not provide score records (Transform::take_scores)",
        ))
    }

    /// Writes the model state, the bytes [`Transform::save_state`] returns, into `sink` as it
    /// is encoded, so that neither side holds it whole. A [`StateSink::write`] error ends the
    /// save with an error. The default, which a plugin without this method gets, saves the state
    /// whole and writes it in one piece.
    fn save_state_to(&self, sink: StateSinkMut<'_>) -> RResult<(), PluginError> {
        let mut sink = sink;
        match self.save_state() {
            RResult::ROk(state) => sink.write(state.as_slice().into()),
            RResult::RErr(e) => RResult::RErr(e),
        }
    }
}

/// An option of [`PluginMod::new`] and [`PluginMod::check_rules`]: what the caller decides
/// about one instance, beside the configuration the user wrote.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
#[sabi(kind(WithNonExhaustive(size = [u64; 8], traits(Debug, Clone, PartialEq))))]
#[non_exhaustive]
pub enum BuildOption {
    /// Directory relative paths in the configuration are resolved against (the host passes the
    /// directory of its configuration file).
    BaseDir(RString),
    /// Secret mixed into the models' key hashes. The host draws one per installation.
    HashSeed(u64),
    /// Flag at this score instead of each rule's `anomaly_threshold`.
    Threshold(f64),
    /// Buckets of data every job needs before it may flag, instead of the configured learning
    /// period (0: no learning period).
    LearningBuckets(u32),
    /// Keep a [`ScoreRecord`] for every scored event, for [`Transform::take_scores`].
    ScoreRecords,
    /// Rule files and folders to load instead of those the configuration names.
    RulePaths(RVec<RString>),
}

impl BuildOption {
    /// Wraps the option for the boundary.
    pub fn wrap(self) -> BuildOption_NE {
        NonExhaustive::new(self)
    }
}

/// What the host does with one event.
///
/// `replacement` and `route` are independent: neither set means pass the original bytes to the
/// default output; a replacement means write that text instead; a route means send the event
/// (original or replaced) to that named output instead of the default one.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    /// Whether the plugin could read the event.
    pub status: EventStatus,
    /// New text for the event (a complete JSON object, no line terminator), if annotated.
    pub replacement: ROption<RString>,
    /// Named output to send the event to instead of `default`, if routed.
    pub route: ROption<RString>,
}

impl Verdict {
    /// A verdict that passes a readable event through unchanged.
    pub const PASS: Verdict = Verdict {
        status: EventStatus::OK,
        replacement: ROption::RNone,
        route: ROption::RNone,
    };

    /// A verdict for an event the plugin could not read; the host passes it through unchanged
    /// or sends it to its errors output.
    pub const UNREADABLE: Verdict = Verdict {
        status: EventStatus::UNREADABLE,
        replacement: ROption::RNone,
        route: ROption::RNone,
    };
}

/// Whether the plugin could read an event (a byte, so that it costs nothing per event; values
/// this host does not know are treated as unreadable).
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventStatus(pub u8);

impl EventStatus {
    /// The event was a JSON object and was evaluated.
    pub const OK: EventStatus = EventStatus(0);
    /// The event was not a JSON object; it was not evaluated.
    pub const UNREADABLE: EventStatus = EventStatus(1);
}

/// One metric sample: a Prometheus family name, its help text and type, labels and a value.
/// The host renders these without knowing any of them.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct Metric {
    /// Family name, e.g. `egresswatch_job_learning` (Prometheus metric name syntax).
    pub name: RString,
    /// One line saying what it counts; the same for every sample of a family.
    pub help: RString,
    /// Counter or gauge.
    pub kind: MetricKind,
    /// Label pairs, in order.
    pub labels: RVec<Label>,
    /// The value.
    pub value: f64,
}

/// A metric label.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// Label name.
    pub name: RString,
    /// Label value.
    pub value: RString,
}

/// The Prometheus type of a [`Metric`].
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricKind(pub u8);

impl MetricKind {
    /// Only goes up (reset at restart).
    pub const COUNTER: MetricKind = MetricKind(0);
    /// Goes up and down.
    pub const GAUGE: MetricKind = MetricKind(1);

    /// The Prometheus `# TYPE` word (`untyped` for a kind this host does not know).
    pub fn prometheus_type(self) -> &'static str {
        match self {
            MetricKind::COUNTER => "counter",
            MetricKind::GAUGE => "gauge",
            _ => "untyped",
        }
    }
}

/// One score a rule's job gave one event, for tools that need every score (replay).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ScoreRecord {
    /// Index of the event in the batch given to the last [`Transform::process`].
    pub event: u32,
    /// The rule's `rule_id`.
    pub rule_id: RString,
    /// The rule's name.
    pub rule_name: RString,
    /// The job that scored the event.
    pub job_id: RString,
    /// The job's ML function (`rare`, `high_sum`, ...).
    pub function: RString,
    /// Event time the model used, ms since the Unix epoch.
    pub time_ms: i64,
    /// Start of the event's bucket, ms since the Unix epoch.
    pub bucket_start_ms: i64,
    /// Score 0-100.
    pub score: f64,
    /// The threshold this rule flags at (its own, or the threshold option).
    pub threshold: f64,
    /// The job was still learning: the event could not be flagged.
    pub learning: bool,
    /// The rule flags this event: not learning and `score >= threshold`.
    pub flagged: bool,
    /// The field the score is about (e.g. `destination.geo.country_name`).
    pub subject_field: RString,
    /// Its value on this event.
    pub subject_value: RString,
    /// The job's numeric field on this event (e.g. `source.bytes`), 1 for counting functions.
    pub value: f64,
    /// What was seen, in the model's terms (share of buckets, running sum, ...).
    pub actual: f64,
    /// What was expected, in the same terms.
    pub typical: f64,
    /// Why, in words a person can act on; only on flagged records (empty otherwise, because
    /// writing it costs more than scoring).
    pub reason: RString,
    /// Further facts; readers skip variants they do not know. Only on flagged records.
    pub extra: RVec<ScoreExtra_NE>,
}

/// A further fact on a [`ScoreRecord`]: the way records grow without changing their layout.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
#[sabi(kind(WithNonExhaustive(size = [u64; 8], traits(Debug, Clone, PartialEq))))]
#[non_exhaustive]
pub enum ScoreExtra {
    /// A model-specific figure behind the score (e.g. `buckets_with_value`, `bucket_sum`).
    Figure {
        /// The figure's name.
        name: RString,
        /// Its value.
        value: f64,
    },
    /// The event is a new alert of its rule (the first flagged event of an episode).
    Alert {
        /// The alert's id, as written at `egresswatch.alert.id`.
        id: RString,
    },
    /// The event is flagged but belongs to an earlier alert of the same rule and key (a
    /// suppressed follower): not a new alert.
    Suppressed {
        /// The id of the alert it belongs to.
        alert_id: RString,
        /// Flagged events of the episode so far, this one included.
        count: u64,
    },
}

impl ScoreExtra {
    /// Wraps the fact for the boundary.
    pub fn wrap(self) -> ScoreExtra_NE {
        NonExhaustive::new(self)
    }
}

/// The report of [`PluginMod::check_rules`].
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct RulesReport {
    /// One entry per file (and per unreadable path given), in load order.
    pub files: RVec<RuleFile>,
    /// Why [`PluginMod::new`] would refuse these rules with this configuration; empty when it
    /// would accept them.
    pub problems: RVec<RString>,
    /// What it would skip or doubt, as [`Transform::warnings`] would say.
    pub warnings: RVec<RString>,
}

/// One rule file in a [`RulesReport`].
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct RuleFile {
    /// The file.
    pub path: RString,
    /// What happened to it.
    pub status: RuleStatus,
    /// `rule_id`, when the file parsed.
    pub rule_id: ROption<RString>,
    /// The rule's name, when the file parsed.
    pub name: ROption<RString>,
    /// Job ids the rule names.
    pub jobs: RVec<RString>,
    /// `anomaly_threshold`.
    pub threshold: ROption<u8>,
    /// Why not supported, or every error of a failed file (one per line).
    pub detail: RString,
}

/// The status of a [`RuleFile`].
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleStatus(pub u8);

impl RuleStatus {
    /// A machine-learning rule naming at least one job with a model: it runs.
    pub const SUPPORTED: RuleStatus = RuleStatus(0);
    /// A valid rule that will not run (another type, or only unknown jobs).
    pub const UNSUPPORTED: RuleStatus = RuleStatus(1);
    /// Its `rule_id` is already defined by an earlier file.
    pub const DUPLICATE: RuleStatus = RuleStatus(2);
    /// Unreadable, not TOML, or not a valid rule.
    pub const FAILED: RuleStatus = RuleStatus(3);

    /// The word for tables.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleStatus::SUPPORTED => "supported",
            RuleStatus::UNSUPPORTED => "unsupported",
            RuleStatus::DUPLICATE => "duplicate",
            RuleStatus::FAILED => "failed",
            _ => "unknown",
        }
    }
}

/// An error crossing the boundary: a kind for programs and a message for people.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct PluginError {
    /// What went wrong, broadly.
    pub kind: ErrorKind_NE,
    /// A complete message naming the file, line and field at fault where there is one.
    pub message: RString,
    /// For configuration errors: every problem found, each with its key path, so that the host
    /// can point at the line of its configuration file.
    pub problems: RVec<ConfigProblem>,
}

/// One problem with the detector configuration.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key path inside the detector configuration (`geoip.databse`,
    /// `actions.rules.<rule id>`, `jobs[2].bucket_span`); empty for the configuration as a whole.
    pub path: RString,
    /// What is wrong with it.
    pub message: RString,
}

impl PluginError {
    /// Builds an error of the given kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        PluginError {
            kind: NonExhaustive::new(kind),
            message: RString::from(message.into()),
            problems: RVec::new(),
        }
    }

    /// A configuration error listing `problems`, each `(key path, message)`.
    pub fn config(problems: impl IntoIterator<Item = (String, String)>) -> Self {
        let problems: RVec<ConfigProblem> = problems
            .into_iter()
            .map(|(path, message)| ConfigProblem {
                path: path.into(),
                message: message.into(),
            })
            .collect();
        let lines: Vec<String> = problems
            .iter()
            .map(|p| match p.path.as_str() {
                "" => p.message.to_string(),
                path => format!("{path}: {}", p.message),
            })
            .collect();
        PluginError {
            kind: NonExhaustive::new(ErrorKind::Config),
            message: match lines.as_slice() {
                [one] => one.clone(),
                many => format!("{} problems:\n  - {}", many.len(), many.join("\n  - ")),
            }
            .into(),
            problems,
        }
    }

    /// The kind, when this build of the ABI knows it.
    pub fn kind(&self) -> Option<ErrorKind> {
        self.kind.as_enum().ok().copied()
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind() {
            Some(kind) => write!(f, "{kind}: {}", self.message),
            None => write!(f, "error: {}", self.message),
        }
    }
}

impl std::error::Error for PluginError {}

/// The broad kind of a [`PluginError`].
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
#[sabi(kind(WithNonExhaustive(size = [u64; 1], traits(Debug, Clone, PartialEq))))]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration or an option is invalid.
    Config,
    /// A rule file could not be loaded or is invalid.
    Rules,
    /// The GeoIP database could not be opened.
    Geo,
    /// Saved state could not be read or written.
    State,
    /// The plugin panicked; the panic was caught at the boundary.
    Panic,
    /// The plugin does not provide what was asked (an older plugin).
    Unsupported,
    /// Anything else.
    Internal,
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorKind::Config => "configuration error",
            ErrorKind::Rules => "rule error",
            ErrorKind::Geo => "GeoIP error",
            ErrorKind::State => "state error",
            ErrorKind::Panic => "plugin panicked",
            ErrorKind::Unsupported => "not supported by this plugin",
            ErrorKind::Internal => "internal error",
        })
    }
}

/// Runs `f`, turning a panic into a [`PluginError`] of kind [`ErrorKind::Panic`] whose message
/// says what was being done (`what`) and carries the panic message.
///
/// Every function a plugin exposes through this ABI that runs its code is wrapped in it.
pub fn catch_panic<T>(
    what: &str,
    f: impl FnOnce() -> Result<T, PluginError>,
) -> RResult<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result.into(),
        Err(payload) => {
            let detail = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            RResult::RErr(PluginError::new(
                ErrorKind::Panic,
                format!("while {what}: {detail}"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catch_panic_turns_a_panic_into_an_error_with_its_message() {
        let result: RResult<(), PluginError> = catch_panic("testing", || panic!("boom {}", 7));
        let err = result.unwrap_err();
        assert_eq!(err.kind(), Some(ErrorKind::Panic));
        assert_eq!(err.message.as_str(), "while testing: boom 7");
    }

    #[test]
    fn catch_panic_passes_results_through() {
        assert_eq!(catch_panic("x", || Ok(3)).unwrap(), 3);
        let err = catch_panic::<()>("x", || Err(PluginError::new(ErrorKind::Config, "bad")));
        assert_eq!(err.unwrap_err().to_string(), "configuration error: bad");
    }

    #[test]
    fn a_config_error_lists_every_problem_with_its_path() {
        let err = PluginError::config([
            ("geoip.databse".to_owned(), "unknown key".to_owned()),
            (String::new(), "no rule can run".to_owned()),
        ]);
        assert_eq!(err.kind(), Some(ErrorKind::Config));
        assert_eq!(err.problems.len(), 2);
        assert_eq!(err.problems[0].path.as_str(), "geoip.databse");
        assert!(
            err.message
                .contains("geoip.databse: unknown key\n  - no rule can run"),
            "{}",
            err.message
        );
    }

    #[test]
    fn options_round_trip_through_their_boundary_form() {
        let wrapped = BuildOption::Threshold(50.0).wrap();
        assert_eq!(wrapped.as_enum().ok(), Some(&BuildOption::Threshold(50.0)));
        assert_eq!(MetricKind(9).prometheus_type(), "untyped");
        assert_eq!(RuleStatus::DUPLICATE.as_str(), "duplicate");
    }
}
