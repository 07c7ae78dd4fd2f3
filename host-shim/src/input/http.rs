//! The HTTP input: NDJSON in `POST` bodies (Vector's `http` sink with `encoding.codec = "json"`
//! and newline-delimited framing), answered only once the request's lines are delivered.
//!
//! It runs on the host's HTTP stack ([`crate::http`]: hyper on its own small tokio runtime),
//! over TLS when `tls` is configured (`crate::tls`, client certificates optional).
//! Each request's body (at most `max_body_bytes`) goes to the engine as one [`Msg::Acked`]
//! with an [`Ack`]; the answer waits for the outcome, at most `ack_timeout_secs`:
//!
//! - 200 once every line reached every output it was meant for (an HTTP output: answered 2xx;
//!   a socket, file or stdout output: written);
//! - 200 too when an output whose `when_full` is `drop_newest` dropped some of them: that
//!   output is best-effort by its policy (the drop is counted and logged, as for any input);
//!   a 429 would make the sender resend the whole request until the route came back, so one
//!   best-effort route that is down would stall the feed and repeat lines on the others;
//! - 503 when the lines were not delivered by then, an output gave up, or egresswatch is
//!   stopping; 413 for a body too large, 415 for a compressed one, 405 for anything but `POST`
//!   (`GET` and `HEAD`, a sender's health check, are answered 200 while the input runs).
//!
//! Senders retry on 5xx (Vector's `http` sink does), so nothing is lost that a sender was not
//! told 200 for, beyond what a `drop_newest` output drops by its policy; what was delivered before a 503 is sent again, so lines can repeat.
//!
//! Its connections are counted as a listener's are (`egresswatch_input_connections_*`, a
//! refused TLS handshake in `egresswatch_input_tls_handshake_failures_total`), and its requests
//! by the status they were answered with (`egresswatch_input_http_requests_total`).
//!
//! On a stop signal new requests are answered 503 and the feed is let go once the requests
//! already read have been handed over; the server itself stays up (answering what waits on
//! the outputs) until the run drops the [`HttpInput`], after the outputs have finished.

use std::io;
use std::net::ToSocketAddrs;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::listen::InputStats;
use super::{Feed, Msg};
use crate::ack::{Ack, Outcome};
use crate::http::{self, Accept, Body, Handler, Limits, Plain, Servers};
use crate::tls::TlsAccept;

/// How often the input looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);

/// What the sender is told to wait before trying again, on 503.
const RETRY_AFTER_SECS: &str = "1";

/// The HTTP input's settings.
pub(crate) struct Settings {
    /// `HOST:PORT` to listen on.
    pub(crate) address: String,
    /// Connections served at once.
    pub(crate) max_connections: usize,
    /// Largest body taken.
    pub(crate) max_body_bytes: usize,
    /// How long a request waits for its lines to be delivered.
    pub(crate) ack_timeout: Duration,
    /// `idle_timeout_secs`: the time to finish the TLS handshake and send a request's headers.
    pub(crate) idle_timeout: Duration,
    /// HTTPS, when configured.
    pub(crate) tls: Option<TlsAccept>,
    /// Where its connections and answers are counted.
    pub(crate) stats: Arc<InputStats>,
}

/// A running HTTP input; dropping it stops its server (after the outputs have finished, so
/// that requests waiting on them get their answer).
pub(crate) struct HttpInput {
    servers: Option<Servers>,
}

impl Drop for HttpInput {
    fn drop(&mut self) {
        if let Some(servers) = self.servers.take() {
            servers.shutdown();
        }
    }
}

/// What every request's handler shares.
struct Shared {
    /// The engine's feed; taken away at a stop, so that the engine sees the input end.
    feed: Mutex<Option<Feed>>,
    stop: Arc<AtomicBool>,
    max_body_bytes: usize,
    ack_timeout: Duration,
}

impl Shared {
    fn feed(&self) -> Option<Feed> {
        if self.stop.load(Ordering::Relaxed) {
            return None;
        }
        self.feed.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Binds the listener (a failure is returned now) and serves until dropped; returns it and
/// what it listens on (`http://127.0.0.1:8080`).
pub(crate) fn start(
    settings: &Settings,
    feed: Feed,
    stop: &Arc<AtomicBool>,
) -> io::Result<(HttpInput, String)> {
    let address = settings
        .address
        .to_socket_addrs()
        .and_then(|mut a| {
            a.next()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the name has no address"))
        })
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("input.address: cannot resolve {}: {e}", settings.address),
            )
        })?;
    let servers = Servers::start()?;
    let shared = Arc::new(Shared {
        feed: Mutex::new(Some(feed)),
        stop: Arc::clone(stop),
        max_body_bytes: settings.max_body_bytes,
        ack_timeout: settings.ack_timeout,
    });
    let handler: Handler = {
        let shared = Arc::clone(&shared);
        let stats = Arc::clone(&settings.stats);
        Arc::new(move |request| {
            let (shared, stats) = (Arc::clone(&shared), Arc::clone(&stats));
            Box::pin(async move {
                let response = answer(shared, request).await;
                stats.answered(response.status().as_u16());
                response
            })
        })
    };
    let limits = Limits {
        max_connections: settings.max_connections,
        header_read_timeout: settings.idle_timeout,
    };
    let stats = Arc::clone(&settings.stats);
    let served = match &settings.tls {
        Some(tls) => servers.serve(address, Counted(tls.clone(), stats), handler, limits),
        None => servers.serve(address, Counted(Plain, stats), handler, limits),
    };
    let local = served.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("input.address: cannot listen on {}: {e}", settings.address),
        )
    })?;
    // At a stop, let the feed go: once the requests in hand are handed over, the engine sees
    // the input end.
    servers.handle().spawn(async move {
        while !shared.stop.load(Ordering::Relaxed) {
            tokio::time::sleep(STOP_POLL).await;
        }
        shared.feed.lock().unwrap_or_else(|e| e.into_inner()).take();
    });
    Ok((
        HttpInput {
            servers: Some(servers),
        },
        format!(
            "{}://{local}",
            if settings.tls.is_some() {
                "https"
            } else {
                "http"
            }
        ),
    ))
}

