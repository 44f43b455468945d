//! The gateway in this process: `App::build` on port 0, served on a task, with a client connected
//! to it over a real socket.

use std::{net::SocketAddr, time::Duration};

use cognito_gateway::{
    App, Config,
    cognito::{Backend, SdkBackend},
    config::{CognitoSettings, LimitSettings},
    proto::{
        ResetUserPasswordRequest, ResetUserPasswordResponse,
        user_admin_service_client::UserAdminServiceClient,
    },
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{
    Status,
    transport::{Channel, Endpoint},
};

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
    let channel = connect(addr).await;
    TestApp {
        addr,
        health_addr,
        client: UserAdminServiceClient::new(channel.clone()),
        channel,
        shutdown: Some(tx),
        handle,
    }
}

/// One plaintext HTTP/2 connection to a gateway at `addr`, in process or not; its clones share it.
pub async fn connect(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("a socket address makes a valid URI")
        .connect()
        .await
        .expect("the gateway is listening")
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
