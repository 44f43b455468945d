//! Cognito with faults on the wire: a raw TCP server that speaks just enough HTTP/1.1 to answer the
//! AWS SDK as Cognito does, and fails, at the test's word, the way networks and overloaded services
//! fail: silence before or after the request is read, a connection reset mid-response, a body that
//! stalls, truncated JSON, 5xx and throttling replies, bytes that are not HTTP (or not TLS).
//!
//! wiremock (`fake_cognito.rs`) answers with whole HTTP responses only; these faults live below
//! HTTP, so they need a socket of their own. The fault is read afresh for each connection and each
//! request, so a test can switch it on and off while the gateway's connections stay open.
//!
//! It counts what matters for the retry rules: the connections it accepted and the
//! `AdminResetUserPassword` requests it read (the sends), by username. Both counts are watch
//! channels, so that a test awaits "the request was read" instead of sleeping.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use serde_json::json;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

use super::fake_cognito::{DESCRIBE, TARGET};

/// How the fake answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// As Cognito: resets answer HTTP 200 `{}` with a request id; pools are case-sensitive.
    None,
    /// Every new connection is accepted and never read from or answered (a TLS client waits for
    /// the server's hello; a plain HTTP client's request sits unread in the socket buffer). Open
    /// connections answer as usual.
    Silent,
    /// Each new connection gets bytes that are neither HTTP nor TLS, then is closed.
    Garbage,
    /// A reset is read, then never answered.
    HangAfterRequest,
    /// A reset is read; the response head and part of its body are sent, then the connection is
    /// reset (RST, not FIN).
    ResetMidResponse,
    /// A reset is read; the response head and the first byte of its body are sent, then nothing.
    StallMidBody,
    /// A reset gets HTTP `status` with a JSON body cut short (its Content-Length is honest).
    TruncatedJson {
        /// The HTTP status.
        status: u16,
    },
    /// A reset gets HTTP 200 and a valid JSON body of 8 MiB: more than any Cognito reply.
    HugeBody,
    /// A reset gets Cognito's error reply: a 5xx storm or a throttling storm.
    Error {
        /// The HTTP status.
        status: u16,
        /// The exception name (`InternalErrorException`, `TooManyRequestsException`, ...).
        exception: &'static str,
    },
}

/// The fake, serving on 127.0.0.1 until dropped.
pub struct ChaosCognito {
    pub addr: SocketAddr,
    state: Arc<State>,
    server: JoinHandle<()>,
}

struct State {
    fault: Mutex<Fault>,
    /// Connections accepted so far.
    connections: watch::Sender<usize>,
    /// `AdminResetUserPassword` requests read so far.
    resets: watch::Sender<usize>,
    /// The same, by username.
    by_user: Mutex<HashMap<String, usize>>,
    /// Sockets held open without being served ([`Fault::Silent`]), so that they stay open until
    /// the fake is dropped.
    held: Mutex<Vec<TcpStream>>,
}

