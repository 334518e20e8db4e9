//! A listener that serves plain text or TLS, for axum ([`axum::serve::Listener`]) and tonic
//! ([`Listener::incoming`]) alike.
//!
//! With TLS, handshakes run concurrently, each in a task of its own with a time limit
//! ([`HANDSHAKE_TIMEOUT`]), and the finished connections are handed to the server through a
//! channel: a client that connects and then says nothing, or speaks slowly, holds up nobody
//! else. A failed handshake (plain text on a TLS port, a certificate the client does not
//! trust, a client certificate missing or signed by another CA) closes that connection, is
//! logged with the peer's address and counted in `hallmark.operations.failed`
//! (operation `tls_handshake`). Each handshake uses the certificate as it is when its
//! connection arrives, so a renewed one is served without a restart ([`super::config`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::ServerTls;

/// The longest a client may take to complete its TLS handshake after connecting.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The most handshakes in progress at once; past that, new connections wait in the kernel's
/// backlog until one finishes or times out.
const MAX_HANDSHAKES: usize = 256;

/// How many finished handshakes may wait for the server to take them.
const READY: usize = 64;

/// A bound port that serves either plain text or TLS.
pub struct Listener {
    inner: Inner,
}

enum Inner {
    Plain(TcpListener),
    Tls {
        local_addr: SocketAddr,
        ready: mpsc::Receiver<Connection>,
        acceptor: JoinHandle<()>,
    },
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Stops accepting and closes the port at once, with the handshakes in progress.
        if let Self::Tls { acceptor, .. } = self {
            acceptor.abort();
        }
    }
}

impl Listener {
    /// Serves plain text on `listener`.
    pub fn plain(listener: TcpListener) -> Self {
        Self {
            inner: Inner::Plain(listener),
        }
    }

    /// Serves TLS with `tls` on `listener`. Must be called within a Tokio runtime: the
    /// handshakes start at once, in tasks of their own.
    pub fn tls(listener: TcpListener, tls: &ServerTls) -> io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (sender, ready) = mpsc::channel(READY);
        let acceptor = tokio::spawn(accept_and_handshake(listener, tls.clone(), sender));
        Ok(Self {
            inner: Inner::Tls {
                local_addr,
                ready,
                acceptor,
            },
        })
    }

    /// TLS with `tls` when given, else plain text.
    pub fn new(listener: TcpListener, tls: Option<&ServerTls>) -> io::Result<Self> {
        match tls {
            Some(tls) => Self::tls(listener, tls),
            None => Ok(Self::plain(listener)),
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.inner {
            Inner::Plain(listener) => listener.local_addr(),
            Inner::Tls { local_addr, .. } => Ok(*local_addr),
        }
    }

    /// Whether connections are TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.inner, Inner::Tls { .. })
    }

    /// The next connection, TLS handshake done. Errors accepting (too many open files) are
    /// logged and retried after a pause, as axum's own listener does.
    pub async fn accept(&mut self) -> Connection {
        match &mut self.inner {
            Inner::Plain(listener) => loop {
                match listener.accept().await {
                    Ok((stream, peer)) => return Connection::new(Io::Plain(stream), peer),
                    Err(err) => accept_failed(err).await,
                }
            },
            Inner::Tls { ready, .. } => match ready.recv().await {
                Some(connection) => connection,
                // The acceptor ends only when aborted, which happens when `self` is dropped.
                None => std::future::pending().await,
            },
        }
    }

    /// The connections as a stream, for tonic's `serve_with_incoming_shutdown`.
    pub fn incoming(self) -> impl futures::Stream<Item = io::Result<Connection>> + Send + 'static {
        futures::stream::unfold(self, |mut listener| async move {
            let connection = listener.accept().await;
            Some((Ok(connection), listener))
        })
    }
}

impl axum::serve::Listener for Listener {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let connection = Listener::accept(self).await;
        let peer = connection.peer;
        (connection, peer)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Listener::local_addr(self)
    }
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Self {
        Self::plain(listener)
    }
}

async fn accept_failed(err: io::Error) {
    // Errors of the connection itself (reset before it was taken) need no pause.
    if matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %err, "cannot accept a connection; trying again in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Accepts connections and runs their handshakes, each in a task, until the listener is
/// dropped (which aborts this task) or its channel closes.
async fn accept_and_handshake(
    listener: TcpListener,
    tls: ServerTls,
    ready: mpsc::Sender<Connection>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    accept_failed(err).await;
                    continue;
                }
            },
            () = ready.closed() => return,
        };
        // Each connection takes the configuration as it is now: renewed files count from the
        // next connection on.
        let acceptor = TlsAcceptor::from(tls.config());
        let ready = ready.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    // When the server has stopped, the connection is simply closed.
                    let _ = ready
                        .send(Connection::new(Io::Tls(Box::new(tls)), peer))
                        .await;
                }
                Ok(Err(err)) => handshake_failed(peer, &err),
                Err(_) => {
                    tracing::debug!(
                        peer = %peer,
                        timeout_s = HANDSHAKE_TIMEOUT.as_secs(),
                        "TLS handshake not completed in time; connection closed"
                    );
                    telemetry::metrics::record_failure("tls_handshake", "none", "timeout");
                }
            }
        });
    }
}

fn handshake_failed(peer: SocketAddr, err: &io::Error) {
    // A peer that hung up without a word is a health check or a port scan; anything else is
    // a client that tried and failed (plain text, an untrusted certificate, none at all),
    // which its operator wants to hear about.
    if err.kind() == io::ErrorKind::UnexpectedEof {
        tracing::debug!(peer = %peer, error = %err, "connection closed before its TLS handshake");
        telemetry::metrics::record_failure("tls_handshake", "none", "closed");
        return;
    }
    tracing::warn!(peer = %peer, error = %err, "TLS handshake failed; connection closed");
    telemetry::metrics::record_failure("tls_handshake", "none", "refused");
}

/// An accepted connection, plain or TLS.
pub struct Connection {
    io: Io,
    peer: SocketAddr,
    local: Option<SocketAddr>,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection {
    fn new(io: Io, peer: SocketAddr) -> Self {
        let tcp = match &io {
            Io::Plain(stream) => stream,
            Io::Tls(stream) => stream.get_ref().0,
        };
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().ok();
        Self { io, peer, local }
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.io, Io::Tls(_))
    }
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo {
            local_addr: self.local,
            remote_addr: Some(self.peer),
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(stream) => stream.is_write_vectored(),
            Io::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
