//! Applying the plugin's verdicts to batches of lines.
//!
//! The [`Engine`] takes complete lines (without terminators), hands the readable ones to the
//! plugin in batches, and writes every line to exactly one output, in input order. Lines the
//! plugin must not see (not UTF-8, longer than the limit) and lines it could not read follow the
//! [`UnreadablePolicy`]; a batch the plugin failed on follows the failure policy (fail open by
//! default). Nothing is dropped.

use std::io;

use abi_stable::std_types::{ROption, RStr};
use egresswatch_plugin_api::{EventStatus, Verdict, DEFAULT_OUTPUT, ERRORS_OUTPUT};

use crate::config::{BatchConfig, UnreadablePolicy};
use crate::loader::Transform;
use crate::output::Outputs;

/// Counters the host keeps; printed on exit.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HostCounters {
    /// Lines read.
    pub lines_in: u64,
    /// Lines that were not valid UTF-8.
    pub not_utf8: u64,
    /// Lines longer than `batch.max_line_bytes`.
    pub oversize: u64,
    /// Lines the plugin could not read (not a JSON object).
    pub unreadable: u64,
    /// Batches the plugin returned an error for (or panicked on).
    pub plugin_errors: u64,
    /// Events the plugin replaced with annotated text.
    pub annotated: u64,
    /// Events the plugin routed to a named output.
    pub routed: u64,
}

/// How the engine treats lines and failures.
#[derive(Debug, Clone, Copy)]
pub struct EnginePolicy {
    /// Batch size and line limit.
    pub batch: BatchConfig,
    /// What to do with lines the detector cannot read.
    pub unreadable: UnreadablePolicy,
    /// Send failed batches to `errors` instead of passing them on.
    pub fail_closed: bool,
}

/// Why a line bypassed the detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bypass {
    NotUtf8,
    Oversize,
}

/// The verdict-applying core of the host.
pub struct Engine {
    transform: Transform,
    policy: EnginePolicy,
    counters: HostCounters,
    /// The output an oversize line is being streamed to, between its first and last fragment.
    open_fragment: Option<&'static str>,
    /// How many of the plugin's warnings have been logged (construction's are logged by the
    /// caller; later ones, such as a kind of alert field that could not be written, here).
    warned: usize,
}

impl Engine {
    /// An engine around a constructed transform.
    pub fn new(transform: Transform, policy: EnginePolicy) -> Self {
        let warned = transform.warnings().into_result().map_or(0, |w| w.len());
        Engine {
            transform,
            policy,
            counters: HostCounters::default(),
            open_fragment: None,
            warned,
        }
    }

    /// Logs the warnings the plugin has added since the last call, once each.
    fn log_new_warnings(&mut self) {
        if let Ok(warnings) = self.transform.warnings().into_result() {
            for warning in warnings.iter().skip(self.warned) {
                tracing::warn!("{warning}");
            }
            self.warned = self.warned.max(warnings.len());
        }
    }

    /// How the engine treats lines and failures.
    pub fn policy(&self) -> &EnginePolicy {
        &self.policy
    }

    /// The host's counters so far.
    pub fn counters(&self) -> &HostCounters {
        &self.counters
    }

    /// The plugin's transform, for metrics and state.
    pub fn transform(&self) -> &Transform {
        &self.transform
    }

    /// The plugin's transform, mutably, for loading state.
    pub fn transform_mut(&mut self) -> &mut Transform {
        &mut self.transform
    }

    /// Processes complete lines (without terminators) and writes each to its output, in order.
    pub fn process(&mut self, lines: &[&[u8]], outputs: &mut Outputs) -> io::Result<()> {
        for chunk in lines.chunks(self.policy.batch.max_events) {
            self.process_batch(chunk, outputs)?;
        }
        Ok(())
    }