/// A plain-text answer; 503 says when to try again.
fn reply(status: u16, text: &str) -> Response<Body> {
    let mut response = http::response(status, "text/plain; charset=utf-8", format!("{text}\n"));
    let headers = response.headers_mut();
    if status == 503 {
        headers.insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static(RETRY_AFTER_SECS),
        );
    }
    if status == 405 {
        headers.insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("POST, GET, HEAD"),
        );
    }
    response
}

async fn answer(shared: Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    if request.method() == Method::GET || request.method() == Method::HEAD {
        // A sender's health check (Vector's `healthcheck`): up unless stopping.
        return match shared.feed() {
            Some(_) => reply(200, "egresswatch http input: POST NDJSON here"),
            None => reply(503, "egresswatch is stopping"),
        };
    }
    if request.method() != Method::POST {
        return reply(405, "send events with POST");
    }
    let encoded = request
        .headers()
        .get(hyper::header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return reply(
            415,
            "compressed bodies are not taken; send them uncompressed",
        );
    }
    let body = match Limited::new(request.into_body(), shared.max_body_bytes)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return reply(413, "the body is larger than input.max_body_bytes")
        }
        Err(e) => return reply(400, &format!("reading the body: {e}")),
    };
    // Taken only now: a client slow to send its body must not hold the feed open at a stop.
    let Some(feed) = shared.feed() else {
        return reply(503, "egresswatch is stopping");
    };
    match tokio::time::timeout(shared.ack_timeout, deliver(feed, body)).await {
        Ok(Outcome::Delivered) => reply(200, "delivered"),
        Ok(Outcome::Dropped) => reply(
            200,
            "delivered, except where a drop_newest output dropped lines (counted)",
        ),
        Ok(Outcome::Failed) => reply(503, "not every line was delivered"),
        Err(_) => reply(503, "not delivered within input.ack_timeout_secs"),
    }
}

/// Hands the body's lines to the engine and waits for their outcome.
async fn deliver(feed: Feed, body: Bytes) -> Outcome {
    if body.is_empty() {
        return Outcome::Delivered;
    }
    let mut data = Vec::from(body);
    if data.last() != Some(&b'\n') {
        data.push(b'\n');
    }
    let (ack, told) = Ack::new();
    // The feed is a bounded channel: a full one blocks (backpressure), off the runtime.
    let sent = tokio::task::spawn_blocking(move || feed.send(Msg::Acked { data, ack })).await;
    if !matches!(sent, Ok(true)) {
        return Outcome::Failed;
    }
    told.await.unwrap_or(Outcome::Failed)
}

/// An [`Accept`] that counts the connections it completes (open while their stream lives) and
/// the TLS handshakes that fail.
struct Counted<A>(A, Arc<InputStats>);

impl<A: Accept> Accept for Counted<A> {
    type Io = CountedIo<A::Io>;

    async fn accept(&self, tcp: tokio::net::TcpStream) -> io::Result<Self::Io> {
        let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        // Counts the handshake as failed unless it ends: the server drops this future when
        // the handshake takes too long.
        let mut unfinished = Unfinished {
            stats: &self.1,
            peer: &peer,
            error: Some("not finished in time".to_owned()),
        };
        match self.0.accept(tcp).await {
            Ok(io) => {
                unfinished.error = None;
                self.1.open.fetch_add(1, Ordering::Relaxed);
                self.1.total.fetch_add(1, Ordering::Relaxed);
                Ok(CountedIo(io, Arc::clone(&self.1)))
            }
            Err(e) => {
                // Only a TLS handshake can fail here (plain connections are taken as they are).
                unfinished.error = Some(e.to_string());
                Err(e)
            }
        }
    }
}

/// A handshake under way: when dropped with an error (failed, or never finished), the
/// connection is counted and logged as refused.
struct Unfinished<'a> {
    stats: &'a InputStats,
    peer: &'a str,
    error: Option<String>,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if let Some(error) = self.error.take() {
            self.stats.tls_failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer = %self.peer, %error,
                "input connection refused: its TLS handshake failed (counted in \
                 egresswatch_input_tls_handshake_failures_total)");
        }
    }
}

/// A connection's stream, counted as open until dropped.
struct CountedIo<I>(I, Arc<InputStats>);

impl<I> Drop for CountedIo<I> {
    fn drop(&mut self) {
        self.1.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for CountedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for CountedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
