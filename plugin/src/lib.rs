//! The egresswatch detector, loaded by the host as a plugin.
//!
//! Rules name jobs, jobs run models, models score events, and scores at or above a rule's
//! threshold become verdicts: annotate the event with alert fields, route it to a named output,
//! or both. The crate is pure: its only I/O is reading the files its configuration names (rules,
//! GeoIP database) when it is constructed. Events come in as text and verdicts go out as values.
//!
//! The crate builds twice: as a `cdylib` that exports the root module of
//! [`egresswatch_plugin_api`] (see [`export`]), and as an `rlib` so that tests and benchmarks can
//! drive [`Detector`] in-process and measure what the ABI costs.

pub mod alert;
pub mod capi;
pub mod catalog;
pub mod check;
pub mod config;
pub mod detector;
pub mod export;
pub mod fields;
pub mod geo;
pub mod models;
pub mod net;
pub mod rules;
pub mod suppression;
pub mod time;

pub use config::DetectorConfig;
pub use detector::Detector;
