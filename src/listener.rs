//! The accept loop: every listener's connections, bounded before tonic sees them.
//!
//! - **At most `server.max_connections` at once, and `server.max_connections_per_peer` from one
//!   address.** Past either a new connection is closed at once, and counted; accepting never stops,
//!   so a flood cannot make the gateway deaf to everyone, and one host cannot take every place.
//! - **A handshake deadline** (`server.handshake_timeout_secs`): a connection that has not sent the
//!   HTTP/2 preface and its first SETTINGS frame header by then (after its TLS handshake, on the
//!   mTLS port: the deadline covers both) is closed. Without it, silent sockets stay open for ever
//!   (tonic and hyper set no such limit).
//! - **TLS handshakes run beside the loop,** never in it: a client that stalls its handshake holds
//!   one connection place until the deadline, not the loop, and not the other clients' handshakes.
//!   A waiting handshake costs a task and a socket; the crypto runs only once the client speaks, so
//!   the connection cap is the bound on both.
//! - **Shutdown does not wait for silent sockets.** Once the server stops accepting, a connection
//!   still short of its preface is closed: it has made no call, and hyper's graceful shutdown would
//!   otherwise wait for its handshake, so one silent client could hold every shutdown until the
//!   handshake deadline.

use std::{
    collections::HashMap,
    io,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::transport::server::Connected;

use crate::{auth::tls::Tls, metrics::metrics};

/// What a client must have sent before the deadline: the HTTP/2 connection preface (24 bytes) and
/// the header of the SETTINGS frame that must follow it (9 bytes).
const PREFACE_BYTES: usize = 24 + 9;

/// How a listener bounds its connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// Connections open at once.
    pub(crate) max_connections: usize,
    /// Connections open at once from one IP address.
    pub(crate) max_connections_per_peer: usize,
    /// From accept to the HTTP/2 preface (TLS included).
    pub(crate) handshake_timeout: Duration,
    /// TCP keepalive on accepted sockets.
    pub(crate) tcp_keepalive: Duration,
}

/// Accepts connections on `listener` until the returned stream is dropped, and yields them once
/// admitted (and, with `tls`, once their TLS handshake is done).
pub(crate) fn plain(
    listener: TcpListener,
    bounds: Bounds,
) -> ReceiverStream<io::Result<Conn<TcpStream>>> {
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        let places = Places::new(bounds);
        let (_stopped, accepting) = stop_signal();
        while let Some((tcp, place)) = accept(&listener, &places, bounds, &sender).await {
            let deadline = Instant::now() + bounds.handshake_timeout;
            if sender
                .send(Ok(Conn::new(tcp, place, deadline, &accepting)))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    ReceiverStream::new(receiver)
}

/// Like [`plain`], each connection's TLS handshake done beside the loop.
pub(crate) fn tls(
    listener: TcpListener,
    bounds: Bounds,
    tls: Arc<Tls>,
) -> ReceiverStream<io::Result<Conn<tokio_rustls::server::TlsStream<TcpStream>>>> {
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        let places = Places::new(bounds);
        let (_stopped, accepting) = stop_signal();
        while let Some((tcp, place)) = accept(&listener, &places, bounds, &sender).await {
            let deadline = Instant::now() + bounds.handshake_timeout;
            let acceptor = tls.acceptor();
            let ready = sender.clone();
            let accepting = accepting.clone();
            tokio::spawn(async move {
                let peer = tcp.peer_addr().ok();
                // A handshake in progress when the server stops accepting has no one to go to.
                let handshake = tokio::time::timeout_at(deadline, acceptor.accept(tcp));
                let outcome = tokio::select! {
                    outcome = handshake => outcome,
                    () = accepting.cancelled() => return,
                };
                match outcome {
                    Ok(Ok(stream)) => {
                        let _ = ready
                            .send(Ok(Conn::new(stream, place, deadline, &accepting)))
                            .await;
                    }
                    // A failed handshake concerns that client only.
                    Ok(Err(error)) => tracing::debug!(?peer, %error, "TLS handshake refused"),
                    Err(_) => refused("handshake_timeout"),
                }
            });
            if sender.is_closed() {
                return;
            }
        }
    });
    ReceiverStream::new(receiver)
}

/// A token cancelled when the returned guard drops: the accept loop holds the guard, so the token
/// says the listener has stopped accepting (tonic dropped its stream at shutdown).
fn stop_signal() -> (DropGuard, CancellationToken) {
    let accepting = CancellationToken::new();
    (accepting.clone().drop_guard(), accepting)
}

