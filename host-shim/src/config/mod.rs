//! The host's configuration file, YAML by default, TOML when the file name ends in `.toml`.
//!
//! ```yaml
//! plugin: target/release/libegresswatch_plugin.so   # optional; default: beside the executable
//! batch:
//!   max_events: 1024          # events handed to the plugin per call
//!   max_line_bytes: 1048576   # longer lines are passed through unread and counted
//! unreadable: pass            # pass | errors | wrap
//! input: { type: tcp, address: 127.0.0.1:9000 }   # stdin (default) | tcp | unix | http
//! outputs:
//!   default: { type: tcp, address: 127.0.0.1:9001 }  # stdout | file | tcp | unix | http
//!   anomalies: { type: file, path: anomalies.ndjson }
//! state: { path: state.bin, interval_secs: 60, max_bytes: 1073741824 }   # optional
//! metrics: { address: 127.0.0.1:9900 }             # optional Prometheus endpoint
//! detector:                   # handed to the plugin as JSON; its schema is the plugin's
//!   rules: [rules/]
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use egresswatch_plugin_api::{ConfigProblem, DEFAULT_OUTPUT, ERRORS_OUTPUT};

mod input;
mod interpolate;
mod output;
pub mod positions;
mod read;

use input::{check_listener, check_server_tls};
pub use input::{InputConfig, ServerTls};
use output::check_client_tls;
pub use output::{BufferConfig, BufferKind, ClientTls, OutputConfig, WhenFull};
use positions::KeyLines;
use read::{check_yaml_nesting, toml_error};
pub use read::{read_text, MAX_CONFIG_BYTES, MAX_NESTING};

/// A problem with the configuration file.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {reason}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: std::io::Error,
    },
    /// The file is not valid YAML for this schema; the message carries line and column.
    #[error("config file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the field path and position.
        message: String,
    },
    /// The file parsed but its values are inconsistent; every problem is listed.
    #[error("config file {} has {} problem(s):\n  - {}", path.display(), problems.len(), problems.join("\n  - "))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// One message per problem, each naming the field.
        problems: Vec<String>,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Path of the plugin library, relative to the config file; default: the platform's library
    /// file name for `egresswatch_plugin` beside the running executable.
    #[serde(default)]
    pub plugin: Option<PathBuf>,
    /// Batching and line limits.
    #[serde(default)]
    pub batch: BatchConfig,
    /// What to do with lines the detector cannot read (not UTF-8, too long, not a JSON object).
    #[serde(default)]
    pub unreadable: UnreadablePolicy,
    /// Send a batch the plugin failed on to the `errors` output instead of passing it on.
    #[serde(default)]
    pub fail_closed: bool,
    /// Where events come from; standard input unless configured otherwise.
    #[serde(default)]
    pub input: InputConfig,
    /// Named outputs; `default` is standard output unless configured otherwise.
    #[serde(default)]
    pub outputs: BTreeMap<String, OutputConfig>,
    /// Where the plugin's model state is saved and loaded from; no persistence when absent.
    #[serde(default)]
    pub state: Option<StateConfig>,
    /// The optional Prometheus endpoint.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// After a stop signal (or the end of standard input), how long open connections are still
    /// read and outputs still delivered to; what is not delivered by then is named and the run
    /// fails.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_secs: u64,
    /// The detector's own configuration, passed to the plugin as JSON.
    #[serde(default = "empty_object")]
    pub detector: serde_json::Value,
    /// `egresswatch replay`'s own settings (field mappings of its presets); `run` ignores them,
    /// so that one file serves both.
    #[serde(default)]
    pub replay: Option<serde_json::Value>,
    /// The folder of the (first) file; relative paths are resolved against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The files read, in order, with the line of each of their keys, for messages that point
    /// at a key (the plugin's problems, duplicates, conflicts).
    #[serde(skip)]
    pub sources: Vec<Source>,
}

/// One configuration file that was read.
#[derive(Debug, Clone)]
pub struct Source {
    /// The file.
    pub path: PathBuf,
    /// The line of each of its keys.
    key_lines: KeyLines,
}

