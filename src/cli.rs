//! The command line: `serve`, `reset`, `check-config` and `config-schema`, each flag with an `env`
//! twin. `serve`'s flags become [`Flags`], which [`Config::load`](crate::config::Config::load)
//! combines with the TOML file.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::{config::Flags, telemetry::LogFormat};

/// `cognito-gateway`: a gRPC sidecar that resets passwords in Amazon Cognito user pools.
#[derive(Debug, Parser)]
#[command(name = "cognito-gateway", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Call a running gateway's ResetUserPassword and print the outcome.
    Reset(ResetArgs),
    /// Validate a configuration exactly as `serve` would (every key, every file it names) without
    /// serving: exit 0 with a one-line summary, or exit 2 with a message naming the key.
    CheckConfig(ServeArgs),
    /// Print the configuration file's JSON Schema (docs/config.schema.json), for editors and CI.
    ConfigSchema,
}

/// Flags of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on for gRPC.
    #[arg(
        long,
        env = "COGNITO_GATEWAY_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    pub listen: SocketAddr,
    /// TOML file with the settings below the command line (see README).
    #[arg(long, env = "COGNITO_GATEWAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// A second, health-only listener (grpc.health.v1, no authentication): for Kubernetes probes,
    /// which connect to the pod IP, when the API listens on loopback only.
    #[arg(long, env = "COGNITO_GATEWAY_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// Serve Prometheus metrics (`GET /metrics`) on a listener of its own, never the gRPC port:
    /// the same metrics OTLP exports, for a scraper that needs no collector.
    #[arg(long, env = "COGNITO_GATEWAY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve from the embedded, in-memory local Cognito instead of AWS. Nothing is sent to AWS.
    #[arg(long)]
    pub local: bool,
    /// Log line format.
    #[arg(long, env = "COGNITO_GATEWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The fleet's Redis URL (redis:// or rediss://), overriding `fleet.redis_url`; the
    /// environment is the place for it, as it may hold a password.
    #[arg(long, env = "COGNITO_GATEWAY_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
}

/// Flags of `reset`.
#[derive(Debug, Args)]
pub struct ResetArgs {
    /// The gateway's address.
    #[arg(
        long,
        env = "COGNITO_GATEWAY_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub addr: String,
    /// The user pool id, e.g. us-east-1_AbCdEf123.
    #[arg(long)]
    pub user_pool_id: String,
    /// The user to reset.
    #[arg(long)]
    pub username: String,
    /// Client metadata for Lambda triggers, as KEY=VALUE; repeatable.
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub client_metadata: Vec<(String, String)>,
    /// How long to wait for the answer, in milliseconds (sent as the gRPC deadline).
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// A file holding the bearer token (or JWT) to authenticate with, e.g. a mounted Secret or a
    /// projected service-account token. Read from a file so that it never shows in `ps`.
    #[arg(long, env = "COGNITO_GATEWAY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The request's id (a UUID). Send the one a previous run printed to retry that request
    /// safely: its outcome is answered, and nothing is sent again. A new one by default.
    #[arg(long)]
    pub request_id: Option<String>,
}

fn parse_key_value(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| "expected KEY=VALUE".to_owned())
}

impl From<&ServeArgs> for Flags {
    fn from(args: &ServeArgs) -> Self {
        Self {
            listen: args.listen,
            health_listen: args.health_listen,
            local: args.local,
            config: args.config.clone(),
            redis_url: args.redis_url.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> ServeArgs {
        let cli = Cli::try_parse_from(["cognito-gateway", "serve"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Serve(serve) => serve,
            Command::Reset(_) | Command::CheckConfig(_) | Command::ConfigSchema => {
                unreachable!("parsed serve")
            }
        }
    }

    #[test]
    fn serve_defaults() {
        let flags = Flags::from(&serve(&[]));
        assert_eq!(flags.listen, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(flags.health_listen, None);
        assert_eq!(serve(&[]).metrics_listen, None);
        assert_eq!(
            serve(&["--metrics-listen", "0.0.0.0:9464"]).metrics_listen,
            Some("0.0.0.0:9464".parse().unwrap())
        );
        assert!(!flags.local);
        assert_eq!(flags.config, None);
    }

    #[test]
    fn flags_parse() {
        let args = serve(&[
            "--listen",
            "0.0.0.0:9000",
            "--local",
            "--log-format",
            "json",
        ]);
        assert_eq!(args.listen, "0.0.0.0:9000".parse().unwrap());
        assert!(args.local);
        assert_eq!(args.log_format, LogFormat::Json);
        assert!(Cli::try_parse_from(["cognito-gateway", "serve", "--listen", "nope"]).is_err());
    }

    #[test]
    fn reset_flags_parse() {
        let cli = Cli::try_parse_from([
            "cognito-gateway",
            "reset",
            "--user-pool-id",
            "local-1_Demo",
            "--username",
            "alice",
            "--metadata",
            "a=b=c",
        ])
        .unwrap();
        let Command::Reset(reset) = cli.command else {
            panic!("parsed reset")
        };
        assert_eq!(reset.client_metadata, [("a".to_owned(), "b=c".to_owned())]);
    }
}
