//! A TCP listener whose connections come out TLS-established.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::Reloader;

/// Longest a client may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at most; further TCP connections wait to be accepted.
const MAX_HANDSHAKES: usize = 256;

/// An established TLS connection and its peer.
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    local: Option<SocketAddr>,
    remote: SocketAddr,
}

impl TlsConn {
    /// The client's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// The TCP connection under the TLS session (for socket options).
    pub fn tcp(&self) -> &TcpStream {
        self.stream.get_ref().0
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo {
            local_addr: self.local,
            remote_addr: Some(self.remote),
        }
    }
}

/// Accepts TCP connections and hands out those whose TLS handshake succeeded.
///
/// Handshakes run concurrently (at most 256, each within 10 s), so a slow or
/// silent client holds up nobody else. A client refused by the handshake (no
/// TLS, no or a wrong client certificate) is logged at debug level and closed.
pub struct TlsListener {
    ready: mpsc::Receiver<TlsConn>,
    local: SocketAddr,
    accept_task: JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `tcp` with the configuration `tls` holds at each accept.
    pub fn new(tcp: TcpListener, tls: Arc<Reloader>) -> io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (sender, ready) = mpsc::channel(64);
        let accept_task = tokio::spawn(accept_loop(tcp, tls, sender));
        Ok(TlsListener {
            ready,
            local,
            accept_task,
        })
    }

    /// The next established connection (`None` once the accept loop ended).
    pub async fn next(&mut self) -> Option<TlsConn> {
        self.ready.recv().await
    }

    /// The connections as a stream, for tonic's `serve_with_incoming`.
    pub fn into_incoming(
        self,
    ) -> impl futures::Stream<Item = Result<TlsConn, io::Error>> + Send + 'static {
        futures::stream::unfold(self, |mut listener| async move {
            let conn = listener.next().await?;
            Some((Ok(conn), listener))
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.next().await {
            Some(conn) => {
                let remote = conn.remote;
                (conn, remote)
            }
            // The accept loop ends only when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn accept_loop(tcp: TcpListener, tls: Arc<Reloader>, ready: mpsc::Sender<TlsConn>) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let local = tcp.local_addr().ok();
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return;
        };
        let (stream, remote) = tokio::select! {
            accepted = tcp.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(%error, "TLS listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = ready.closed() => return,
        };
        let _ = stream.set_nodelay(true);
        let acceptor = TlsAcceptor::from(tls.current());
        let ready = ready.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let _ = ready
                        .send(TlsConn {
                            stream,
                            local,
                            remote,
                        })
                        .await;
                }
                Ok(Err(error)) => {
                    tracing::debug!(%remote, %error, "TLS handshake refused");
                }
                Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
            }
        });
    }
}
