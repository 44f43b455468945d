//! Connections to Cognito, kept warm: the SDK's HTTP client, replaced by one whose connector
//! holds a connection ready for each endpoint the gateway serves.
//!
//! A sidecar sees a few resets a minute, so between two calls its pooled connection has usually
//! gone idle and been closed, and the next call pays for DNS, TCP and a TLS handshake with
//! `cognito-idp.<region>.amazonaws.com` (about 8 ms on loopback without TLS; far more to AWS).
//! AWS does not publish how long its endpoints keep an idle HTTP/1.1 connection open; what is
//! reported ranges from about 5–20 s (S3) to 60 s (DynamoDB, and the load balancers' default).
//! Two things follow:
//!
//! - **No pooled connection idles longer than `refresh`** (hyper's pool drops it first). Besides
//!   the handshake, a request written on a connection the server is closing fails after it was
//!   sent: for a reset, an unknown outcome.
//! - **Each endpoint has a spare**: a connection opened ahead of need (DNS resolved, TCP and TLS
//!   done), replaced every `refresh` and as soon as it is taken. A call that finds the pool empty
//!   takes the spare instead of connecting. A spare the server has closed (seen with a peek) is
//!   never handed out.
//! - **Spares only while the endpoint answers.** A connection can be accepted by an endpoint that
//!   will never answer on it (a wedged server behind a listening socket; on plain HTTP nothing
//!   proves otherwise), and a reset written there is an unknown outcome. So once a call on an
//!   endpoint fails without an answer (an error, or dropped at its timeout), its spare is dropped
//!   and none is kept until a call there is answered again: after an outage the first call
//!   connects itself, as it would without spares.
//!
//! What it costs Cognito: one TCP connection and TLS handshake per endpoint every `refresh` (240
//! an hour at 15 s), never a request: nothing is billed, counted against a quota or logged as an
//! API call.

use std::{
    collections::HashMap,
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use aws_sdk_cognitoidentityprovider::config::{RuntimeComponents, SharedHttpClient};
use aws_smithy_runtime_api::client::{
    http::{
        HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
        http_client_fn,
    },
    orchestrator::HttpRequest,
    result::ConnectorError,
};
use aws_smithy_runtime_api::http::Response as HttpResponse;
use aws_smithy_types::body::SdkBody;
use http::Uri;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector as TcpConnector},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tokio::{
    net::TcpStream,
    sync::{Notify, watch},
    task::JoinHandle,
    time::Instant,
};
use tower::Service as _;

type Https = HttpsConnector<TcpConnector>;
type Conn = MaybeHttpsStream<TokioIo<TcpStream>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The HTTP client the SDK sends with: hyper's pool over a [`WarmConnector`].
#[derive(Debug, Clone)]
pub(crate) struct WarmHttp {
    client: Client<WarmConnector, SdkBody>,
    connector: WarmConnector,
}

impl WarmHttp {
    /// A client whose idle connections and spares live at most `refresh`, that gives up
    /// connecting after `connect_timeout`.
    pub(crate) fn new(refresh: Duration, connect_timeout: Duration) -> io::Result<Self> {
        let mut tcp = TcpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        // The system's roots, as the SDK's own client has them (`SSL_CERT_FILE` is honoured); none
        // found is no error here: plain-HTTP endpoints (the local Cognito) need none, and a TLS
        // endpoint then fails its handshake, as it would have.
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let connector = WarmConnector {
            https,
            spares: Arc::default(),
            refresh,
            connect_timeout,
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(refresh)
            .build(connector.clone());
        Ok(Self { client, connector })
    }

    /// The client as the SDK's configuration takes it.
    pub(crate) fn shared(&self) -> SharedHttpClient {
        let this = self.clone();
        http_client_fn(
            move |_settings: &HttpConnectorSettings, _: &RuntimeComponents| {
                SharedHttpConnector::new(this.clone())
            },
        )
    }

    /// Keeps a spare connection to `endpoint` (`https://host[:port]`, once resolved; none: nothing
    /// is kept) until the handle is dropped.
    pub(crate) fn keep_warm(
        &self,
        endpoint: impl Future<Output = Option<Uri>> + Send + 'static,
    ) -> WarmHandle {
        let connector = self.connector.clone();
        WarmHandle(tokio::spawn(async move {
            if let Some(endpoint) = endpoint.await {
                connector.keep_warm(endpoint).await;
            }
        }))
    }

    /// The endpoints kept warm (`scheme://authority`).
    #[cfg(test)]
    pub(crate) fn endpoints_kept(&self) -> Vec<String> {
        self.connector.spares.lock().keys().cloned().collect()
    }

    /// Connections opened so far for `endpoint` as spares, and taken by calls.
    #[cfg(test)]
    pub(crate) fn spare_counts(&self, endpoint: &Uri) -> (u64, u64) {
        let spares = self.connector.spares.lock();
        spares
            .get(&key(endpoint))
            .map_or((0, 0), |slot| (slot.opened, slot.taken))
    }

    /// Waits until `n` spares in all have been opened for `endpoint`.
    #[cfg(test)]
    pub(crate) async fn spares_opened(&self, endpoint: &Uri, n: u64) {
        let mut stored = self.connector.spares.stored.subscribe();
        stored
            .wait_for(|_| self.spare_counts(endpoint).0 >= n)
            .await
            .expect("the sender lives in `self`");
    }
}

/// The most of a reply that is read. Cognito's replies are a few kilobytes (a pool's description
/// the largest), and the SDK reads a body whole before parsing it: a longer one (a fault, a
/// hostile endpoint) is cut off here, as an unreadable reply, before it can grow the gateway.
const MAX_REPLY_BYTES: usize = 1 << 20;

// Not shown to the SDK as an `HttpClient` by itself: `shared` wraps it, so that the SDK's settings
// (the same for every call here) never build a second pool.
impl HttpConnector for WarmHttp {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let request = match request.try_into_http1x() {
            Ok(request) => request,
            Err(error) => {
                return HttpConnectorFuture::ready(Err(ConnectorError::user(error.into())));
            }
        };
        let health = Health {
            spares: Arc::clone(&self.connector.spares),
            endpoint: key(request.uri()),
            answered: None,
        };
        let sent = self.client.request(request);
        HttpConnectorFuture::new(async move {
            // The whole guard moves in (a closure would capture only the field it assigns).
            let mut health = health;
            let response = sent.await;
            health.answered = Some(response.is_ok());
            match response {
                Ok(response) => HttpResponse::try_from(response.map(|body| {
                    SdkBody::from_body_1_x(http_body_util::Limited::new(body, MAX_REPLY_BYTES))
                }))
                .map_err(|error| ConnectorError::other(error.into(), None)),
                Err(error) => Err(connector_error(error)),
            }
        })
    }
}

