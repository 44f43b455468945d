//! Server assembly: the gRPC service, its layers, health and reflection, HTTP/2 hardening, and
//! graceful shutdown. Read this file to see where a request goes.
//!
//! A call arrives on a hardened HTTP/2 connection, passes the layers of `layers()` (outermost first),
//! and reaches [`UserAdmin`], which validates it and calls the [`Backend`].

use std::{future::Future, net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;
use tonic::transport::server::Router;
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::layer::util::{Identity, Stack};

use crate::{
    api::{Draining, ResetGate, UserAdmin},
    auth::Access,
    cognito::Backend,
    config::{AuthMode, Config, ServerSettings},
    fleet::{Budgets, FleetStore},
    gate::{MemoryStore, Times, random_key},
    listener::{self, Bounds},
    middleware::{
        admission::{AdmitLayer, Authenticate, CallerRate, LoadShed},
        deadline::DeadlineLayer,
        request_bytes::RequestBytesLayer,
        rescue::{LogQuota, RescueLayer},
        trace::TraceLayer,
    },
    proto::{FILE_DESCRIPTOR_SET, user_admin_service_server::UserAdminServiceServer},
    rate::RateLimit,
};

/// The layers every gRPC call passes, as `layers()` stacks them (innermost first in the type).
type Stackup = Stack<
    RequestBytesLayer,
    Stack<
        AdmitLayer<CallerRate>,
        Stack<
            AdmitLayer<Authenticate>,
            Stack<
                AdmitLayer<LoadShed>,
                Stack<DeadlineLayer, Stack<RescueLayer, Stack<TraceLayer, Identity>>>,
            >,
        >,
    >,
>;
type Layers = Stack<Stackup, Identity>;

/// The health-only listener's layers: the rescue point, and deadlines answered as everywhere.
type HealthLayers = Stack<DeadlineLayer, Stack<RescueLayer, Identity>>;

/// The middleware stack, outermost first, with why each layer sits where it does. The rest of the
/// pipeline, which needs the decoded request, is in the handler ([`UserAdmin`]): authorize the pool,
/// validate, the per-user gate, the backend guard, Cognito.
fn layers(
    config: &Config,
    access: &Arc<Access>,
    quota: &Arc<LogQuota>,
) -> tower::ServiceBuilder<Stackup> {
    tower::ServiceBuilder::new()
        // Outermost: the call's span and duration, so that they cover everything below and record
        // the final status.
        .layer(TraceLayer)
        // The one place a failure becomes a status, whoever failed (tonic, a layer below, the
        // handler), and where the call's log line is written: inside the span, so that the line
        // carries its trace id.
        .layer(RescueLayer::new(Arc::clone(quota)))
        // The deadline next, so that every call, wherever it waits, answers DEADLINE_EXCEEDED rather
        // than tonic's CANCELLED when the caller's time runs out.
        .layer(DeadlineLayer::new(config.server.request_timeout))
        // Shed before doing any work for the call, authentication included: under overload the
        // cheapest answer is the best one.
        .layer(AdmitLayer::new(LoadShed::new(config.limits.max_in_flight)))
        // Who is calling; everything below knows the caller.
        .layer(AdmitLayer::new(Authenticate::new(Arc::clone(access))))
        // Each caller's own rate: a buggy caller exhausts its budget, not everyone's.
        .layer(AdmitLayer::new(CallerRate))
        // Innermost, so that a refused call never pays for it: the bytes admitted calls hold.
        .layer(RequestBytesLayer::new(
            config.server.max_request_bytes_in_flight,
        ))
}

/// A tonic server builder with every HTTP/2 limit set from `server`: tonic 0.14's builder leaves
/// the stream limit unset and hyper's reset-flood guard off.
pub fn hardened_server(server: &ServerSettings) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(server.max_concurrent_streams)
        .http2_max_local_error_reset_streams(Some(server.max_local_error_reset_streams))
        .http2_max_pending_accept_reset_streams(Some(server.max_pending_accept_reset_streams))
        .http2_max_header_list_size(server.max_header_list_size)
        .http2_keepalive_interval(Some(server.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(server.http2_keepalive_timeout))
}

/// A bound, ready-to-run gateway.
#[derive(Debug)]
pub struct App {
    listener: TcpListener,
    router: Router<Layers>,
    /// The health-only listener and its server, with `--health-listen`.
    health_only: Option<(TcpListener, Router<HealthLayers>)>,
    health: HealthReporter,
    access: Arc<Access>,
    gate: Arc<ResetGate>,
    log_quota: Arc<LogQuota>,
    draining: Arc<Draining>,
    /// SIGHUP's handler, installed with the app so that a SIGHUP sent as soon as SERVING is
    /// logged reloads rather than kills the process (the default action).
    hangups: Hangups,
    config: Config,
}

/// Connections the health-only listener keeps open at once.
const HEALTH_MAX_CONNECTIONS: usize = 64;

/// How much longer than a Cognito call a claim on its user lasts: time to record the outcome.
const CLAIM_MARGIN: std::time::Duration = std::time::Duration::from_secs(1);

/// The gRPC service name health reports for the API, as callers and probes ask for it.
pub const SERVICE_NAME: &str = "cognitogateway.v1.UserAdminService";

impl App {
    /// Binds `config.listen` (port 0 picks a free port) and assembles the server around `backend`.
    pub async fn build<B: Backend>(config: Config, backend: B) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        listener::check_open_files(config.server.max_connections);
        let server = &config.server;

        let (health, health_service) = crate::health::health();
        health
            .set_service_status(SERVICE_NAME, ServingStatus::Serving)
            .await;

        // Both versions: grpcurl and older clients still ask v1alpha.
        let reflection_v1 = reflection().build_v1().map_err(std::io::Error::other)?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(std::io::Error::other)?;

        let access = Arc::new(load_access(&config).await.map_err(std::io::Error::other)?);
        if config.access.mode == AuthMode::None {
            tracing::warn!(
                "authentication is OFF (auth.mode = \"none\"): every call is the caller \"anonymous\""
            );
        }
        tracing::info!(mode = ?config.access.mode, callers = ?access.policy().caller_names(), "caller policy loaded");
        let counted = Arc::clone(&access);
        crate::metrics::observe_callers(move || counted.policy().caller_names().len());
        crate::metrics::observe_limits(&config.limits);
        crate::metrics::observe_reloaded_at(access.reloaded_at());
        let limits = &config.limits;
        // The gate's store keeps the user gate, the request ids and the budgets for Cognito
        // calls. A claim outlives the longest Cognito call, so that it lapses only when its holder
        // died.
        let times = Times {
            cooldown: limits.user_cooldown,
            lease: config.cognito.operation_timeout + CLAIM_MARGIN,
            request_ttl: limits.request_id_ttl,
        };
        let budgets = Budgets {
            backend: (limits.backend_rps, limits.backend_burst),
            pool: (limits.pool_rps, limits.pool_burst),
        };
        let (gate, backend, handler_shares_rates) = match &config.fleet {
            // One process: its own store, whose backend guard the SDK's throttling retries draw
            // on too.
            None => {
                let store = Arc::new(MemoryStore::new(times, budgets.backend, budgets.pool));
                let backend = backend.with_send_budget(store.backend_guard());
                (ResetGate::new(random_key(), store), backend, false)
            }
            // A fleet: the store is shared; retries draw on a guard of this replica's.
            Some(fleet) => {
                let store =
                    FleetStore::new(fleet, times, budgets).map_err(std::io::Error::other)?;
                tracing::info!(?fleet, "limits and the user gate are shared by the fleet");
                let guard = RateLimit::new(limits.backend_rps, limits.backend_burst);
                let backend = backend.with_send_budget(Arc::new(guard));
                let gate = ResetGate::new(fleet.user_key_secret, Arc::new(store));
                (gate, backend, true)
            }
        };
        let gate = Arc::new(gate);
        let mut handler = UserAdmin::new(
            Arc::new(backend),
            limits.user_identity,
            Arc::clone(&gate),
            config.cognito.operation_timeout,
            limits.user_cooldown,
        );
        if handler_shares_rates {
            handler = handler.with_shared_caller_rates();
        }
        let draining = Arc::new(Draining::default());
        let handler = handler.with_draining(Arc::clone(&draining));
        let api = UserAdminServiceServer::new(handler)
            .max_decoding_message_size(server.max_decoding_message_size)
            .max_encoding_message_size(server.max_encoding_message_size);

        // One quota for the refusal log lines of every listener.
        let log_quota = Arc::new(LogQuota::default());
        let mut builder = hardened_server(server);
        if let Some(age) = server.max_connection_age {
            // After GOAWAY, the calls in flight get as long as any call may take; then the
            // connection is closed whatever it still holds (a Watch stream, a silent peer).
            builder = builder
                .max_connection_age(age)
                .max_connection_age_grace(server.request_timeout);
        }
        let router = builder
            .layer(layers(&config, &access, &log_quota).into_inner())
            .add_service(health_service.clone())
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(api);

        let health_only = match config.health_listen {
            None => None,
            Some(addr) => {
                let listener = TcpListener::bind(addr).await?;
                // Health alone: probes carry no credentials; anything else asked of this port is
                // UNIMPLEMENTED, with its ErrorInfo like every other status.
                let router = hardened_server(server)
                    .max_concurrent_streams(16)
                    .layer(RescueLayer::new(Arc::clone(&log_quota)))
                    .layer(DeadlineLayer::new(server.request_timeout))
                    .add_service(health_service);
                Some((listener, router))
            }
        };

        Ok(Self {
            listener,
            router,
            health_only,
            health,
            access,
            gate,
            log_quota,
            draining,
            hangups: hangups(),
            config,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// The health-only listener's address, with `--health-listen`.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_only.as_ref().map(|(listener, _)| {
            listener
                .local_addr()
                .expect("a bound TCP listener has a local address")
        })
    }

    /// Serves until `shutdown` completes; then health turns NOT_SERVING, no new connection is
    /// accepted, and in-flight calls (and Cognito calls that outlived their callers) get
    /// `server.shutdown_grace` to finish before they are dropped.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        let Self {
            listener,
            router,
            health_only,
            health,
            access,
            gate,
            log_quota,
            draining,
            hangups,
            config,
        } = self;
        // The health-only server answers until `run` returns (NOT_SERVING during the grace period,
        // which is what readiness probes should see).
        let server = &config.server;
        let bounds = Bounds {
            max_connections: server.max_connections,
            max_connections_per_peer: server.max_connections_per_peer,
            handshake_timeout: server.handshake_timeout,
            tcp_keepalive: server.tcp_keepalive,
        };
        // Probes open a connection or two; a cap of its own keeps the API's from being spent here.
        // Probes all come from the node's address: one peer may take every place here.
        let health_bounds = Bounds {
            max_connections: HEALTH_MAX_CONNECTIONS,
            max_connections_per_peer: HEALTH_MAX_CONNECTIONS,
            ..bounds
        };
        let health_only = tokio::spawn(async move {
            if let Some((listener, router)) = health_only
                && let Err(error) = router
                    .serve_with_incoming(listener::plain(listener, health_bounds))
                    .await
            {
                tracing::error!(%error, "health listener failed");
            }
        });
        // The caller policy follows its files while the server runs.
        let tls = access.tls();
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
        let keys = tokio::spawn(Arc::clone(&access).refresh_keys());
        let watcher = tokio::spawn(access.watch(reload_rx));
        let hangups = tokio::spawn(forward_sighup(hangups, reload_tx));

        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let grace = config.server.shutdown_grace;
        let signal = async move {
            shutdown.await;
            draining.begin(tokio::time::Instant::now() + grace);
            tracing::info!("shutting down: health NOT_SERVING, finishing in-flight calls");
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            health
                .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
                .await;
            let _ = stopping_tx.send(());
        };
        // Connections are accepted by `listener`, which bounds them; with mTLS it does the TLS
        // handshakes too, so that certificates can rotate.
        let serve: std::pin::Pin<Box<dyn Future<Output = _> + Send>> = match tls {
            Some(tls) => {
                // Both deadlines hold: the server's, and the TLS one `[auth.mtls]` may shorten.
                let bounds = Bounds {
                    handshake_timeout: bounds.handshake_timeout.min(tls.handshake_timeout()),
                    ..bounds
                };
                let incoming = listener::tls(listener, bounds, tls);
                Box::pin(router.serve_with_incoming_shutdown(incoming, signal))
            }
            None => Box::pin(
                router.serve_with_incoming_shutdown(listener::plain(listener, bounds), signal),
            ),
        };
        let log_windows = tokio::spawn(Arc::clone(&log_quota).run());
        let _stop_watching = AbortOnDrop([keys, watcher, hangups, health_only, log_windows]);
        let result = tokio::select! {
            result = async {
                let result = serve.await;
                // Resets whose callers have all gone still run: they end, and are logged, rather
                // than being cut off with their outcome unknown.
                gate.settled().await;
                result
            } => result,
            () = async {
                // Only once shutdown began does the grace period run; if the serve future never
                // signals (it owns the sender), this branch stays pending.
                if stopping_rx.await.is_ok() {
                    tokio::time::sleep(grace).await;
                } else {
                    std::future::pending::<()>().await;
                }
            } => {
                tracing::warn!(?grace, "shutdown grace expired; dropping calls still in flight");
                Ok(())
            }
        };
        // What the refusal log held back is summarized before the process goes.
        log_quota.close_all();
        result
    }
}