fn default_shutdown_timeout() -> u64 {
    30
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// Batching and line limits.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Largest number of events handed to the plugin in one call.
    #[serde(default = "default_max_events")]
    pub max_events: usize,
    /// Lines longer than this many bytes are passed through without being read, and counted.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
}

fn default_max_events() -> usize {
    1024
}

fn default_max_line_bytes() -> usize {
    1 << 20
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_events: default_max_events(),
            max_line_bytes: default_max_line_bytes(),
        }
    }
}

/// What happens to a line the detector cannot read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnreadablePolicy {
    /// Write it unchanged to the default output.
    #[default]
    Pass,
    /// Write it unchanged to the `errors` output.
    Errors,
    /// Write `{"message": "<line>"}` to the default output, so that a downstream JSON input
    /// (Fluent Bit's `tcp` input) only ever sees JSON objects.
    Wrap,
}

/// Model state persistence.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// The state file, relative to the config file; written atomically via `<path>.tmp`.
    pub path: PathBuf,
    /// Seconds between saves while running; the state is also saved at shutdown.
    #[serde(default = "default_state_interval")]
    pub interval_secs: u64,
    /// Largest state file read at start-up, in bytes; a larger one is set aside unread.
    #[serde(default = "default_state_max_bytes")]
    pub max_bytes: u64,
}

fn default_state_max_bytes() -> u64 {
    crate::state::DEFAULT_MAX_BYTES
}

fn default_state_interval() -> u64 {
    60
}

/// The Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to serve `/metrics` on, `HOST:PORT`; loopback unless `allow_non_loopback`.
    pub address: String,
    /// Allow a non-loopback metrics address (the endpoint has no authentication).
    #[serde(default)]
    pub allow_non_loopback: bool,
}

