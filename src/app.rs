//! Server assembly: the gRPC service, its layers, health and reflection, HTTP/2 hardening, and
//! graceful shutdown. Read this file to see where a request goes.
//!
//! A call arrives on a hardened HTTP/2 connection, passes the layers of [`layers`] (outermost first),
//! and reaches [`UserAdmin`], which validates it and calls the [`Backend`].

use std::{future::Future, net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;
use tonic::transport::server::{Router, TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::layer::util::{Identity, Stack};

use crate::{
    api::UserAdmin,
    cognito::Backend,
    config::Config,
    middleware::{deadline::DeadlineLayer, error_details::ErrorDetailsLayer},
    proto::{FILE_DESCRIPTOR_SET, user_admin_service_server::UserAdminServiceServer},
};

/// The layers every gRPC call passes, as [`layers`] stacks them.
type Layers = Stack<Stack<DeadlineLayer, Stack<ErrorDetailsLayer, Identity>>, Identity>;

/// The middleware stack, outermost first, with why each layer sits where it does. Later layers (auth,
/// rate limits, load shedding) go inside the deadline, so that time spent in them counts against it.
fn layers() -> tower::ServiceBuilder<Stack<DeadlineLayer, Stack<ErrorDetailsLayer, Identity>>> {
    tower::ServiceBuilder::new()
        // Outermost: every reply, whoever wrote it (tonic included), leaves with an ErrorInfo.
        .layer(ErrorDetailsLayer)
        // Then the deadline, so that every call, wherever it waits, answers DEADLINE_EXCEEDED rather
        // than tonic's CANCELLED when the caller's time runs out.
        .layer(DeadlineLayer)
}

/// A bound, ready-to-run gateway.
#[derive(Debug)]
pub struct App {
    listener: TcpListener,
    router: Router<Layers>,
    health: HealthReporter,
    config: Config,
}

/// The gRPC service name health reports for the API, as callers and probes ask for it.
pub const SERVICE_NAME: &str = "cognitogateway.v1.UserAdminService";

impl App {
    /// Binds `config.listen` (port 0 picks a free port) and assembles the server around `backend`.
    pub async fn build<B: Backend>(config: Config, backend: B) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        let server = &config.server;

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status(SERVICE_NAME, ServingStatus::Serving)
            .await;

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(std::io::Error::other)?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(std::io::Error::other)?;

        let api = UserAdminServiceServer::new(UserAdmin::new(
            Arc::new(backend),
            config.cognito.operation_timeout,
        ))
        .max_decoding_message_size(server.max_decoding_message_size)
        .max_encoding_message_size(server.max_encoding_message_size);

        // tonic 0.14's builder leaves the stream limit unset and hyper's reset-flood guard off; every
        // limit here is set explicitly from the (documented) configuration.
        let router = tonic::transport::Server::builder()
            .max_concurrent_streams(server.max_concurrent_streams)
            .http2_max_local_error_reset_streams(Some(server.max_local_error_reset_streams))
            .http2_max_pending_accept_reset_streams(Some(server.max_pending_accept_reset_streams))
            .http2_max_header_list_size(server.max_header_list_size)
            .http2_keepalive_interval(Some(server.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(server.http2_keepalive_timeout))
            .layer(layers().into_inner())
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(api);

        Ok(Self {
            listener,
            router,
            health,
            config,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// Serves until `shutdown` completes; then health turns NOT_SERVING, no new connection is
    /// accepted, and in-flight calls get `server.shutdown_grace` to finish before they are dropped.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        let Self {
            listener,
            router,
            health,
            config,
        } = self;
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(config.server.tcp_keepalive));

        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: health NOT_SERVING, finishing in-flight calls");
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            health
                .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
                .await;
            let _ = stopping_tx.send(());
        };
        let serve = router.serve_with_incoming_shutdown(incoming, signal);
        let grace = config.server.shutdown_grace;
        tokio::select! {
            result = serve => result,
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
        }
    }
}
