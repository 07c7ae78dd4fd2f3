//! Named outputs: where lines go once the detector has spoken.
//!
//! Standard output and files are buffered writers. TCP and Unix socket outputs are
//! [`SocketWriter`]s: they keep the block being written until the peer has taken all of it,
//! reconnect with backoff when it goes away, and block meanwhile (backpressure), so nothing is
//! dropped.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use egresswatch_plugin_api::DEFAULT_OUTPUT;

mod socket;

use crate::config::{HostConfig, OutputConfig};
use crate::metrics::Metrics;
use socket::{SocketWriter, Target};

/// Size of each output's write buffer.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// The set of named outputs, each a buffered writer, with per-output line counters.
pub(crate) struct Outputs {
    outputs: BTreeMap<String, Output>,
}

struct Output {
    writer: Box<dyn Write + Send>,
    lines: u64,
    reconnects: Option<Arc<AtomicU64>>,
}

impl Outputs {
    /// Opens every output the configuration names; `default` is standard output unless
    /// configured otherwise. Socket outputs that cannot deliver give up a grace period after
    /// `stop` is set instead of retrying for ever. Each output reports its health to `metrics`.
    pub(crate) fn open(
        config: &HostConfig,
        stop: &Arc<AtomicBool>,
        metrics: &Metrics,
    ) -> io::Result<Self> {
        let mut outputs = Outputs {
            outputs: BTreeMap::new(),
        };
        if !config.outputs.contains_key(DEFAULT_OUTPUT) {
            outputs.insert(DEFAULT_OUTPUT, Box::new(io::stdout()));
            metrics.output(DEFAULT_OUTPUT).set_up(true);
        }
        for (name, output) in &config.outputs {
            let target = match output {
                OutputConfig::Tcp { address } => Some(Target::Tcp(address.clone())),
                OutputConfig::Unix { path } => Some(Target::Unix(config.resolve(path))),
                _ => None,
            };
            if let Some(target) = target {
                let mut writer =
                    SocketWriter::new(name, target, Arc::clone(stop), metrics.output(name));
                writer.probe();
                let reconnects = writer.reconnects();
                outputs.outputs.insert(
                    name.clone(),
                    Output {
                        writer: Box::new(writer),
                        lines: 0,
                        reconnects: Some(reconnects),
                    },
                );
                continue;
            }
            let writer: Box<dyn Write + Send> = match output {
                OutputConfig::Stdout => Box::new(io::stdout()),
                OutputConfig::File { path } => {
                    let path = config.resolve(path);
                    let file = OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)
                        .map_err(|e| {
                            io::Error::new(
                                e.kind(),
                                format!("output {name}: cannot open {}: {e}", path.display()),
                            )
                        })?;
                    Box::new(file)
                }
                OutputConfig::Tcp { .. } | OutputConfig::Unix { .. } => continue,
            };
            outputs.insert(name, writer);
            metrics.output(name).set_up(true);
        }
        Ok(outputs)
    }

    /// Builds outputs from writers, for tests.
    #[cfg(test)]
    pub(crate) fn from_writers(writers: Vec<(String, Box<dyn Write + Send>)>) -> Self {
        let mut outputs = Outputs {
            outputs: BTreeMap::new(),
        };
        for (name, writer) in writers {
            outputs.insert(&name, writer);
        }
        outputs
    }

    fn insert(&mut self, name: &str, writer: Box<dyn Write + Send>) {
        self.outputs.insert(
            name.to_owned(),
            Output {
                writer: Box::new(BufWriter::with_capacity(WRITE_BUFFER_BYTES, writer)),
                lines: 0,
                reconnects: None,
            },
        );
    }

    /// Writes one line (without terminator) and a newline to the named output, or to `default`
    /// when there is no output of that name.
    pub(crate) fn write_line(&mut self, name: &str, line: &[u8]) -> io::Result<()> {
        let output = self.get(name)?;
        output.writer.write_all(line)?;
        output.writer.write_all(b"\n")?;
        output.lines += 1;
        Ok(())
    }

    /// Writes part of a line, without terminator; [`Outputs::finish_line`] ends it.
    pub(crate) fn write_partial(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.get(name)?.writer.write_all(bytes)
    }

    /// Ends a line begun with [`Outputs::write_partial`].
    pub(crate) fn finish_line(&mut self, name: &str) -> io::Result<()> {
        let output = self.get(name)?;
        output.writer.write_all(b"\n")?;
        output.lines += 1;
        Ok(())
    }

    fn get(&mut self, name: &str) -> io::Result<&mut Output> {
        let key = if self.outputs.contains_key(name) {
            name
        } else {
            DEFAULT_OUTPUT
        };
        self.outputs
            .get_mut(key)
            .ok_or_else(|| io::Error::other("no default output"))
    }

    /// Flushes every output.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        for output in self.outputs.values_mut() {
            output.writer.flush()?;
        }
        Ok(())
    }

    /// Reconnections so far, per socket output.
    pub fn reconnects(&self) -> Vec<(String, u64)> {
        self.outputs
            .iter()
            .filter_map(|(name, output)| {
                let n = output.reconnects.as_ref()?.load(Ordering::Relaxed);
                Some((name.clone(), n))
            })
            .collect()
    }

    /// Lines written so far, per output.
    pub(crate) fn counts(&self) -> Vec<(String, u64)> {
        self.outputs
            .iter()
            .map(|(name, output)| (name.clone(), output.lines))
            .collect()
    }
}