impl HostConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_all(&[path.to_owned()])
    }

    /// Reads configuration files, each with `${VAR}` interpolated and checked alone (so that
    /// errors carry its lines), and merges them: mappings merge key by key, and any other
    /// value may be set by one file only (a key set twice is an error naming both places, as
    /// a key repeated within one file is). Relative paths resolve against the first file's
    /// folder.
    pub fn load_all(paths: &[PathBuf]) -> Result<Self, ConfigError> {
        let Some(first) = paths.first() else {
            return Err(ConfigError::Invalid {
                path: PathBuf::new(),
                problems: vec!["no configuration file given".to_owned()],
            });
        };
        let mut sources = Vec::with_capacity(paths.len());
        let mut single = None;
        let mut merged = serde_json::Map::new();
        let mut conflicts = Vec::new();
        for path in paths {
            let raw = read_text(path)?;
            let text = interpolate::interpolate(&raw, |name| std::env::var(name).ok()).map_err(
                |problems| ConfigError::Invalid {
                    path: path.to_owned(),
                    problems: problems
                        .into_iter()
                        .map(|p| format!("{}:{}", path.display(), p.trim_start_matches("line ")))
                        .collect(),
                },
            )?;
            let is_toml = path.extension().is_some_and(|e| e == "toml");
            let key_lines = if is_toml {
                KeyLines::toml(&text)
            } else {
                KeyLines::yaml(&text)
            };
            if !key_lines.duplicates().is_empty() {
                return Err(ConfigError::Invalid {
                    path: path.to_owned(),
                    problems: key_lines
                        .duplicates()
                        .iter()
                        .map(|(key, line, first)| {
                            format!(
                                "{}:{line}: {key}: duplicate key (first set at line {first})",
                                path.display()
                            )
                        })
                        .collect(),
                });
            }
            let parse_error = |message| ConfigError::Parse {
                path: path.to_owned(),
                message,
            };
            let config = Self::parse(&text, is_toml).map_err(parse_error)?;
            sources.push(Source {
                path: path.to_owned(),
                key_lines,
            });
            if paths.len() == 1 {
                single = Some(config);
            } else {
                let value = Self::parse_value(&text, is_toml).map_err(parse_error)?;
                merge(&mut merged, value, "", &sources, &mut conflicts);
            }
        }
        let mut config = match single {
            Some(config) => config,
            None if !conflicts.is_empty() => {
                return Err(ConfigError::Invalid {
                    path: first.to_owned(),
                    problems: conflicts,
                })
            }
            None => serde_json::from_value(serde_json::Value::Object(merged)).map_err(|e| {
                ConfigError::Parse {
                    path: first.to_owned(),
                    message: format!("the files merged: {e}"),
                }
            })?,
        };
        config.base_dir = first
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        config.sources = sources;
        let problems = config.problems();
        if !problems.is_empty() {
            let problems = problems
                .into_iter()
                .map(|p| match p.split_once(": ") {
                    Some((key, _)) => config.at(key) + &p,
                    None => p,
                })
                .collect();
            return Err(ConfigError::Invalid {
                path: first.to_owned(),
                problems,
            });
        }
        Ok(config)
    }

    /// Configuration text as a JSON value (an empty file is an empty mapping), for merging.
    fn parse_value(text: &str, is_toml: bool) -> Result<serde_json::Value, String> {
        if is_toml {
            toml::from_str(text).map_err(|e| toml_error(text, &e))
        } else if text.trim().is_empty() {
            Ok(empty_object())
        } else {
            serde_yaml_ng::from_str::<serde_json::Value>(text)
                .map(|v| if v.is_null() { empty_object() } else { v })
                .map_err(|e| e.to_string())
        }
    }

    /// Where `key` (a dotted path) is set, or its nearest enclosing key that is: the file whose
    /// match is deepest (the first on a tie), with the line.
    fn locate(&self, key: &str) -> Option<(&Path, usize)> {
        let mut best: Option<(&Path, usize, usize)> = None;
        for source in &self.sources {
            if let Some((found, line)) = source.key_lines.nearest(key) {
                if best.is_none_or(|(_, _, depth)| found.len() > depth) {
                    best = Some((&source.path, line, found.len()));
                }
            }
        }
        best.map(|(path, line, _)| (path, line))
    }

    /// `FILE:LINE: ` for `key`, `FILE: ` when only the file is known, or nothing.
    fn at(&self, key: &str) -> String {
        match (self.locate(key), self.sources.first()) {
            (Some((path, line)), _) => format!("{}:{line}: ", path.display()),
            (None, Some(first)) => format!("{}: ", first.path.display()),
            (None, None) => String::new(),
        }
    }

    /// Parses configuration text, YAML or TOML; nesting deeper than [`MAX_NESTING`] is an error.
    pub fn parse(text: &str, is_toml: bool) -> Result<Self, String> {
        if is_toml {
            toml::from_str(text).map_err(|e| toml_error(text, &e))
        } else if text.trim().is_empty() {
            serde_yaml_ng::from_str("{}").map_err(|e| e.to_string())
        } else {
            check_yaml_nesting(text)?;
            serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
        }
    }

    /// Every inconsistency in the values, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.batch.max_events == 0 {
            problems.push("batch.max_events: must be at least 1".to_owned());
        }
        if self.batch.max_line_bytes == 0 {
            problems.push("batch.max_line_bytes: must be at least 1".to_owned());
        }
        match &self.input {
            InputConfig::Stdin => {}
            InputConfig::Tcp {
                address,
                max_connections,
                idle_timeout_secs,
                tls,
                ..
            } => {
                if let Err(e) = check_address(address) {
                    problems.push(format!("input.address: `{address}` {e}"));
                }
                check_listener(&mut problems, *max_connections, *idle_timeout_secs);
                check_server_tls(&mut problems, tls.as_ref());
            }
            InputConfig::Http {
                address,
                max_connections,
                max_body_bytes,
                ack_timeout_secs,
                idle_timeout_secs,
                tls,
            } => {
                if let Err(e) = check_address(address) {
                    problems.push(format!("input.address: `{address}` {e}"));
                }
                check_server_tls(&mut problems, tls.as_ref());
                if *idle_timeout_secs == 0 {
                    problems.push("input.idle_timeout_secs: must be at least 1".to_owned());
                }
                if *max_connections == 0 {
                    problems.push("input.max_connections: must be at least 1".to_owned());
                }
                if *max_body_bytes == 0 {
                    problems.push("input.max_body_bytes: must be at least 1".to_owned());
                }
                if *ack_timeout_secs == 0 {
                    problems.push("input.ack_timeout_secs: must be at least 1".to_owned());
                }
            }
            InputConfig::Unix {
                path,
                max_connections,
                idle_timeout_secs,
                ..
            } => {
                if path.as_os_str().is_empty() {
                    problems.push("input.path: must not be empty".to_owned());
                }
                check_listener(&mut problems, *max_connections, *idle_timeout_secs);
            }
        }
        for (name, output) in &self.outputs {
            match output {
                OutputConfig::Tcp { address, tls, .. } => {
                    if let Err(e) = check_address(address) {
                        problems.push(format!("outputs.{name}.address: `{address}` {e}"));
                    }
                    check_client_tls(&mut problems, name, tls.as_ref());
                }
                OutputConfig::Unix { path, .. } | OutputConfig::File { path, .. } => {
                    if path.as_os_str().is_empty() {
                        problems.push(format!("outputs.{name}.path: must not be empty"));
                    }
                }
                OutputConfig::Http {
                    url,
                    request_timeout_secs,
                    tls,
                    ..
                } => {
                    if let Err(e) = check_url(url) {
                        problems.push(format!("outputs.{name}.url: `{url}` {e}"));
                    }
                    if tls.is_some() && !url.starts_with("https://") {
                        problems.push(format!(
                            "outputs.{name}.tls: set, but the url is not https://"
                        ));
                    }
                    if tls.as_ref().is_some_and(|t| t.server_name.is_some()) {
                        problems.push(format!(
                            "outputs.{name}.tls.server_name: not supported on an http output: \
                             its certificate is checked against the url's host, so write the \
                             name the certificate carries in the url"
                        ));
                    }
                    check_client_tls(&mut problems, name, tls.as_ref());
                    if *request_timeout_secs == 0 {
                        problems.push(format!(
                            "outputs.{name}.request_timeout_secs: must be at least 1"
                        ));
                    }
                }
                OutputConfig::Stdout { .. } => {}
            }
            output::check_buffer(&mut problems, name, output.buffer());
        }
        // Two disk buffers in one folder would replay each other's lines.
        let mut folders: BTreeMap<PathBuf, &str> = BTreeMap::new();
        for (name, output) in &self.outputs {
            let Some(path) = output
                .buffer()
                .path
                .as_ref()
                .filter(|p| !p.as_os_str().is_empty())
            else {
                continue;
            };
            if let Some(first) = folders.insert(self.resolve(path), name) {
                problems.push(format!(
                    "outputs.{name}.buffer.path: `{}` is also outputs.{first}.buffer.path; each \
                     disk buffer needs its own folder",
                    path.display()
                ));
            }
        }
        if let Some(state) = &self.state {
            if state.path.as_os_str().is_empty() {
                problems.push("state.path: must not be empty".to_owned());
            }
            if state.interval_secs == 0 {
                problems.push("state.interval_secs: must be at least 1".to_owned());
            }
            if state.max_bytes < 1024 {
                problems.push("state.max_bytes: must be at least 1024".to_owned());
            }
        }
        if let Some(metrics) = &self.metrics {
            match check_address(&metrics.address) {
                Err(e) => problems.push(format!("metrics.address: `{}` {e}", metrics.address)),
                Ok(loopback) if !loopback && !metrics.allow_non_loopback => problems.push(format!(
                    "metrics.address: `{}` is not a loopback address; the endpoint has no \
                         authentication (set metrics.allow_non_loopback: true to allow it)",
                    metrics.address
                )),
                Ok(_) => {}
            }
        }
        if self.shutdown_timeout_secs == 0 {
            problems.push("shutdown_timeout_secs: must be at least 1".to_owned());
        }
        if !self.detector.is_object() {
            problems.push("detector: expected a mapping".to_owned());
        }
        if self.unreadable == UnreadablePolicy::Errors && !self.outputs.contains_key(ERRORS_OUTPUT)
        {
            problems.push(format!(
                "unreadable: `errors` needs an output named `{ERRORS_OUTPUT}` under outputs"
            ));
        }
        if self.fail_closed && !self.outputs.contains_key(ERRORS_OUTPUT) {
            problems.push(format!(
                "fail_closed: needs an output named `{ERRORS_OUTPUT}` under outputs"
            ));
        }
        problems
    }

    /// Checks that every route the plugin's rules use has an output; returns one problem per
    /// missing output.
    pub fn missing_routes(&self, routes: &[String]) -> Vec<String> {
        routes
            .iter()
            .filter(|r| r.as_str() != DEFAULT_OUTPUT && !self.outputs.contains_key(r.as_str()))
            .map(|r| {
                format!(
                    "outputs.{r}: a rule routes events to `{r}` but no such output is configured"
                )
            })
            .collect()
    }

    /// Resolves a path from the config file against the config file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.base_dir.join(path)
        }
    }

    /// The detector configuration as JSON text, as the plugin takes it.
    pub fn detector_json(&self) -> String {
        self.detector.to_string()
    }

    /// The plugin's configuration problems as lines pointing into the files:
    /// `FILE:LINE: detector.KEY: message`.
    pub fn detector_problems(&self, problems: &[ConfigProblem]) -> Vec<String> {
        problems
            .iter()
            .map(|p| {
                let key = match p.path.as_str() {
                    "" => DETECTOR_KEY.to_owned(),
                    sub => format!("{DETECTOR_KEY}.{sub}"),
                };
                format!("{}{key}: {}", self.at(&key), p.message)
            })
            .collect()
    }
}

