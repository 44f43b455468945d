//! Shared test plumbing: spawn the real app on port 0 and talk to it over a real socket.

#![allow(dead_code, unreachable_pub)]

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use cognito_gateway::{
    App, Config,
    cognito::{Backend, SdkBackend},
    config::{CognitoSettings, LimitSettings},
    proto::{
        ResetUserPasswordRequest, ResetUserPasswordResponse,
        user_admin_service_client::UserAdminServiceClient,
    },
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{
    Request, Status,
    transport::{Channel, Endpoint},
};
use tonic_types::{ErrorDetails, ErrorInfo, StatusExt as _};

/// A gateway running in this process.
pub struct TestApp {
    pub addr: SocketAddr,
    pub health_addr: Option<SocketAddr>,
    pub client: UserAdminServiceClient<Channel>,
    pub channel: Channel,
    shutdown: Option<oneshot::Sender<()>>,
    pub handle: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Cognito settings for tests: fast backoff so retry tests take milliseconds.
pub fn test_settings() -> CognitoSettings {
    CognitoSettings {
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        ..CognitoSettings::default()
    }
}

/// The config tests start from: port 0, no authentication, limits and the per-user cooldown out of
/// the way (the tests of limits set their own).
pub fn test_config() -> Config {
    let mut config = Config::with_listen("127.0.0.1:0".parse().expect("a literal address"));
    config.limits = LimitSettings {
        backend_rps: 10_000,
        backend_burst: 10_000,
        default_rate_per_second: 10_000,
        default_burst: 10_000,
        user_cooldown: Duration::ZERO,
        ..LimitSettings::default()
    };
    config
}

/// The real SDK backend, pointed at `endpoint` (wiremock, moto, the local Cognito).
pub async fn sdk_backend(endpoint: &str, settings: CognitoSettings) -> SdkBackend {
    SdkBackend::with_endpoint(endpoint, "us-east-1", settings).await
}

/// Spawns the gateway in front of `endpoint` with test settings.
pub async fn spawn_app(endpoint: &str) -> TestApp {
    spawn_app_with(test_config(), sdk_backend(endpoint, test_settings()).await).await
}

/// Spawns the gateway with a given config and backend.
pub async fn spawn_app_with<B: Backend>(config: Config, backend: B) -> TestApp {
    let app = App::build(config, backend).await.expect("port 0 binds");
    let addr = app.local_addr();
    let health_addr = app.health_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run(async {
        let _ = rx.await;
    }));
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect()
        .await
        .expect("the app is listening");
    TestApp {
        addr,
        health_addr,
        client: UserAdminServiceClient::new(channel.clone()),
        channel,
        shutdown: Some(tx),
        handle,
    }
}

impl TestApp {
    /// One ResetUserPassword call.
    pub async fn reset(
        &self,
        pool: &str,
        username: &str,
    ) -> Result<ResetUserPasswordResponse, Status> {
        self.reset_request(request(pool, username)).await
    }

    /// One call with a full request (client metadata, a deadline...).
    pub async fn reset_request(
        &self,
        request: impl tonic::IntoRequest<ResetUserPasswordRequest>,
    ) -> Result<ResetUserPasswordResponse, Status> {
        self.client
            .clone()
            .reset_user_password(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// Triggers graceful shutdown (as SIGTERM does) and waits for the server to stop.
    pub async fn stop(mut self) -> Result<(), tonic::transport::Error> {
        self.begin_shutdown();
        self.handle.await.expect("the server task does not panic")
    }

    /// Triggers graceful shutdown without waiting.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A request without metadata.
pub fn request(pool: &str, username: &str) -> ResetUserPasswordRequest {
    ResetUserPasswordRequest {
        user_pool_id: pool.to_owned(),
        username: username.to_owned(),
        client_metadata: Default::default(),
        request_id: String::new(),
    }
}

/// The same request with a gRPC deadline.
pub fn with_deadline(
    request: ResetUserPasswordRequest,
    timeout: Duration,
) -> Request<ResetUserPasswordRequest> {
    let mut request = Request::new(request);
    request.set_timeout(timeout);
    request
}

/// The status's `ErrorInfo`; every non-OK status must have exactly one.
pub fn error_info(status: &Status) -> ErrorInfo {
    status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("status without ErrorInfo: {status:?}"))
}

/// All details of the status.
pub fn details(status: &Status) -> ErrorDetails {
    status.get_error_details()
}

/// Waits (polling the observable condition, never a fixed sleep) until `check` holds or 10 s pass.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub const BIN: &str = env!("CARGO_BIN_EXE_cognito-gateway");

/// A running `cognito-gateway serve` (the real binary), killed if the test fails before it stops it.
pub struct Gateway {
    pub child: Child,
    pub addr: String,
    /// The rest of stderr, line by line.
    pub lines: mpsc::Receiver<String>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on port 0 with JSON logs and `env`, and waits for its SERVING line.
pub fn start_binary(args: &[&str], env: &[(&str, &str)]) -> Gateway {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(args)
        .env_remove("RUST_LOG")
        // Whatever the machine has; tests that need a region say so.
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let addr = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the gateway prints SERVING within 30 s");
        if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
            && event["message"] == "SERVING"
        {
            break event["addr"].as_str().unwrap().to_owned();
        }
    };
    Gateway { child, addr, lines }
}

impl Gateway {
    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.child.wait().unwrap().code()
    }

    /// The rest of stderr, to its end: call after the process exited.
    pub fn rest_of_log(&self) -> Vec<String> {
        // The reader thread ends at EOF, which the exit brings; `iter` waits for it.
        self.lines.iter().collect()
    }
}

/// A bare HTTP/2 client that speaks gRPC by hand. tonic's client enforces deadlines itself and
/// refuses to send malformed messages; this one asks the server exactly what it is given.
pub mod raw {
    use std::net::SocketAddr;

    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    /// What came back: the HTTP status, the gRPC status and its details (trailers-only or trailers).
    #[derive(Debug)]
    pub struct Reply {
        pub http: u16,
        pub grpc_status: Option<i32>,
        pub status: Option<tonic::Status>,
    }

    /// Sends one unary call to `path` with the raw message `payload` (framed here) and extra headers.
    pub async fn call(
        addr: SocketAddr,
        path: &str,
        payload: &[u8],
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut frame = Vec::with_capacity(payload.len() + 5);
        frame.push(0);
        frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(payload);
        call_framed(addr, path, frame, headers).await
    }

    /// Sends an already framed (or deliberately mis-framed) body.
    pub async fn call_framed(
        addr: SocketAddr,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut request = http::Request::post(format!("http://{addr}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request.body(Full::new(Bytes::from(body))).unwrap();
        let response = sender.send_request(request).await.unwrap();
        let http = response.status().as_u16();
        let head = response.headers().clone();
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let source = if head.contains_key("grpc-status") {
            &head
        } else {
            &trailers
        };
        let grpc_status = source
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let status = tonic::Status::from_header_map(source);
        Reply {
            http,
            grpc_status,
            status,
        }
    }
}

/// A certificate authority that can issue leaf certificates.
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf (certificate PEM, key PEM) for DNS names or a SPIFFE ID.
    pub fn issue(&self, dns: &[&str], spiffe: Option<&str>) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(dns.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .unwrap();
        if let Some(id) = spiffe {
            params
                .subject_alt_names
                .push(SanType::URI(id.try_into().unwrap()));
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A temporary directory for key material, removed on drop.
pub struct Files {
    dir: PathBuf,
}

impl Files {
    pub fn new(name: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("cg-{name}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    /// Writes atomically (rename), as a Secret update does.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The binary as a pod runs it against a Cognito at `endpoint` (wiremock): `[auth] mode = "none"`
/// said explicitly, fake credentials, nothing from this machine's AWS files; `env` adds to that
/// (a later value for the same variable wins). The files live as long as the returned [`Files`].
pub async fn start_binary_against(endpoint: &str, env: &[(&str, &str)]) -> (Gateway, Files) {
    let files = Files::new("binary");
    let config = files.write("gateway.toml", "[auth]\nmode = \"none\"\n");
    let all: Vec<(String, String)> = [
        ("AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER", endpoint),
        ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
        ("AWS_CONFIG_FILE", "/nonexistent"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
    ]
    .into_iter()
    .chain(env.iter().copied())
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let gateway = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        start_binary(&["--config", config.to_str().unwrap()], &env)
    })
    .await
    .unwrap();
    (gateway, files)
}