    fn process_batch(&mut self, lines: &[&[u8]], outputs: &mut Outputs) -> io::Result<()> {
        self.counters.lines_in += lines.len() as u64;
        let mut readable: Vec<RStr<'_>> = Vec::with_capacity(lines.len());
        let mut bypass: Vec<Option<Bypass>> = Vec::with_capacity(lines.len());
        for line in lines {
            let kind = if line.len() > self.policy.batch.max_line_bytes {
                Some(Bypass::Oversize)
            } else {
                match std::str::from_utf8(line) {
                    Ok(text) => {
                        readable.push(RStr::from_str(text));
                        None
                    }
                    Err(_) => Some(Bypass::NotUtf8),
                }
            };
            match kind {
                Some(Bypass::Oversize) => self.counters.oversize += 1,
                Some(Bypass::NotUtf8) => self.counters.not_utf8 += 1,
                None => {}
            }
            bypass.push(kind);
        }

        let verdicts = if readable.is_empty() {
            Some(Vec::new())
        } else {
            match self
                .transform
                .process(readable.as_slice().into(), crate::time::now_ms())
                .into_result()
                .inspect(|_| self.log_new_warnings())
            {
                Ok(v) if v.len() == readable.len() => Some(v.into_vec()),
                Ok(v) => {
                    tracing::error!(
                        expected = readable.len(),
                        got = v.len(),
                        "plugin returned the wrong number of verdicts; batch passed through"
                    );
                    None
                }
                Err(e) => {
                    tracing::error!(error = %e, events = readable.len(), "plugin failed on a batch");
                    None
                }
            }
        };
        let Some(verdicts) = verdicts else {
            self.counters.plugin_errors += 1;
            let target = if self.policy.fail_closed {
                ERRORS_OUTPUT
            } else {
                DEFAULT_OUTPUT
            };
            for line in lines {
                outputs.write_line(target, line)?;
            }
            return Ok(());
        };

        let mut verdicts = verdicts.into_iter();
        for (line, kind) in lines.iter().zip(bypass) {
            match kind {
                Some(_) => self.write_unreadable(line, outputs)?,
                None => {
                    let verdict = verdicts.next().unwrap_or(Verdict::PASS);
                    self.write_verdict(line, verdict, outputs)?;
                }
            }
        }
        Ok(())
    }

    fn write_verdict(
        &mut self,
        line: &[u8],
        verdict: Verdict,
        outputs: &mut Outputs,
    ) -> io::Result<()> {
        if verdict.status != EventStatus::OK {
            self.counters.unreadable += 1;
            return self.write_unreadable(line, outputs);
        }
        let target = match &verdict.route {
            ROption::RSome(route) => {
                self.counters.routed += 1;
                route.as_str()
            }
            ROption::RNone => DEFAULT_OUTPUT,
        };
        match &verdict.replacement {
            ROption::RSome(text) => {
                self.counters.annotated += 1;
                outputs.write_line(target, text.as_bytes())
            }
            ROption::RNone => outputs.write_line(target, line),
        }
    }

    /// Writes a piece of a line too long to hold in memory (it bypasses the detector as
    /// oversize): raw to `default` or `errors`, or JSON-escaped inside `{"message": ...}` when
    /// wrapping. The pieces of one line must arrive with nothing else between them.
    pub fn write_fragment(
        &mut self,
        data: &[u8],
        first: bool,
        last: bool,
        outputs: &mut Outputs,
    ) -> io::Result<()> {
        let wrap = self.policy.unreadable == UnreadablePolicy::Wrap;
        let target = if first || self.open_fragment.is_none() {
            self.counters.lines_in += 1;
            self.counters.oversize += 1;
            let target = if self.policy.unreadable == UnreadablePolicy::Errors {
                ERRORS_OUTPUT
            } else {
                DEFAULT_OUTPUT
            };
            if wrap {
                outputs.write_partial(target, b"{\"message\":\"")?;
            }
            self.open_fragment = Some(target);
            target
        } else {
            self.open_fragment.unwrap_or(DEFAULT_OUTPUT)
        };
        if wrap {
            let text =
                serde_json::to_string(&String::from_utf8_lossy(data)).map_err(io::Error::other)?;
            let inner = &text[1..text.len() - 1];
            outputs.write_partial(target, inner.as_bytes())?;
        } else {
            outputs.write_partial(target, data)?;
        }
        if last {
            self.close_fragment(outputs)?;
        }
        Ok(())
    }

    /// Ends a line being streamed in fragments, if there is one (at shutdown, when its input
    /// stopped before its end).
    pub fn close_fragment(&mut self, outputs: &mut Outputs) -> io::Result<()> {
        if let Some(target) = self.open_fragment.take() {
            if self.policy.unreadable == UnreadablePolicy::Wrap {
                outputs.write_partial(target, b"\"}")?;
            }
            outputs.finish_line(target)?;
        }
        Ok(())
    }

    fn write_unreadable(&mut self, line: &[u8], outputs: &mut Outputs) -> io::Result<()> {
        match self.policy.unreadable {
            UnreadablePolicy::Pass => outputs.write_line(DEFAULT_OUTPUT, line),
            UnreadablePolicy::Errors => outputs.write_line(ERRORS_OUTPUT, line),
            UnreadablePolicy::Wrap => {
                let text = String::from_utf8_lossy(line);
                let wrapped = serde_json::json!({ "message": text });
                outputs.write_line(DEFAULT_OUTPUT, wrapped.to_string().as_bytes())
            }
        }
    }
}
