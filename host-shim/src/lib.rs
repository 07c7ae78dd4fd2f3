//! The `egresswatch` host: finds and loads the detector plugin, reads the configuration, moves
//! NDJSON events between inputs and outputs in batches, and reports what it did.
//!
//! The host owns every piece of I/O; the plugin only sees batches of event text and returns
//! verdicts. The host's first duty is not to lose data: every line it reads is written to some
//! output exactly once, in order, whatever the plugin says or does.
//!
//! - [`config`]: the YAML (or TOML) configuration file.
//! - [`loader`]: loading the plugin library with version and layout checks.
//! - [`engine`]: applying verdicts to batches of lines and writing them to outputs.
//! - [`input`]: reading lines from a byte stream; TCP and Unix listeners.
//! - [`output`]: the named outputs.
//! - `ack`: acknowledgements from the outputs back to an input that answers its sender.
//! - [`http`]: the HTTP servers (one tokio runtime, hyper), TLS-ready.
//! - [`metrics`]: the metrics registry, output health, `/metrics` and `/health`.
//! - [`run`]: `egresswatch run` put together: input, engine, outputs, state, metrics.
//! - `tls`: TLS for the HTTP input and output (rustls).
//! - [`state`]: the state file's envelope, atomic saves, and setting unusable files aside.

pub(crate) mod ack;
pub mod config;
pub mod counters;
pub mod engine;
pub mod http;
pub mod input;
pub(crate) mod line_buf;
pub mod loader;
pub mod metrics;
pub mod output;
pub mod run;
pub mod state;
pub(crate) mod tls;
