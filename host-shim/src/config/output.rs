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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferConfig {
    /// Bytes the buffer holds before `when_full` applies.
    #[serde(default = "default_buffer_bytes")]
    pub max_bytes: u64,
    /// What happens when the buffer is full.
    #[serde(default)]
    pub when_full: WhenFull,
}

fn default_buffer_bytes() -> u64 {
    8 << 20
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            max_bytes: default_buffer_bytes(),
            when_full: WhenFull::default(),
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
}
