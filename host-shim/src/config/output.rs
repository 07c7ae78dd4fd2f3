//! The `outputs` section: each named output, its buffer, and a client's TLS.

use std::path::PathBuf;

use serde::Deserialize;

/// TLS of a client (an HTTP output to an `https://` URL, or a TCP output).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    /// The authorities (PEM) the server's certificate must chain to; the public web PKI roots
    /// when absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate chain (PEM) to present, with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name the server's certificate must carry, and the one sent in SNI, when it is not
    /// the address's host (an IP address, or another name); Vector's `tls.server_name`. TCP
    /// outputs only: an HTTP output checks the URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// One named output.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum OutputConfig {
    /// Standard output.
    Stdout {
        /// The output's buffer.
        #[serde(default)]
        buffer: BufferConfig,
    },
    /// A file, appended to (created if absent).
    File {
        /// Path of the file, relative to the config file.
        path: PathBuf,
        /// The output's buffer.
        #[serde(default)]
        buffer: BufferConfig,
    },
    /// A TCP client, reconnecting with backoff.
    Tcp {
        /// Address to connect to, `HOST:PORT`; the name is resolved at each connection.
        address: String,
        /// Speak TLS; the server's certificate must name the address's host.
        #[serde(default)]
        tls: Option<ClientTls>,
        /// The output's buffer.
        #[serde(default)]
        buffer: BufferConfig,
    },
    /// A Unix socket client, reconnecting with backoff like `tcp`.
    Unix {
        /// Path of the socket, relative to the config file.
        path: PathBuf,
        /// The output's buffer.
        #[serde(default)]
        buffer: BufferConfig,
    },
    /// An HTTP client POSTing NDJSON batches; a batch counts as delivered once answered 2xx.
    Http {
        /// `http://HOST:PORT/PATH` (or `https://`); the name is resolved at each connection.
        url: String,
        /// How long one request may take before it is retried.
        #[serde(default = "default_request_timeout")]
        request_timeout_secs: u64,
        /// TLS settings for an `https://` URL.
        #[serde(default)]
        tls: Option<ClientTls>,
        /// The output's buffer.
        #[serde(default)]
        buffer: BufferConfig,
    },
}

fn default_request_timeout() -> u64 {
    30
}

impl OutputConfig {
    /// The output's buffer settings.
    pub fn buffer(&self) -> &BufferConfig {
        match self {
            OutputConfig::Stdout { buffer }
            | OutputConfig::File { buffer, .. }
            | OutputConfig::Tcp { buffer, .. }
            | OutputConfig::Unix { buffer, .. }
            | OutputConfig::Http { buffer, .. } => buffer,
        }
    }
}

/// An output's buffer between the engine and its delivery thread.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// In memory (the default) or on disk.
    #[serde(default, rename = "type")]
    pub kind: BufferKind,
    /// A disk buffer's folder (created if absent), relative to the config file.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Bytes the buffer holds before `when_full` applies (undelivered lines).
    #[serde(default = "default_buffer_bytes")]
    pub max_bytes: u64,
    /// What happens when the buffer is full.
    #[serde(default)]
    pub when_full: WhenFull,
}

/// Where an output's buffer keeps its lines, as Vector's `buffer.type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BufferKind {
    /// In memory: lost if the process dies.
    #[default]
    Memory,
    /// In segment files under `path`: kept across restarts and crashes, replayed first at the
    /// next start.
    Disk,
}

/// The smallest `max_bytes` of a disk buffer: a few input blocks (one block's lines for an
/// output can be 256 KiB).
const DISK_BUFFER_MIN_BYTES: u64 = 1 << 20;

fn default_buffer_bytes() -> u64 {
    8 << 20
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            kind: BufferKind::default(),
            path: None,
            max_bytes: default_buffer_bytes(),
            when_full: WhenFull::default(),
        }
    }
}

/// The `buffer` block of output `name`: a disk buffer has a path and room for a few blocks;
/// a memory buffer has no path.
pub(super) fn check_buffer(problems: &mut Vec<String>, name: &str, buffer: &BufferConfig) {
    match buffer.kind {
        BufferKind::Memory => {
            if buffer.path.is_some() {
                problems.push(format!(
                    "outputs.{name}.buffer.path: only a disk buffer has a path (add type: disk)"
                ));
            }
            if buffer.max_bytes < 1024 {
                problems.push(format!(
                    "outputs.{name}.buffer.max_bytes: must be at least 1024"
                ));
            }
        }
        BufferKind::Disk => {
            match &buffer.path {
                None => problems.push(format!(
                    "outputs.{name}.buffer.path: a disk buffer needs a folder to keep its files in"
                )),
                Some(p) if p.as_os_str().is_empty() => {
                    problems.push(format!("outputs.{name}.buffer.path: must not be empty"));
                }
                Some(_) => {}
            }
            if buffer.max_bytes < DISK_BUFFER_MIN_BYTES {
                problems.push(format!(
                    "outputs.{name}.buffer.max_bytes: must be at least {DISK_BUFFER_MIN_BYTES} \
                     (1 MiB) for a disk buffer"
                ));
            }
        }
    }
}

/// What a full output buffer does, as Vector's `buffer.when_full`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// The engine waits for room: every input slows down (backpressure), nothing is lost.
    #[default]
    Block,
    /// The newest events are dropped, counted and logged; the other outputs carry on.
    DropNewest,
}

/// The `tls` block of output `name`.
pub(super) fn check_client_tls(problems: &mut Vec<String>, name: &str, tls: Option<&ClientTls>) {
    let Some(tls) = tls else { return };
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        problems.push(format!(
            "outputs.{name}.tls: cert_file and key_file go together"
        ));
    }
    let paths = [
        ("ca_file", &tls.ca_file),
        ("cert_file", &tls.cert_file),
        ("key_file", &tls.key_file),
    ];
    for (key, path) in paths {
        if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            problems.push(format!("outputs.{name}.tls.{key}: must not be empty"));
        }
    }
    if let Some(server_name) = &tls.server_name {
        if let Err(e) = rustls::pki_types::ServerName::try_from(server_name.as_str()) {
            problems.push(format!(
                "outputs.{name}.tls.server_name: `{server_name}` cannot be a TLS server name: {e}"
            ));
        }
    }
}