impl Drop for ChaosCognito {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl ChaosCognito {
    /// Starts the fake on 127.0.0.1:0, answering as Cognito does.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("port 0 binds");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let state = Arc::new(State {
            fault: Mutex::new(Fault::None),
            connections: watch::channel(0).0,
            resets: watch::channel(0).0,
            by_user: Mutex::new(HashMap::new()),
            held: Mutex::new(Vec::new()),
        });
        let server = tokio::spawn(accept(listener, Arc::clone(&state)));
        Self {
            addr,
            state,
            server,
        }
    }

    /// `http://` and its address: the endpoint for the SDK.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `https://` and its address: the SDK then starts a TLS handshake the fake cannot finish.
    pub fn tls_endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// From now on, fail this way (or, with [`Fault::None`], stop failing).
    pub fn set(&self, fault: Fault) {
        *lock(&self.state.fault) = fault;
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        *self.state.connections.borrow()
    }

    /// Resets read so far (the sends), whoever they were for.
    pub fn sends(&self) -> usize {
        *self.state.resets.borrow()
    }

    /// Resets read so far for `username`.
    pub fn sends_for(&self, username: &str) -> usize {
        lock(&self.state.by_user)
            .get(username)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until `n` resets in all have been read.
    pub async fn read_resets(&self, n: usize) {
        let mut resets = self.state.resets.subscribe();
        resets
            .wait_for(|read| *read >= n)
            .await
            .expect("the sender lives in the fake");
    }

    /// Waits until `n` connections in all have been accepted.
    pub async fn accepted(&self, n: usize) {
        let mut connections = self.state.connections.subscribe();
        connections
            .wait_for(|accepted| *accepted >= n)
            .await
            .expect("the sender lives in the fake");
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // No critical section can panic half-way; a poisoned lock is still consistent.
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

async fn accept(listener: TcpListener, state: Arc<State>) {
    while let Ok((socket, _)) = listener.accept().await {
        state.connections.send_modify(|n| *n += 1);
        let fault = lock(&state.fault).clone();
        match fault {
            Fault::Silent => lock(&state.held).push(socket),
            Fault::Garbage => {
                tokio::spawn(async move {
                    let mut socket = socket;
                    let _ = socket.write_all(b"\x00\xffnot a protocol\r\n\r\n").await;
                });
            }
            _ => {
                tokio::spawn(serve(socket, Arc::clone(&state)));
            }
        }
    }
}

/// One request as the fake needs it.
struct Request {
    target: String,
    username: Option<String>,
}

/// Serves requests on one connection until it closes or a fault ends it.
async fn serve(mut socket: TcpStream, state: Arc<State>) {
    let mut buffer = Vec::new();
    while let Some(request) = read_request(&mut socket, &mut buffer).await {
        if request.target != TARGET {
            let reply = if request.target == DESCRIBE {
                let body = json!({
                    "UserPool": { "Id": "us-east-1_Chaos", "UsernameConfiguration": { "CaseSensitive": true } }
                });
                response(200, &[], &body.to_string())
            } else {
                error_reply(400, "UnknownOperationException", "")
            };
            if socket.write_all(&reply).await.is_err() {
                return;
            }
            continue;
        }
        let fault = lock(&state.fault).clone();
        if let Some(username) = &request.username {
            *lock(&state.by_user).entry(username.clone()).or_default() += 1;
        }
        state.resets.send_modify(|n| *n += 1);
        let reply = match fault {
            Fault::None | Fault::Silent | Fault::Garbage => {
                let id = format!("chaos-{}", *state.resets.borrow());
                response(200, &[("x-amzn-RequestId", &id)], "{}")
            }
            Fault::HangAfterRequest => {
                // Held open, unanswered, until the client gives up.
                let mut rest = [0u8; 1024];
                while matches!(socket.read(&mut rest).await, Ok(n) if n > 0) {}
                return;
            }
            Fault::ResetMidResponse => {
                let reply = response(200, &[("x-amzn-RequestId", "chaos-reset")], "{}");
                let _ = socket.write_all(&reply[..reply.len() - 1]).await;
                // SO_LINGER 0: close(2) sends RST instead of FIN.
                let _ = socket.set_zero_linger();
                return;
            }
            Fault::StallMidBody => {
                let reply = response(200, &[("x-amzn-RequestId", "chaos-stall")], "{}");
                let _ = socket.write_all(&reply[..reply.len() - 1]).await;
                let mut rest = [0u8; 1024];
                while matches!(socket.read(&mut rest).await, Ok(n) if n > 0) {}
                return;
            }
            Fault::TruncatedJson { status } => response(
                status,
                &[("x-amzn-RequestId", "chaos-truncated")],
                "{\"__ty",
            ),
            Fault::HugeBody => response(
                200,
                &[("x-amzn-RequestId", "chaos-huge")],
                &format!("{{\"padding\":\"{}\"}}", "x".repeat(8 << 20)),
            ),
            Fault::Error { status, exception } => error_reply(status, exception, "chaos"),
        };
        if socket.write_all(&reply).await.is_err() {
            return;
        }
    }
}

/// Reads one request (head and body) off the connection; `None` at its end or on nonsense.
async fn read_request(socket: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<Request> {
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        read_more(socket, buffer).await?;
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let target = header("x-amz-target").unwrap_or_default();
    while buffer.len() < head_end + length {
        read_more(socket, buffer).await?;
    }
    let body: serde_json::Value =
        serde_json::from_slice(&buffer[head_end..head_end + length]).unwrap_or_default();
    buffer.drain(..head_end + length);
    Some(Request {
        target,
        username: body["Username"].as_str().map(str::to_owned),
    })
}

async fn read_more(socket: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    match socket.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buffer.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

/// An HTTP/1.1 response as Cognito sends it (JSON 1.1, keep-alive).
fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\n",
        reason_phrase(status),
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

/// Cognito's error reply: `x-amzn-ErrorType`, `x-amzn-RequestId` and a `__type`/`message` body.
fn error_reply(status: u16, exception: &str, message: &str) -> Vec<u8> {
    let body = json!({ "__type": exception, "message": message }).to_string();
    response(
        status,
        &[
            ("x-amzn-RequestId", "chaos-error"),
            ("x-amzn-ErrorType", exception),
        ],
        &body,
    )
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}