/// Whether a request's endpoint answered it: told to the endpoint's slot when the request ends,
/// also when it is dropped unanswered (its operation timed out).
struct Health {
    spares: Arc<Spares>,
    endpoint: String,
    answered: Option<bool>,
}

impl Drop for Health {
    fn drop(&mut self) {
        let answering = self.answered == Some(true);
        let mut spares = self.spares.lock();
        let Some(slot) = spares.get_mut(&self.endpoint) else {
            return;
        };
        if slot.answering != answering {
            slot.answering = answering;
            if answering {
                // Spares again, from now.
                slot.taken_signal.notify_one();
            } else {
                slot.spare = None;
            }
        }
    }
}

/// Sorts hyper's failure as the SDK's own client does, so that retries and the error table see
/// the same kinds: connect failures and closed connections are I/O, a message cut short is
/// transient, the rest is "other". The hyper error stays in the chain (`retry::is_connect_failure`
/// reads it).
fn connector_error(error: hyper_util::client::legacy::Error) -> ConnectorError {
    use aws_smithy_types::retry::ErrorKind;
    let io = error.is_connect() || source::<io::Error>(&error).is_some();
    let hyper = source::<hyper::Error>(&error);
    if hyper.is_some_and(hyper::Error::is_timeout) {
        return ConnectorError::timeout(error.into());
    }
    if hyper.is_some_and(|e| e.is_closed() || e.is_canceled()) || io {
        return ConnectorError::io(error.into());
    }
    if hyper.is_some_and(hyper::Error::is_incomplete_message) {
        return ConnectorError::other(error.into(), Some(ErrorKind::TransientError));
    }
    ConnectorError::other(error.into(), None)
}

fn source<'a, E: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<E>() {
            return Some(found);
        }
        next = error.source();
    }
    None
}

/// Ends a [`WarmHttp::keep_warm`] task when dropped (its spare is closed with it).
#[derive(Debug)]
pub(crate) struct WarmHandle(JoinHandle<()>);

impl Drop for WarmHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// hyper's connector: hands out an endpoint's spare when it has a fresh one, else connects.
#[derive(Debug, Clone)]
pub(crate) struct WarmConnector {
    https: Https,
    spares: Arc<Spares>,
    refresh: Duration,
    /// DNS, TCP and TLS together.
    connect_timeout: Duration,
}

/// One slot per endpoint kept warm, by `scheme://authority`.
#[derive(Debug)]
struct Spares {
    slots: Mutex<HashMap<String, Slot>>,
    /// Bumped whenever a spare is stored (tests wait on it).
    stored: watch::Sender<u64>,
}

impl Default for Spares {
    fn default() -> Self {
        Self {
            slots: Mutex::default(),
            stored: watch::Sender::new(0),
        }
    }
}

