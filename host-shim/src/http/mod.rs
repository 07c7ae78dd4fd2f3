//! The host's one HTTP stack: servers on hyper 1.x, each [`Servers`] one small tokio runtime
//! with its own thread (one for the metrics and health endpoint, one for the HTTP input),
//! bridged to the thread-based engine by shared state and channels.
//!
//! - [`Servers::start`] starts the runtime (one worker thread, `egresswatch-http`).
//! - [`Servers::serve`] binds a listener *synchronously*, so that a bind failure is returned
//!   to the caller before anything logs that it started, then accepts on the runtime: every
//!   connection is its own task (keep-alive, HTTP/1.1), so slow or idle clients never hold up
//!   another. Connections beyond [`Limits::max_connections`] wait to be accepted.
//! - What a listener does with an accepted TCP stream is an [`Accept`]: [`Plain`] hands it over
//!   as it is; `crate::tls`'s acceptor (tokio-rustls) is the TLS implementation.
//! - [`Servers::shutdown`] stops accepting, lets every connection finish the request it is
//!   serving (HTTP graceful shutdown) for up to [`SHUTDOWN_GRACE`], and stops the runtime.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;

/// A response body: the whole body at once.
pub type Body = Full<Bytes>;

/// The future a [`Handler`] returns.
pub type ResponseFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// What a server does with each request. Handlers run on the HTTP runtime: they must not block
/// (hand blocking work to the engine thread over a channel and await the answer).
pub type Handler = Arc<dyn Fn(Request<Incoming>) -> ResponseFuture + Send + Sync>;

/// How long [`Servers::shutdown`] lets open connections finish their current request.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Turns an accepted TCP stream into the stream HTTP is spoken on (plain, or TLS).
pub trait Accept: Send + Sync + 'static {
    /// The stream HTTP is spoken on.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Completes the connection (a TLS handshake, say); an error drops this connection only,
    /// and so does taking longer than [`Limits::header_read_timeout`] (the future is dropped).
    fn accept(&self, tcp: TcpStream) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

/// Plain TCP: the accepted stream as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct Plain;

impl Accept for Plain {
    type Io = TcpStream;

    async fn accept(&self, tcp: TcpStream) -> io::Result<TcpStream> {
        Ok(tcp)
    }
}

/// Per-listener limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (also ends idle keep-alive connections).
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// The HTTP runtime and the servers running on it.
pub struct Servers {
    runtime: tokio::runtime::Runtime,
    stop: watch::Sender<bool>,
    open: Arc<Open>,
    /// The accept loops, so that shutdown returns only once no listener is bound.
    listeners: Mutex<Vec<JoinHandle<()>>>,
}

/// Connections open across the servers, so that shutdown can wait for them.
#[derive(Default)]
struct Open {
    count: AtomicUsize,
    closed: Notify,
}

/// Counts one connection while it lives.
struct OpenGuard(Arc<Open>);

impl OpenGuard {
    fn new(open: &Arc<Open>) -> OpenGuard {
        open.count.fetch_add(1, Ordering::SeqCst);
        OpenGuard(Arc::clone(open))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::SeqCst);
        self.0.closed.notify_one();
    }
}

