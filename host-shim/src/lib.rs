//! The `egresswatch` host: finds and loads the detector plugin, reads the configuration, moves
//! NDJSON events between inputs and outputs in batches, and reports what it did.
//!
//! The host owns every piece of I/O; the plugin only sees batches of event text and returns
//! verdicts. The host's first duty is not to lose data: every line it reads is written to some
//! output exactly once, in order, whatever the plugin says or does.
//!
//! - [`adapters`]: TCP and Unix socket listeners (inputs) and clients (outputs).
//! - [`config`]: the YAML (or TOML) configuration file.
//! - [`loader`]: loading the plugin library with version and layout checks.
//! - [`engine`]: applying verdicts to batches of lines and writing them to outputs.
//! - [`stream`]: reading lines from a byte stream and driving the engine until EOF or a signal.
//! - [`generate`]: a seeded generator of realistic traffic with labelled attacks.
//! - [`output`]: the named outputs.
//! - [`metrics`]: the metrics snapshot and the Prometheus endpoint.
//! - [`positions`]: the line of each key of the configuration file, for messages.
//! - [`runner`]: `egresswatch run` put together: input, engine, outputs, state, metrics.
//! - [`state`]: the state file's envelope, atomic saves, and setting unusable files aside.
//! - [`replay`]: replaying recorded flow logs (ECS, Zeek, Suricata, Argus) with a report.
//! - [`time`]: RFC 3339 parsing and formatting for the generator and replay.
//! - [`rules_check`]: the table `egresswatch rules check` prints.

pub mod adapters;
pub mod config;
pub mod engine;
pub mod generate;
pub mod loader;
pub mod metrics;
pub mod output;
pub mod positions;
pub mod replay;
pub mod rules_check;
pub mod runner;
pub mod state;
pub mod stream;
pub mod time;