/// The caller policy, with the files it names (JWKS, certificates) read.
async fn load_access(config: &Config) -> Result<Access, String> {
    Access::load(config).await
}

/// Checks a configuration as [`App::build`] would use it, reading every file it names, without
/// binding or serving (`check-config`); says in one line what it configures.
pub async fn check(config: &Config) -> Result<String, String> {
    let access = load_access(config).await?;
    if let Some(fleet) = &config.fleet {
        crate::fleet::check(fleet).map_err(|error| error.to_string())?;
    }
    let callers = access.policy().caller_names().len();
    let limits = &config.limits;
    let fleet = match &config.fleet {
        Some(fleet) => format!(
            "shared through Redis (on_unavailable {}, replicas_hint {})",
            fleet.on_unavailable.as_str(),
            fleet.replicas_hint
        ),
        None => "in this process".to_owned(),
    };
    Ok(format!(
        "config OK: auth {} with {callers} caller(s); backend_rps {}; cooldown {} s; user identity {}; limits and the user gate {fleet}",
        config.access.mode.as_str(),
        limits.backend_rps,
        limits.user_cooldown.as_secs(),
        limits.user_identity.as_str(),
    ))
}

/// What reflection describes: the API, the error details its statuses carry, and health.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Ends background tasks when `run` returns, however it returns.
struct AbortOnDrop([tokio::task::JoinHandle<()>; 5]);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = ();

/// SIGHUP's handler, or `None` (logged) where it cannot be installed.
fn hangups() -> Hangups {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::hangup())
            .inspect_err(|error| {
                tracing::warn!(%error, "cannot listen for SIGHUP; the policy reloads on file changes only");
            })
            .ok()
    }
}

/// SIGHUP reloads the caller policy now, without waiting for the next check of the files.
async fn forward_sighup(hangups: Hangups, reload: tokio::sync::mpsc::Sender<()>) {
    #[cfg(unix)]
    if let Some(mut hangup) = hangups {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the caller policy");
            if reload.send(()).await.is_err() {
                return;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (hangups, reload);
}
