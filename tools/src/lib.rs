//! egresswatch's offline tools, behind the `egresswatch generate` and `egresswatch replay`
//! subcommands: nothing here runs in a pipeline.
//!
//! - [`generate`]: a seeded generator of realistic traffic with labelled attacks.
//! - [`replay`]: replaying recorded flow logs (ECS, Zeek, Suricata, Argus) with a report.

pub mod generate;
pub mod replay;