/// The next connection with a place; those without one are closed at once. `None` once the
/// server stopped taking connections (the listening socket is then closed at once).
async fn accept<T>(
    listener: &TcpListener,
    places: &Places,
    bounds: Bounds,
    server: &mpsc::Sender<T>,
) -> Option<(TcpStream, Place)> {
    let mut failures = AcceptFailures::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = server.closed() => return None,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: the condition passes, the loop must not
                // spin on it (nor flood the log) meanwhile.
                failures.note(&error);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let place = match places.take(peer.ip()) {
            Ok(place) => place,
            Err(why) => {
                refused(why);
                // Dropped: closed at once.
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(bounds.tcp_keepalive);
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
        return Some((tcp, place));
    }
}

/// The places a listener has: in all, and per client address.
struct Places {
    all: Arc<Semaphore>,
    peers: Arc<Peers>,
}

/// Connections open from each address; an address leaves the map with its last connection, so
/// the map is as large as the set of connected peers, never larger.
#[derive(Debug)]
struct Peers {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl Places {
    fn new(bounds: Bounds) -> Self {
        Self {
            all: Arc::new(Semaphore::new(bounds.max_connections)),
            peers: Arc::new(Peers {
                max: bounds.max_connections_per_peer,
                open: Mutex::default(),
            }),
        }
    }

    /// A place for a connection from `ip`, or the limit that refuses it.
    fn take(&self, ip: IpAddr) -> Result<Place, &'static str> {
        let Ok(any) = Arc::clone(&self.all).try_acquire_owned() else {
            return Err("max_connections");
        };
        {
            let mut open = self.peers.open.lock().unwrap_or_else(|e| e.into_inner());
            let count = open.entry(ip).or_default();
            if *count >= self.peers.max {
                return Err("max_connections_per_peer");
            }
            *count += 1;
        }
        Ok(Place {
            _any: any,
            peers: Arc::clone(&self.peers),
            ip,
        })
    }
}

/// A connection's place, given back when the connection closes.
#[derive(Debug)]
pub(crate) struct Place {
    _any: OwnedSemaphorePermit,
    peers: Arc<Peers>,
    ip: IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.peers.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Warns at start when the process may open fewer files than `max_connections` needs: the cap
/// protects file descriptors only if the open-files limit is above it (with room for the health
/// listener, Cognito's and the fleet store's connections, and the files read on reload).
pub(crate) fn check_open_files(max_connections: usize) {
    const ROOM: usize = 256;
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    if let Some(soft) = soft_open_files(&limits)
        && soft < max_connections + ROOM
    {
        tracing::warn!(
            open_files = soft,
            max_connections,
            "the open-files limit is below server.max_connections plus room for the gateway's own files: raise it (ulimit -n, the container runtime's nofile) or lower server.max_connections"
        );
    }
}

/// The soft open-files limit in `/proc/self/limits`' words; `None` where unlimited or unknown.
fn soft_open_files(limits: &str) -> Option<usize> {
    limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|soft| soft.parse().ok())
}

/// Failed accepts, logged at most once a second with how many there were.
#[derive(Default)]
struct AcceptFailures {
    since_logged: u64,
    logged_at: Option<Instant>,
}

impl AcceptFailures {
    fn note(&mut self, error: &io::Error) {
        self.since_logged += 1;
        if self
            .logged_at
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        tracing::warn!(%error, failures = self.since_logged, "accept failed (out of file descriptors? raise the open-files limit above server.max_connections)");
        self.since_logged = 0;
        self.logged_at = Some(Instant::now());
    }
}

fn refused(why: &'static str) {
    metrics()
        .connections_refused
        .add(1, &[opentelemetry::KeyValue::new("reason", why)]);
}

/// An admitted connection: holds its place until closed, and fails its reads once the handshake
/// deadline passes, or the server stops accepting, before the client has said enough.
pub(crate) struct Conn<IO> {
    io: IO,
    _place: Place,
    /// Until the preface has been read: ends with why the client may not wait any longer.
    deadline: Option<Pin<Box<dyn Future<Output = PrefaceCut> + Send>>>,
    read: usize,
}

/// Why a connection short of its preface is closed.
enum PrefaceCut {
    Deadline,
    ShuttingDown,
}

impl<IO> Conn<IO> {
    fn new(io: IO, place: Place, deadline: Instant, accepting: &CancellationToken) -> Self {
        let stopped = accepting.clone().cancelled_owned();
        Self {
            io,
            _place: place,
            deadline: Some(Box::pin(async move {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => PrefaceCut::Deadline,
                    () = stopped => PrefaceCut::ShuttingDown,
                }
            })),
            read: 0,
        }
    }
}

impl<IO: std::fmt::Debug> std::fmt::Debug for Conn<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("io", &self.io)
            .field("preface_read", &self.deadline.is_none())
            .finish_non_exhaustive()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Some(deadline) = &mut this.deadline {
            this.read += buf.filled().len() - before;
            if this.read >= PREFACE_BYTES {
                this.deadline = None;
            } else if polled.is_pending()
                && let Poll::Ready(cut) = deadline.as_mut().poll(cx)
            {
                let error = match cut {
                    PrefaceCut::Deadline => {
                        refused("handshake_timeout");
                        "no HTTP/2 preface before the handshake deadline"
                    }
                    PrefaceCut::ShuttingDown => "no HTTP/2 preface before shutdown",
                };
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, error)));
            }
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: Connected> Connected for Conn<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_address_gets_its_share_of_places_and_gives_them_back() {
        let places = Places::new(Bounds {
            max_connections: 3,
            max_connections_per_peer: 2,
            handshake_timeout: Duration::from_secs(1),
            tcp_keepalive: Duration::from_secs(1),
        });
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = places.take(a).unwrap();
        let _second = places.take(a).unwrap();
        assert_eq!(places.take(a).unwrap_err(), "max_connections_per_peer");
        // The refusal gave its global place back: another address still gets the last one.
        let _other = places.take(b).unwrap();
        assert_eq!(places.take(b).unwrap_err(), "max_connections");
        drop(first);
        let _again = places.take(a).unwrap();
        drop(_again);
        drop(_second);
        let open = places.peers.open.lock().unwrap();
        assert_eq!(
            open.len(),
            1,
            "an address leaves the map with its last connection"
        );
    }

    #[test]
    fn the_soft_open_files_limit_is_read_from_proc() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(soft_open_files(limits), Some(1024));
        assert_eq!(
            soft_open_files(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
        assert_eq!(soft_open_files(""), None);
    }
}
