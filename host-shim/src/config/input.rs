//! The `input` section: where events come from, and the limits every listener has.

use std::path::PathBuf;

use serde::Deserialize;

/// Where events come from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum InputConfig {
    /// Standard input; the program ends at EOF.
    #[default]
    Stdin,
    /// A TCP listener accepting several concurrent NDJSON connections; runs until a signal.
    Tcp {
        /// Address to listen on, `HOST:PORT`.
        address: String,
        /// Largest number of connections read at once; further ones are closed as soon as
        /// they are accepted (logged, counted).
        #[serde(default = "default_max_connections")]
        max_connections: usize,
        /// A connection that sends nothing for this long is closed.
        #[serde(default = "default_idle_timeout")]
        idle_timeout_secs: u64,
        /// Speak TLS, optionally requiring client certificates.
        #[serde(default)]
        tls: Option<ServerTls>,
        /// While several connections are open their lines go to the detector in event-time
        /// order; a connection with nothing to send holds the others at most this long (ms of
        /// the engine's idle time). 0 turns the ordering off.
        #[serde(default = "default_order_window_ms")]
        order_window_ms: u64,
    },
    /// A Unix socket listener, like `tcp`. A stale socket file (nobody listening) is replaced;
    /// any other file at the path is an error and is left alone, at start and at stop.
    Unix {
        /// Path of the socket, relative to the config file.
        path: PathBuf,
        /// Largest number of connections read at once; further ones are closed as soon as
        /// they are accepted (logged, counted).
        #[serde(default = "default_max_connections")]
        max_connections: usize,
        /// A connection that sends nothing for this long is closed.
        #[serde(default = "default_idle_timeout")]
        idle_timeout_secs: u64,
        /// While several connections are open their lines go to the detector in event-time
        /// order; a connection with nothing to send holds the others at most this long (ms of
        /// the engine's idle time). 0 turns the ordering off.
        #[serde(default = "default_order_window_ms")]
        order_window_ms: u64,
    },
    /// An HTTP listener taking NDJSON in `POST` bodies (Vector's `http` sink); each request is
    /// answered 200 only once every line of it is delivered, so a sender that retries on
    /// failure loses nothing.
    Http {
        /// Address to listen on, `HOST:PORT`.
        address: String,
        /// Largest number of connections served at once; further ones wait to be accepted.
        #[serde(default = "default_max_connections")]
        max_connections: usize,
        /// Largest request body taken; a larger one is answered 413.
        #[serde(default = "default_max_body_bytes")]
        max_body_bytes: usize,
        /// How long a request waits for its lines to be delivered before it is answered 503
        /// (the sender sends it again; what was delivered meanwhile repeats).
        #[serde(default = "default_ack_timeout")]
        ack_timeout_secs: u64,
        /// A connection that sends nothing for this long is closed: the time a client has to
        /// finish its TLS handshake and send a request's headers, and how long a kept-alive
        /// connection may sit idle.
        #[serde(default = "default_http_idle_timeout")]
        idle_timeout_secs: u64,
        /// Serve HTTPS, optionally requiring client certificates.
        #[serde(default)]
        tls: Option<ServerTls>,
    },
}

/// TLS on a listener: its certificate, and the authority whose client certificates it requires.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// The certificate chain (PEM), leaf first, relative to the config file.
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// When set, a client must present a certificate this authority (PEM) signed; the others
    /// are refused during the handshake.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

fn default_max_connections() -> usize {
    64
}

fn default_max_body_bytes() -> usize {
    10 << 20
}

fn default_ack_timeout() -> u64 {
    30
}

fn default_idle_timeout() -> u64 {
    300
}

fn default_http_idle_timeout() -> u64 {
    30
}

fn default_order_window_ms() -> u64 {
    2000
}

impl InputConfig {
    /// `order_window_ms` of a `tcp` or `unix` input; zero (no ordering) for the others.
    pub fn order_window(&self) -> std::time::Duration {
        match self {
            InputConfig::Tcp {
                order_window_ms, ..
            }
            | InputConfig::Unix {
                order_window_ms, ..
            } => std::time::Duration::from_millis(*order_window_ms),
            InputConfig::Stdin | InputConfig::Http { .. } => std::time::Duration::ZERO,
        }
    }
}

/// The limits every listener has.
pub(super) fn check_listener(
    problems: &mut Vec<String>,
    max_connections: usize,
    idle_timeout_secs: u64,
) {
    if max_connections == 0 {
        problems.push("input.max_connections: must be at least 1".to_owned());
    }
    if idle_timeout_secs == 0 {
        problems.push("input.idle_timeout_secs: must be at least 1".to_owned());
    }
}

/// The `tls` block of an input.
pub(super) fn check_server_tls(problems: &mut Vec<String>, tls: Option<&ServerTls>) {
    let Some(tls) = tls else { return };
    let paths = [
        ("cert_file", Some(&tls.cert_file)),
        ("key_file", Some(&tls.key_file)),
        ("client_ca_file", tls.client_ca_file.as_ref()),
    ];
    for (key, path) in paths {
        if path.is_some_and(|p| p.as_os_str().is_empty()) {
            problems.push(format!("input.tls.{key}: must not be empty"));
        }
    }
}