/// Merges `from` into `into` (both at key path `prefix`): mappings key by key; a key that both
/// set to anything else is a conflict, named with both places.
fn merge(
    into: &mut serde_json::Map<String, serde_json::Value>,
    from: serde_json::Value,
    prefix: &str,
    sources: &[Source],
    conflicts: &mut Vec<String>,
) {
    let serde_json::Value::Object(from) = from else {
        return;
    };
    for (key, value) in from {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match into.get_mut(&key) {
            None => {
                into.insert(key, value);
            }
            Some(serde_json::Value::Object(existing)) if value.is_object() => {
                merge(existing, value, &path, sources, conflicts);
            }
            Some(_) => {
                let (earlier, last) = sources.split_at(sources.len().saturating_sub(1));
                let place = |s: &Source| match s.key_lines.exact(&path) {
                    Some(line) => format!("{}:{line}", s.path.display()),
                    None => s.path.display().to_string(),
                };
                let first = earlier
                    .iter()
                    .find(|s| s.key_lines.exact(&path).is_some())
                    .map_or_else(|| "an earlier file".to_owned(), place);
                let again = last.first().map_or_else(String::new, place);
                conflicts.push(format!(
                    "{again}: {path}: already set at {first} (a value may be set in one file \
                     only; mappings merge)"
                ));
            }
        }
    }
}

