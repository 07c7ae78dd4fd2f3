//! Replay's inputs, streamed: each file (or `-` for standard input; plain or gzip, any
//! [`Format`]) is read line by line and converted to ECS, and the inputs are merged in event-time
//! order. Nothing is read whole: memory is a reorder window per input plus one batch.
//!
//! Ordering: the inputs are merged by event time (ties: the order the inputs were given). Within
//! one input, events up to [`REORDER_EVENTS`] (split between the inputs) out of place are put
//! back in time order (Zeek writes a connection when it ends, stamped with its start); an event
//! further out of place is replayed where it is, late, as a live pipeline would see it. An event
//! without a time takes the time of the event before it in its input.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::presets::{Converter, Format, Line};
use super::ReplaySettings;
use egresswatch_common::time;

/// Events held back for reordering, all inputs together.
pub(crate) const REORDER_EVENTS: usize = 65_536;

/// The name that stands for standard input.
pub(crate) const STDIN: &str = "-";

/// One event to replay.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Event time, epoch ms, for ordering (absent: the previous event's in its input).
    pub time_ms: i64,
    /// 1-based line across the inputs in the order given (see [`Inputs::open`]).
    pub line: u64,
    /// The ECS event as JSON text.
    pub json: String,
}

/// Counts bytes read through it, for progress.
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Opens a file (or standard input for `-`), decompressing gzip (by its magic bytes).
pub fn open(path: &Path, read: Arc<AtomicU64>) -> Result<Box<dyn BufRead + Send>> {
    let raw: Box<dyn Read + Send> = if path.as_os_str() == STDIN {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?)
    };
    let mut buffered = BufReader::with_capacity(1 << 16, Counting { inner: raw, read });
    let magic = buffered
        .fill_buf()
        .with_context(|| format!("reading {}", path.display()))?;
    if magic.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(BufReader::with_capacity(
            1 << 16,
            flate2::bufread::MultiGzDecoder::new(buffered),
        )))
    } else {
        Ok(Box::new(buffered))
    }
}

/// Lines of a file (counted in one pass), for numbering the inputs after it.
fn count_lines(path: &Path) -> Result<u64> {
    let mut reader = open(path, Arc::default())?;
    let mut lines = 0u64;
    let mut last = b'\n';
    loop {
        let buf = reader
            .fill_buf()
            .with_context(|| format!("reading {}", path.display()))?;
        if buf.is_empty() {
            break;
        }
        lines += buf.iter().filter(|&&b| b == b'\n').count() as u64;
        last = buf[buf.len() - 1];
        let n = buf.len();
        reader.consume(n);
    }
    Ok(lines + u64::from(last != b'\n'))
}

/// The `@timestamp` of an ECS line, read without building the event.
#[derive(Deserialize)]
struct EcsTime {
    #[serde(rename = "@timestamp", default)]
    timestamp: Option<serde_json::Value>,
}

/// The event time of an ECS line, for ordering only (the detector reads its own). Fast path:
/// the first `"@timestamp":"..."` in the text; otherwise the line is parsed.
fn ecs_time(line: &str) -> Option<i64> {
    const KEY: &str = "\"@timestamp\":";
    if let Some(at) = line.find(KEY) {
        let rest = line[at + KEY.len()..].trim_start();
        if let Some(text) = rest.strip_prefix('"') {
            if let Some(end) = text.find('"') {
                if let Some(t) = time::parse_rfc3339_ms(&text[..end]) {
                    return Some(t);
                }
            }
        }
    }
    let value = serde_json::from_str::<EcsTime>(line).ok()?.timestamp?;
    time_of(&value)
}

/// Event time of a JSON value: RFC 3339 text or epoch seconds / milliseconds.
pub fn time_of(value: &serde_json::Value) -> Option<i64> {
    match value {
        serde_json::Value::String(s) => time::parse_rfc3339_ms(s),
        serde_json::Value::Number(n) => n.as_f64().and_then(time::epoch_number_ms),
        _ => None,
    }
}

/// One input being read.
struct Source {
    reader: Box<dyn BufRead + Send>,
    path: PathBuf,
    format: Format,
    converter: Option<Converter>,
    /// The first line, read to detect the format, not yet converted.
    pending: Option<String>,
    /// Line number of the last line read in this input (1-based), and the global offset.
    line: u64,
    offset: u64,
    last_time: Option<i64>,
    /// Reorder window: (time, sequence) -> record.
    window: BinaryHeap<Reverse<(i64, u64, RecordBox)>>,
    window_size: usize,
    seq: u64,
    done: bool,
    events: u64,
    /// Unconvertible lines and the first error.
    bad: u64,
    first_error: Option<String>,
    skipped: u64,
    /// Longest line so far, to size the next line's buffer.
    line_capacity: usize,
}

/// A record ordered only by the key beside it in the window.
#[derive(Debug)]
struct RecordBox(Record);

impl PartialEq for RecordBox {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for RecordBox {}
impl PartialOrd for RecordBox {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for RecordBox {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

impl Source {
    /// Reads the next line; `None` at the end.
    fn read_line(&mut self) -> Result<Option<String>> {
        if let Some(line) = self.pending.take() {
            return Ok(Some(line));
        }
        let mut buf = Vec::with_capacity(self.line_capacity);
        let n = self
            .reader
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("reading {}", self.path.display()))?;
        if n == 0 {
            return Ok(None);
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        self.line += 1;
        self.line_capacity = self.line_capacity.max(buf.len() + 2);
        // Valid UTF-8 (the usual case) becomes the line without a copy.
        Ok(Some(String::from_utf8(buf).unwrap_or_else(|e| {
            String::from_utf8_lossy(e.as_bytes()).into_owned()
        })))
    }

