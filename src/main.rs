//! The `cognito-gateway` binary: parse the command line, set up logs, build the app, run it until
//! SIGTERM or SIGINT. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser as _;
use cognito_gateway::{
    App, Config,
    cli::{Cli, Command, ServeArgs},
    cognito::SdkBackend,
    local::{DEMO_POOL_ID, DEMO_USERS, LocalCognito},
    telemetry,
};

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => serve(args).await,
        Command::Reset(args) => cognito_gateway::client::run(args).await,
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    let telemetry = telemetry::init(args.log_format);
    let code = serve_with_telemetry(args).await;
    // Flushing blocks (bounded); off the runtime's workers, which the exporter itself needs.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    code
}

async fn serve_with_telemetry(args: ServeArgs) -> ExitCode {
    let config = match Config::load(&args) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("cognito-gateway: {error}");
            return ExitCode::from(2);
        }
    };
    // The local Cognito must outlive the app: it is dropped (and stopped) at the end of this function.
    let (backend, _local) = if config.local {
        let local = match LocalCognito::start().await {
            Ok(local) => local,
            Err(error) => {
                eprintln!("cognito-gateway: cannot start the local Cognito: {error}");
                return ExitCode::FAILURE;
            }
        };
        let backend =
            SdkBackend::with_endpoint(&local.endpoint_url(), "local-1", config.cognito.clone())
                .await;
        (backend, Some(local))
    } else {
        (SdkBackend::from_env(config.cognito.clone()).await, None)
    };

    let app = match App::build(config, backend).await {
        Ok(app) => app,
        Err(error) => {
            eprintln!("cognito-gateway: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    let addr = app.local_addr();
    if let Some(local) = &_local {
        tracing::warn!(
            endpoint = %local.endpoint_url(),
            "LOCAL MODE: serving the embedded in-memory Cognito; nothing is sent to AWS"
        );
        eprintln!("\nLOCAL MODE: embedded in-memory Cognito, nothing is sent to AWS.");
        eprintln!("Demo pool: {DEMO_POOL_ID}. Try, in another terminal:");
        for user in DEMO_USERS {
            eprintln!(
                "  cargo run -- reset --addr http://{addr} --user-pool-id {DEMO_POOL_ID} --username {}\n      -> {}",
                user.username, user.expected
            );
        }
        eprintln!();
    }
    tracing::info!(%addr, "SERVING");
    match app.run(shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "server failed");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}
