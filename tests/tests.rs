//! Integration tests of the `egresswatch` program: one binary, one module per area.

mod util;

mod cli;
mod config;
mod delivery;
mod disk_buffer;
mod dist;
mod golden;
mod hardening;
mod hostile;
mod http_delivery;
mod inprocess;
mod inputs;
mod loading;
mod metrics;
mod order;
mod passthrough;
mod pipeline;
mod reload;
mod replay;
mod tls;
