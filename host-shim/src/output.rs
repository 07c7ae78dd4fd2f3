//! Named outputs: where lines go once the detector has spoken.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};

use egresswatch_plugin_api::DEFAULT_OUTPUT;

use crate::config::{HostConfig, OutputConfig};

/// Size of each output's write buffer.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// The set of named outputs, each a buffered writer, with per-output line counters.
pub struct Outputs {
    outputs: BTreeMap<String, Output>,
}

struct Output {
    writer: Box<dyn Write + Send>,
    lines: u64,
}

impl Outputs {
    /// Opens every output the configuration names; `default` is standard output unless
    /// configured otherwise.
    pub fn open(config: &HostConfig) -> io::Result<Self> {
        let mut outputs = Outputs {
            outputs: BTreeMap::new(),
        };
        if !config.outputs.contains_key(DEFAULT_OUTPUT) {
            outputs.insert(DEFAULT_OUTPUT, Box::new(io::stdout()));
        }
        for (name, output) in &config.outputs {
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
            };
            outputs.insert(name, writer);
        }
        Ok(outputs)
    }

    /// Builds outputs from writers, for tests and embedding.
    pub fn from_writers(writers: Vec<(String, Box<dyn Write + Send>)>) -> Self {
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
            },
        );
    }

    /// Whether an output of that name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.outputs.contains_key(name)
    }

    /// Writes one line (without terminator) and a newline to the named output, or to `default`
    /// when there is no output of that name.
    pub fn write_line(&mut self, name: &str, line: &[u8]) -> io::Result<()> {
        let output = match self.outputs.get_mut(name) {
            Some(output) => output,
            None => self
                .outputs
                .get_mut(DEFAULT_OUTPUT)
                .ok_or_else(|| io::Error::other("no default output"))?,
        };
        output.writer.write_all(line)?;
        output.writer.write_all(b"\n")?;
        output.lines += 1;
        Ok(())
    }

    /// Flushes every output.
    pub fn flush(&mut self) -> io::Result<()> {
        for output in self.outputs.values_mut() {
            output.writer.flush()?;
        }
        Ok(())
    }

    /// Lines written so far, per output.
    pub fn counts(&self) -> Vec<(String, u64)> {
        self.outputs
            .iter()
            .map(|(name, output)| (name.clone(), output.lines))
            .collect()
    }
}
