//! The `cognito-gateway` binary: parse the command line, set up logs, build the app, run it until
//! SIGTERM or SIGINT. Everything else lives in the library.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser as _;
use cognito_gateway::{
    App, Config,
    cli::{Cli, Command, ServeArgs},
    cognito::SdkBackend,
    local::{DEMO_POOL_ID, DEMO_USERS, LocalCognito},
    telemetry,
};

/// jemalloc, with its settings in .cargo/config.toml: glibc's allocator kept the memory of 1,000
/// closed connections (15 MiB) for good; jemalloc gives it back within seconds
/// (docs/benchmarks.md, "Hostile clients").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => serve(args).await,
        Command::Reset(args) => cognito_gateway::client::run(args).await,
        Command::CheckConfig(args) => check_config(&args).await,
        Command::ConfigSchema => {
            print!("{}", cognito_gateway::config::json_schema());
            ExitCode::SUCCESS
        }
    }
}

/// `check-config`: exit 0 and one line, or exit 2 and what is wrong (naming the key).
async fn check_config(args: &ServeArgs) -> ExitCode {
    let checked = match Config::load(args) {
        Ok(config) => cognito_gateway::app::check(&config).await,
        Err(error) => Err(error.to_string()),
    };
    match checked {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("cognito-gateway: {error}");
            ExitCode::from(2)
        }
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    let telemetry = telemetry::init(args.log_format, args.metrics_listen.is_some());
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
    // Bound before SERVING, so that a port in use stops the start; served until the process ends,
    // through the shutdown grace period.
    let _metrics = match args.metrics_listen {
        None => None,
        Some(listen) => match telemetry::bind_metrics(listen).await {
            Ok(endpoint) => {
                tracing::info!(metrics_addr = %endpoint.local_addr(), "serving /metrics");
                Some(AbortOnDrop(tokio::spawn(endpoint.run())))
            }
            Err(error) => {
                eprintln!("cognito-gateway: cannot serve metrics on {listen}: {error}");
                return ExitCode::FAILURE;
            }
        },
    };
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
    let shutdown = shutdown_signal();
    tracing::info!(%addr, "SERVING");
    match app.run(shutdown).await {
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

/// Ends a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Completes on SIGTERM (Kubernetes) or SIGINT (Ctrl-C). The handlers are installed now, before
/// the future is first polled: a signal that comes right after SERVING must not kill the process
/// with the default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            let (mut term, mut int) = match (term, int) {
                (Ok(term), Ok(int)) => (term, int),
                (Err(error), _) | (_, Err(error)) => {
                    tracing::error!(%error, "cannot listen for SIGTERM and SIGINT");
                    return std::future::pending().await;
                }
            };
            tokio::select! {
                _ = int.recv() => tracing::info!("SIGINT received"),
                _ = term.recv() => tracing::info!("SIGTERM received"),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}
