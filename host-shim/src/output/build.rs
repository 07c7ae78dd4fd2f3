//! Building an output from its configuration: its sink (a file opened, a TLS client's
//! certificates read) and its buffer (in memory, or a disk buffer opened), at start and when a
//! reload rebuilds it.

use std::io;
use std::time::Duration;

use super::disk;
use super::http;
use super::queue::Queue;
use super::sink::{open_append, Sink, WriterSink};
use super::socket::{SocketSink, Target};
use super::tls_stream;
use crate::config::{BufferConfig, BufferKind, HostConfig, OutputConfig};
use crate::metrics::OutputHealth;

/// The buffer of output `name`: in memory, or its disk buffer opened (what an earlier run left
/// in it is delivered first). A disk buffer's folder is locked while its queue lives: a second
/// queue on it (another process, or a rebuilt output whose old queue is still alive) fails.
pub(super) fn open_buffer(
    name: &str,
    buffer: &BufferConfig,
    stats: &OutputHealth,
) -> io::Result<Queue> {
    let (BufferKind::Disk, Some(dir)) = (buffer.kind, &buffer.path) else {
        return Ok(Queue::new(buffer.max_bytes, stats.clone()));
    };
    let log = disk::DiskLog::open(name, dir, buffer.max_bytes, stats.clone())?;
    Ok(Queue::on_disk(log, buffer.max_bytes, stats.clone()))
}

/// Whether `a` and `b` name the same folder (links resolved, when it exists; `./` ignored).
pub(crate) fn same_folder(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::path::{Component, PathBuf};
    let resolved = |p: &std::path::Path| -> PathBuf {
        std::fs::canonicalize(p)
            .unwrap_or_else(|_| p.components().filter(|c| *c != Component::CurDir).collect())
    };
    resolved(a) == resolved(b)
}

/// Standard output and files are up once open; a socket or HTTP output once it connects.
pub(super) fn set_up_if_open(output: &OutputConfig, stats: &OutputHealth) {
    if matches!(
        output,
        OutputConfig::Stdout { .. } | OutputConfig::File { .. }
    ) {
        stats.set_up(true);
    }
}

/// The sink of output `name` as `config` describes it: a file opened, a TLS client's
/// certificates read; a socket or HTTP output connects later, on its own thread.
pub(super) fn sink(
    config: &HostConfig,
    name: &str,
    output: &OutputConfig,
    stats: &OutputHealth,
) -> io::Result<Box<dyn Sink>> {
    Ok(match output {
        OutputConfig::Stdout { .. } => Box::new(WriterSink::stdout()),
        OutputConfig::File { path, .. } => {
            let path = config.resolve(path);
            let file = open_append(&path).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("output {name}: cannot open {}: {e}", path.display()),
                )
            })?;
            Box::new(WriterSink::file(file, &path))
        }
        OutputConfig::Tcp { address, tls, .. } => {
            let tls = tls
                .as_ref()
                .map(|tls| tcp_tls(config, name, address, tls))
                .transpose()?;
            let target = Target::Tcp {
                address: address.clone(),
                tls,
            };
            Box::new(SocketSink::new(name, target, stats.clone()))
        }
        OutputConfig::Unix { path, .. } => Box::new(SocketSink::new(
            name,
            Target::Unix(config.resolve(path)),
            stats.clone(),
        )),
        OutputConfig::Http {
            url,
            request_timeout_secs,
            tls,
            ..
        } => {
            let tls = tls
                .as_ref()
                .map(|tls| {
                    crate::tls::client(tls, |p| config.resolve(p), &format!("outputs.{name}.tls"))
                })
                .transpose()?;
            Box::new(http::HttpSink::new(
                name,
                url,
                Duration::from_secs(*request_timeout_secs),
                tls,
                stats.clone(),
            ))
        }
    })
}

/// The TLS client of TCP output `name`: its certificates read now, so that a bad file is an
/// error at start; the server name is `tls.server_name`, else the address's host.
fn tcp_tls(
    config: &HostConfig,
    name: &str,
    address: &str,
    tls: &crate::config::ClientTls,
) -> io::Result<tls_stream::TlsClient> {
    let prefix = format!("outputs.{name}.tls");
    let (client, trust) = crate::tls::tcp_client(tls, |p| config.resolve(p), &prefix)?;
    let server_name = match &tls.server_name {
        Some(server_name) => rustls::pki_types::ServerName::try_from(server_name.clone())
            .map_err(|e| format!("{prefix}.server_name: `{server_name}` {e}")),
        None => {
            tls_stream::server_name(address).map_err(|e| format!("outputs.{name}.address: {e}"))
        }
    }
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    Ok(tls_stream::TlsClient {
        config: client,
        server_name,
        trust,
    })
}
