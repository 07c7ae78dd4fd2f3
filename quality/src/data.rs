//! Reading the real captures of `../shared/data` into ECS events, through the replay presets
//! (the same Zeek/Argus -> ECS mappings `egresswatch replay` uses), and the edits a scenario
//! makes to them: moving them in time and re-addressing a host.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use egresswatch_common::path::{get as get_path, set as set_path};
use egresswatch_tools::replay::presets::{Converter, Format, Line, Preset};
use serde_json::Value;

/// One flow of a capture, as an ECS event.
#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    /// `@timestamp`, ms since the epoch (relative captures start near 0).
    pub time_ms: i64,
    /// The ECS event.
    pub event: Value,
}

impl Flow {
    /// A string field by dotted path.
    pub fn str_at(&self, path: &str) -> Option<&str> {
        get_path(&self.event, path).and_then(Value::as_str)
    }

    /// A numeric field by dotted path.
    pub fn num_at(&self, path: &str) -> Option<f64> {
        get_path(&self.event, path).and_then(Value::as_f64)
    }

    /// The capture's own label (`label` / Argus `Label`), if it has one.
    pub fn label(&self) -> Option<&str> {
        self.str_at("labels.label")
    }

    /// A copy moved by `shift_ms`, with `from` (as source or destination) replaced by `to`.
    pub fn moved(&self, shift_ms: i64, readdress: Option<(&str, &str)>) -> Flow {
        let mut event = self.event.clone();
        let time_ms = self.time_ms + shift_ms;
        set_path(
            &mut event,
            "@timestamp",
            Value::String(egresswatch_common::time::format_rfc3339_ms(time_ms)),
        );
        if let Some((from, to)) = readdress {
            for side in ["source", "destination"] {
                if get_path(&event, &format!("{side}.ip")).and_then(Value::as_str) == Some(from) {
                    set_path(&mut event, &format!("{side}.ip"), to.into());
                    set_path(&mut event, &format!("{side}.address"), to.into());
                }
            }
        }
        Flow { time_ms, event }
    }
}

/// Where the captures are, and reading them.
#[derive(Debug, Clone)]
pub struct Data {
    root: PathBuf,
}

impl Data {
    /// The data folder (`../shared/data`); fails when it is missing.
    pub fn open(root: &Path) -> Result<Data> {
        if !root.join("README.md").is_file() {
            bail!(
                "{} does not look like the shared data folder (no README.md): pass --data",
                root.display()
            );
        }
        Ok(Data {
            root: root.to_owned(),
        })
    }

    /// A Stratosphere security-datasets capture, e.g. `008-zeek-mixed/data/conn.log.labeled`.
    pub fn stratosphere(&self, rel: &str) -> Result<Vec<Flow>> {
        read(
            &self
                .root
                .join("stratosphere-security-datasets-for-testing")
                .join(rel),
            Format::Zeek,
        )
    }

    /// A Slips test capture, e.g. `test5-mixed.binetflow`.
    pub fn slips(&self, rel: &str, format: Format) -> Result<Vec<Flow>> {
        read(
            &self.root.join("stratosphere-slips-test-datasets").join(rel),
            format,
        )
    }

    /// The 72 hourly RITA conn logs of the internet-facing server, in time order.
    pub fn rita(&self) -> Result<Vec<Flow>> {
        let dir = self.root.join("rita-internet-server-conn/conn");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".log.gz"))
            .collect();
        files.sort();
        let mut flows = Vec::new();
        for f in &files {
            flows.extend(read(f, Format::Zeek)?);
        }
        flows.sort_by_key(|f| f.time_ms);
        Ok(flows)
    }
}

/// Reads one capture file (plain or gzip) with a replay preset; lines without a time are dropped.
pub fn read(path: &Path, format: Format) -> Result<Vec<Flow>> {
    let mut reader = egresswatch_tools::replay::input::open(path, Default::default())?;
    let mut converter = Converter::new(Preset::builtin(format));
    let mut flows = Vec::new();
    let mut buf = Vec::new();
    let mut line_no = 0;
    loop {
        buf.clear();
        if reader
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("reading {}", path.display()))?
            == 0
        {
            break;
        }
        line_no += 1;
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        let text = String::from_utf8_lossy(&buf);
        match converter.convert(&text) {
            Ok(Line::Event(event, Some(time_ms))) => flows.push(Flow { time_ms, event }),
            Ok(_) => {}
            Err(e) => bail!("{}:{line_no}: {e}", path.display()),
        }
    }
    if flows.is_empty() {
        bail!("{}: no flows read", path.display());
    }
    flows.sort_by_key(|f| f.time_ms);
    Ok(flows)
}