impl Spares {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        // A panic while holding the lock leaves at worst a spare missing.
        self.slots
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

struct Slot {
    spare: Option<(Conn, Instant)>,
    /// Whether the endpoint's last call was answered (or none has failed yet): spares are kept
    /// only then.
    answering: bool,
    /// Wakes the endpoint's task to open the next spare.
    taken_signal: Arc<Notify>,
    opened: u64,
    taken: u64,
    /// The tasks keeping it (regions may share an endpoint): it goes, spare and all, with the
    /// last, so that endpoints a caller made up do not pile up.
    keepers: usize,
}

impl Default for Slot {
    fn default() -> Self {
        Self {
            spare: None,
            answering: true,
            taken_signal: Arc::default(),
            opened: 0,
            taken: 0,
            keepers: 0,
        }
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("spare", &self.spare.is_some())
            .field("opened", &self.opened)
            .field("taken", &self.taken)
            .finish()
    }
}

/// One task's hold on an endpoint's slot (which lives as long as one is held), released when the
/// task ends or is aborted.
struct Kept(String, Arc<Spares>);

impl Kept {
    /// A hold on `endpoint`'s slot, and the slot's signal that its spare was taken.
    fn new(spares: &Arc<Spares>, endpoint: String) -> (Self, Arc<Notify>) {
        let signal = {
            let mut slots = spares.lock();
            let slot = slots.entry(endpoint.clone()).or_default();
            slot.keepers += 1;
            Arc::clone(&slot.taken_signal)
        };
        (Self(endpoint, Arc::clone(spares)), signal)
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        let mut spares = self.1.lock();
        if let Some(slot) = spares.get_mut(&self.0) {
            slot.keepers -= 1;
            if slot.keepers == 0 {
                spares.remove(&self.0);
            }
        }
    }
}

fn key(uri: &Uri) -> String {
    format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("https"),
        uri.authority().map_or("", |a| a.as_str())
    )
}

impl WarmConnector {
    /// The endpoint's spare, if it has one younger than `refresh` that the server has not closed.
    fn take_spare(&self, uri: &Uri) -> Option<Conn> {
        let mut spares = self.spares.lock();
        let slot = spares.get_mut(&key(uri))?;
        if !slot.answering {
            return None;
        }
        let (mut conn, opened) = slot.spare.take()?;
        slot.taken_signal.notify_one();
        if opened.elapsed() >= self.refresh || !still_open(&mut conn) {
            return None;
        }
        slot.taken += 1;
        Some(conn)
    }

    /// A new connection to `uri`, within the connect timeout.
    fn connect(&self, uri: Uri) -> impl Future<Output = Result<Conn, BoxError>> + Send + 'static {
        let connecting = self.https.clone().call(uri);
        let timeout = self.connect_timeout;
        async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => connected,
                Err(_elapsed) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting to Cognito took longer than {timeout:?}"),
                )
                .into()),
            }
        }
    }

    /// Opens a spare for `endpoint` now, again whenever it is taken, and every `refresh`.
    async fn keep_warm(self, endpoint: Uri) {
        let (kept, signal) = Kept::new(&self.spares, key(&endpoint));
        let mut failures = 0_u32;
        loop {
            let answering = self
                .spares
                .lock()
                .get(&kept.0)
                .is_none_or(|slot| slot.answering);
            if !answering {
                // Until a call there is answered (which signals).
                signal.notified().await;
                continue;
            }
            match self.connect(endpoint.clone()).await {
                Ok(conn) => {
                    failures = 0;
                    let stored = {
                        let mut spares = self.spares.lock();
                        // A call failed while this one was connecting: not kept.
                        spares
                            .get_mut(&kept.0)
                            .filter(|slot| slot.answering)
                            .map(|slot| {
                                slot.spare = Some((conn, Instant::now()));
                                slot.opened += 1;
                            })
                    };
                    if stored.is_some() {
                        self.spares.stored.send_modify(|n| *n += 1);
                    }
                }
                Err(error) => {
                    // A call then connects itself, and fails or succeeds as it would have.
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(%endpoint, error = %DisplayChain(&*error), "cannot open a spare connection to Cognito");
                    }
                }
            }
            // A spare that was taken is replaced at once; an unused one before it gets stale.
            let _ = tokio::time::timeout(self.refresh, signal.notified()).await;
        }
    }
}

/// Whether the server has not closed (or written to) an idle connection: a read that would
/// block. What a server may send after the handshake (TLS 1.3 session tickets) is taken in by
/// rustls and is no data; anything else on an idle HTTP/1.1 connection is its end (EOF, a TLS
/// close_notify, an error).
fn still_open(conn: &mut Conn) -> bool {
    use tokio::io::AsyncRead as _;
    let mut byte = [0_u8; 1];
    let mut buf = tokio::io::ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let read = match conn {
        MaybeHttpsStream::Http(io) => Pin::new(io.inner_mut()).poll_read(&mut cx, &mut buf),
        MaybeHttpsStream::Https(io) => Pin::new(io.inner_mut()).poll_read(&mut cx, &mut buf),
    };
    read.is_pending()
}

impl tower::Service<Uri> for WarmConnector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.https.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        if let Some(conn) = self.take_spare(&uri) {
            return Box::pin(std::future::ready(Ok(conn)));
        }
        Box::pin(self.connect(uri))
    }
}

/// An error and its sources, on one line.
struct DisplayChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(error) = next {
            write!(f, ": {error}")?;
            next = error.source();
        }
        Ok(())
    }
}