    /// Fills the window until it holds `window_size` records or the input ends.
    fn fill(&mut self) -> Result<()> {
        while !self.done && self.window.len() < self.window_size {
            let Some(text) = self.read_line()? else {
                self.done = true;
                break;
            };
            let line = self.offset + self.line;
            let (json, time_ms) = match self.converter.as_mut() {
                None if text.trim().is_empty() => continue,
                None => {
                    let time = ecs_time(&text);
                    (text, time)
                }
                Some(conv) => match conv.convert(&text) {
                    Ok(Line::Event(event, time)) => (event.to_string(), time),
                    Ok(Line::Header) => continue,
                    Ok(Line::Skipped) => {
                        self.skipped += 1;
                        continue;
                    }
                    Err(e) => {
                        self.bad += 1;
                        self.first_error
                            .get_or_insert_with(|| format!("line {}: {e}", self.line));
                        continue;
                    }
                },
            };
            let time_ms = time_ms.or(self.last_time).unwrap_or(i64::MIN);
            if time_ms != i64::MIN {
                self.last_time = Some(time_ms);
            }
            self.seq += 1;
            self.events += 1;
            self.window.push(Reverse((
                time_ms,
                self.seq,
                RecordBox(Record {
                    time_ms,
                    line,
                    json,
                }),
            )));
        }
        Ok(())
    }

    fn head_time(&self) -> Option<i64> {
        self.window.peek().map(|Reverse((t, ..))| *t)
    }

    fn pop(&mut self) -> Result<Option<Record>> {
        let record = self.window.pop().map(|Reverse((_, _, r))| r.0);
        self.fill()?;
        Ok(record)
    }
}

/// The inputs, merged in event-time order.
pub struct Inputs {
    sources: Vec<Source>,
    /// Bytes read so far (compressed bytes for gzip), all inputs.
    pub(crate) bytes_read: Arc<AtomicU64>,
    /// Total bytes of the inputs, when all are regular files.
    pub(crate) total_bytes: Option<u64>,
}

impl Inputs {
    /// Opens the inputs and detects their formats. Input lines are numbered across the inputs
    /// in the order given, which is what labels refer to; when `numbered` is set and there are
    /// several inputs, the lines of all but the last are counted first (so `-` may then only be
    /// the last input).
    pub fn open(
        paths: &[PathBuf],
        format: Format,
        settings: &ReplaySettings,
        numbered: bool,
    ) -> Result<Inputs> {
        if paths.iter().filter(|p| p.as_os_str() == STDIN).count() > 1 {
            bail!("standard input (`-`) can be given once");
        }
        let bytes_read = Arc::new(AtomicU64::new(0));
        let mut total_bytes = Some(0u64);
        let window_size = (REORDER_EVENTS / paths.len().max(1)).max(1024);
        let mut sources = Vec::with_capacity(paths.len());
        let mut offset = 0u64;
        for (i, path) in paths.iter().enumerate() {
            let is_stdin = path.as_os_str() == STDIN;
            total_bytes = match (total_bytes, std::fs::metadata(path)) {
                (Some(t), Ok(m)) if !is_stdin && m.is_file() => Some(t + m.len()),
                _ => None,
            };
            let mut source = Source {
                reader: open(path, Arc::clone(&bytes_read))?,
                path: path.clone(),
                format,
                converter: None,
                pending: None,
                line: 0,
                offset,
                last_time: None,
                window: BinaryHeap::new(),
                window_size,
                seq: 0,
                done: false,
                events: 0,
                bad: 0,
                first_error: None,
                skipped: 0,
                line_capacity: 256,
            };
            // The first non-empty line decides the format, and is then converted as usual
            // (keeping its line number: nothing else is read before it is taken back).
            while let Some(line) = source.read_line()? {
                if !line.trim().is_empty() {
                    source.pending = Some(line);
                    break;
                }
            }
            let first = source.pending.as_deref();
            source.format = match format {
                Format::Auto => match first.map(Format::detect) {
                    Some(Some(f)) => f,
                    None => Format::Ecs,
                    Some(None) => bail!(
                        "{}: cannot tell the format from the first line; use --format",
                        path.display()
                    ),
                },
                f => f,
            };
            if source.format != Format::Ecs {
                source.converter = Some(Converter::new(settings.preset(source.format)));
            }
            if numbered && i + 1 < paths.len() {
                if is_stdin {
                    bail!("with --labels and several inputs, `-` must be the last input (the lines of the inputs before it are counted first)");
                }
                offset += count_lines(path)?;
            }
            source.fill()?;
            sources.push(source);
        }
        Ok(Inputs {
            sources,
            bytes_read,
            total_bytes,
        })
    }

    /// The next event in time order, `None` when every input is done.
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        let next = self
            .sources
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.head_time().map(|t| (t, i)))
            .min();
        match next {
            Some((_, i)) => self.sources[i].pop(),
            None => Ok(None),
        }
    }

    /// Per input: "path (format, N events)".
    pub(crate) fn described(&self) -> Vec<String> {
        self.sources
            .iter()
            .map(|s| {
                format!(
                    "{} ({}, {} events)",
                    s.path.display(),
                    s.format.name(),
                    s.events
                )
            })
            .collect()
    }

    /// Lines that were not events: (reason, count).
    pub fn skipped(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for s in &self.sources {
            if s.skipped > 0 {
                *out.entry(format!("{} records other than flow", s.format.name()))
                    .or_default() += s.skipped;
            }
            if s.bad > 0 {
                out.insert(
                    format!(
                        "{}: unconvertible lines (first: {})",
                        s.path.display(),
                        s.first_error.as_deref().unwrap_or_default()
                    ),
                    s.bad,
                );
            }
        }
        out
    }
}
