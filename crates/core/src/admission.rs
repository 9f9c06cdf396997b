//! What every listener does with a new connection before it speaks its protocol: a cap on
//! how many it holds at once (each is a file descriptor; the process's limit is shared with
//! the field links, the store and the broker connections), and a deadline on silence, so that
//! connections that never send anything (or stop half way) are closed instead of held for
//! good. 1,100 idle connections used to exhaust the descriptors and stop every listener and
//! even the Modbus reconnects.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tracing::warn;

/// Connections the gRPC API holds at once.
pub const GRPC_MAX: usize = 256;
/// Connections the commissioning page holds at once.
pub const WEB_MAX: usize = 128;
/// Field devices connected to the durable MQTT listener at once.
pub const FIELD_MAX: usize = 512;
/// Longest a TLS handshake may take.
pub const HANDSHAKE_WITHIN: Duration = Duration::from_secs(10);

/// One listener's cap and counters.
#[derive(Debug)]
pub struct Admission {
    name: &'static str,
    cap: usize,
    permits: Arc<Semaphore>,
    refused: AtomicU64,
    timed_out: AtomicU64,
    last_warned: Mutex<Option<Instant>>,
}

impl Admission {
    /// A listener called `name` holding at most `cap` connections.
    pub fn new(name: &'static str, cap: usize) -> Arc<Admission> {
        Arc::new(Admission {
            name,
            cap,
            permits: Arc::new(Semaphore::new(cap)),
            refused: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            last_warned: Mutex::new(None),
        })
    }

    /// A place for one more connection, or `None` at the cap (counted, and said at most once
    /// a minute): the caller closes the connection at once.
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        match self.permits.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
                let mut last = self.last_warned.lock().unwrap_or_else(|p| p.into_inner());
                if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    *last = Some(Instant::now());
                    warn!(
                        listener = self.name,
                        cap = self.cap,
                        refused_total = n,
                        "connection refused: the listener holds as many as it may (idle or slow clients?)"
                    );
                }
                None
            }
        }
    }

    /// Wraps an admitted connection so that `idle` without a byte from the peer ends it.
    pub fn guard<S>(
        self: &Arc<Self>,
        inner: S,
        permit: OwnedSemaphorePermit,
        idle: Duration,
    ) -> Guarded<S> {
        Guarded {
            inner,
            _permit: permit,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            admission: self.clone(),
        }
    }

    /// Counts a connection closed for its silence (or a handshake that took too long).
    pub fn timed_out(&self) {
        self.timed_out.fetch_add(1, Ordering::Relaxed);
    }

    /// The listener's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.cap - self.permits.available_permits()
    }

    /// Connections refused at the cap since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections closed for silence since start.
    pub fn timeouts(&self) -> u64 {
        self.timed_out.load(Ordering::Relaxed)
    }
}

/// Every listener's admission, by name, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Listeners(Arc<Mutex<BTreeMap<&'static str, Arc<Admission>>>>);

impl Listeners {
    /// The admission of listener `name` (made with `cap` the first time; a reload keeps
    /// the counters).
    pub fn get(&self, name: &'static str, cap: usize) -> Arc<Admission> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name)
            .or_insert_with(|| Admission::new(name, cap))
            .clone()
    }

    /// Every listener's admission.
    pub fn all(&self) -> Vec<Arc<Admission>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// A connection that holds its place under the cap until dropped, and fails its reads with
/// `TimedOut` once the peer has sent nothing for `idle`.
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    _permit: OwnedSemaphorePermit,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    admission: Arc<Admission>,
}

impl<S> Guarded<S> {
    /// The connection inside.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    let next = tokio::time::Instant::now() + self.idle;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.admission.timed_out();
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("nothing received for {:?}", self.idle),
                    )))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

// The gRPC server asks each connection for its peer address; only the api crate turns this
// on, so nothing else links tonic's server side.
#[cfg(feature = "grpc")]
impl tonic::transport::server::Connected for Guarded<tokio::net::TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_cap_refuses_and_counts_and_a_silent_peer_is_cut_off() {
        let a = Admission::new("test", 2);
        let p1 = a.admit().expect("first");
        let _p2 = a.admit().expect("second");
        assert!(a.admit().is_none(), "over the cap");
        assert_eq!((a.open(), a.refused()), (2, 1));
        let (client, server) = tokio::io::duplex(64);
        let mut g = a.guard(server, p1, Duration::from_millis(100));
        let mut client = client;
        client.write_all(b"hi").await.expect("write");
        let mut buf = [0u8; 2];
        g.read_exact(&mut buf).await.expect("bytes in time");
        let started = tokio::time::Instant::now();
        let e = g.read(&mut buf).await.expect_err("silence ends it");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(90));
        assert_eq!(a.timeouts(), 1);
        drop(g);
        assert_eq!(a.open(), 1, "a closed connection gives its place back");
        assert!(a.admit().is_some());
    }
}