/// Checks a `HOST:PORT` address (an IP literal, `[IPv6]`, or a host name resolved when it is
/// used); says whether it is certainly loopback (a loopback IP or `localhost`).
pub fn check_address(address: &str) -> Result<bool, String> {
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Ok(addr.ip().is_loopback());
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err("is not a HOST:PORT address (no port)".to_owned());
    };
    port.parse::<u16>()
        .map_err(|e| format!("is not a HOST:PORT address (port `{port}`: {e})"))?;
    let valid_name = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid_name {
        return Err(format!(
            "is not a HOST:PORT address (`{host}` is neither an IP address nor a host name)"
        ));
    }
    Ok(host.eq_ignore_ascii_case("localhost"))
}

/// Checks an `http://` or `https://` URL whose authority is a `HOST:PORT` (the port may be left
/// out: 80 or 443).
pub fn check_url(url: &str) -> Result<(), String> {
    let (rest, port) = if let Some(rest) = url.strip_prefix("http://") {
        (rest, 80)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (rest, 443)
    } else {
        return Err("is not an http:// or https:// URL".to_owned());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err("must not carry credentials in the URL".to_owned());
    }
    let with_port = if authority.ends_with(']') || !authority.contains(':') {
        format!("{authority}:{port}")
    } else {
        authority.to_owned()
    };
    check_address(&with_port).map(|_| ())
}

/// The key of the plugin's section.
const DETECTOR_KEY: &str = "detector";

#[cfg(test)]
mod tests;