impl Servers {
    /// Starts the runtime on its own thread.
    pub fn start() -> io::Result<Servers> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(2)
            .thread_name("egresswatch-http")
            .enable_io()
            .enable_time()
            .build()?;
        let (stop, _) = watch::channel(false);
        Ok(Servers {
            runtime,
            stop,
            open: Arc::default(),
            listeners: Mutex::default(),
        })
    }

    /// The runtime, for code that bridges the engine to a server (spawning tasks, channels).
    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime.handle()
    }

    /// Binds `address` now and serves `handler` on it until [`Servers::shutdown`]; returns the
    /// bound address (the port, when `address` asked for port 0).
    pub fn serve<A: Accept>(
        &self,
        address: SocketAddr,
        accept: A,
        handler: Handler,
        limits: Limits,
    ) -> io::Result<SocketAddr> {
        let std_listener = std::net::TcpListener::bind(address)?;
        std_listener.set_nonblocking(true)?;
        let local = std_listener.local_addr()?;
        let listener = {
            let _inside = self.runtime.enter();
            tokio::net::TcpListener::from_std(std_listener)?
        };
        let stop = self.stop.subscribe();
        let task = self.runtime.spawn(accept_loop(
            listener,
            Arc::new(accept),
            handler,
            limits,
            stop,
            Arc::clone(&self.open),
        ));
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(task);
        Ok(local)
    }

    /// Stops accepting (every listener is closed when this returns), lets open connections
    /// finish their current request (at most [`SHUTDOWN_GRACE`]), and stops the runtime.
    pub fn shutdown(self) {
        let _ = self.stop.send(true);
        // Connection tasks end by themselves once their request is answered; whatever is left
        // after the grace period (a client that never finishes its request) is dropped.
        let open = Arc::clone(&self.open);
        let listeners =
            std::mem::take(&mut *self.listeners.lock().unwrap_or_else(|e| e.into_inner()));
        self.runtime.block_on(async move {
            for listener in listeners {
                // An accept loop returns (dropping its listener) as soon as it sees the stop.
                let _ = listener.await;
            }
            let drained = async {
                while open.count.load(Ordering::SeqCst) > 0 {
                    open.closed.notified().await;
                }
            };
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, drained).await;
        });
        self.runtime.shutdown_background();
    }
}

async fn accept_loop<A: Accept>(
    listener: tokio::net::TcpListener,
    accept: Arc<A>,
    handler: Handler,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    open: Arc<Open>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let permit = tokio::select! {
            _ = stop.changed() => return,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let tcp = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "HTTP server: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (accept, handler, stop) = (Arc::clone(&accept), Arc::clone(&handler), stop.clone());
        let counted = OpenGuard::new(&open);
        tokio::spawn(async move {
            let _held = (permit, counted);
            // A handshake (TLS) gets the time a request's headers get: a client that never
            // finishes it holds its slot no longer than one that never sends a request.
            match tokio::time::timeout(limits.header_read_timeout, accept.accept(tcp)).await {
                Ok(Ok(io)) => serve_connection(io, handler, limits, stop).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "HTTP server: connection refused"),
                Err(_) => tracing::debug!(
                    timeout = ?limits.header_read_timeout,
                    "HTTP server: connection refused: its handshake did not finish in time"
                ),
            }
        });
    }
}

async fn serve_connection<I>(
    io: I,
    handler: Handler,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let response = handler(request);
        async move { Ok::<_, Infallible>(response.await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stop.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

/// A response with a status, a content type and a body.
pub fn response(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::{Read, Write};

    fn hello() -> Handler {
        Arc::new(|request: Request<Incoming>| {
            let path = request.uri().path().to_owned();
            Box::pin(async move { response(200, "text/plain", format!("hello {path}\n")) })
        })
    }

    fn get(address: SocketAddr, path: &str) -> String {
        let mut conn = std::net::TcpStream::connect(address).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            conn,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        text
    }

    #[test]
    fn serves_binds_synchronously_and_shuts_down() {
        let servers = Servers::start().unwrap();
        let address = servers
            .serve(
                "127.0.0.1:0".parse().unwrap(),
                Plain,
                hello(),
                Limits::default(),
            )
            .unwrap();
        assert!(get(address, "/x").ends_with("hello /x\n"));
        // The address is taken: a second bind fails at once, with the OS error.
        let again = servers.serve(address, Plain, hello(), Limits::default());
        assert_eq!(
            again.unwrap_err().kind(),
            io::ErrorKind::AddrInUse,
            "a bind failure is returned to the caller"
        );
        servers.shutdown();
        assert!(std::net::TcpStream::connect(address).is_err());
    }

    #[test]
    fn an_idle_connection_does_not_hold_up_another() {
        let servers = Servers::start().unwrap();
        let limits = Limits {
            max_connections: 4,
            ..Limits::default()
        };
        let address = servers
            .serve("127.0.0.1:0".parse().unwrap(), Plain, hello(), limits)
            .unwrap();
        let idle: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(address).unwrap())
            .collect();
        assert!(get(address, "/y").ends_with("hello /y\n"));
        drop(idle);
        servers.shutdown();
    }
}
