//! Configuration: the command line (clap, each flag with an `env` twin) and an optional TOML file for
//! the rest. Everything is validated at start; a bad value stops the process with a message that
//! names the key. AWS settings are not here: they come from the standard AWS chain.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::cognito::{RegionSet, is_region_shaped};

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
    /// Serve from the embedded, in-memory local Cognito instead of AWS. Nothing is sent to AWS.
    #[arg(long)]
    pub local: bool,
    /// Log line format.
    #[arg(long, env = "COGNITO_GATEWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object per line, for collectors.
    Json,
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
}

fn parse_key_value(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| "expected KEY=VALUE".to_owned())
}

/// Everything `serve` needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Whether to serve from the embedded local Cognito.
    pub local: bool,
    /// gRPC server hardening and shutdown.
    pub server: ServerSettings,
    /// The Cognito client.
    pub cognito: CognitoSettings,
}

/// HTTP/2 and shutdown settings (`[server]` in the TOML file).
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Streams one connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// Streams a peer may make the server reset before the connection is closed (reset floods).
    pub max_local_error_reset_streams: usize,
    /// Streams reset by the peer that may wait to be accepted (CVE-2023-44487, "rapid reset").
    pub max_pending_accept_reset_streams: usize,
    /// Largest request message accepted, in bytes.
    pub max_decoding_message_size: usize,
    /// Largest response message sent, in bytes.
    pub max_encoding_message_size: usize,
    /// Largest header block accepted, in bytes.
    pub max_header_list_size: u32,
    /// How often to ping an idle connection.
    pub http2_keepalive_interval: Duration,
    /// How long to wait for a ping's answer before closing the connection.
    pub http2_keepalive_timeout: Duration,
    /// TCP keepalive on accepted sockets.
    pub tcp_keepalive: Duration,
    /// How long in-flight calls may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
}

/// The Cognito client's settings (`[cognito]` in the TOML file).
#[derive(Debug, Clone)]
pub struct CognitoSettings {
    /// Upper bound on one reset, retries included; the caller's deadline can only shorten it.
    pub operation_timeout: Duration,
    /// Upper bound on establishing a connection to Cognito.
    pub connect_timeout: Duration,
    /// Sends per reset at most, first included; only throttling and connect failures are retried.
    pub max_attempts: u32,
    /// First retry backoff.
    pub initial_backoff: Duration,
    /// Longest retry backoff.
    pub max_backoff: Duration,
    /// Regions the gateway may call; `None` allows any region-shaped pool id prefix.
    pub allowed_regions: Option<RegionSet>,
    /// Most regions (clients) the gateway keeps at once.
    pub max_regions: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        FileServer::default()
            .validate()
            .expect("the defaults are valid")
    }
}

impl Default for CognitoSettings {
    fn default() -> Self {
        FileCognito::default()
            .validate()
            .expect("the defaults are valid")
    }
}

/// A configuration that cannot be used, with the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (the message names the key).
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and key.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("invalid config: {key}: {why}")]
    Invalid {
        /// The dotted key, e.g. `server.max_concurrent_streams`.
        key: &'static str,
        /// What is wrong.
        why: String,
    },
}

impl Config {
    /// Reads the file named by `--config`, if any, and validates everything.
    pub fn load(args: &ServeArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                FileConfig::parse(&text).map_err(|source| ConfigError::Parse {
                    path: path.clone(),
                    source: Box::new(source),
                })?
            }
        };
        Self::from_parts(args, file)
    }

    /// Validates a parsed file together with the flags.
    pub fn from_parts(args: &ServeArgs, file: FileConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            listen: args.listen,
            local: args.local,
            server: file.server.validate()?,
            cognito: file.cognito.validate()?,
        })
    }

    /// Defaults, for a given address (tests, the local demo).
    pub fn with_listen(listen: SocketAddr) -> Self {
        Self {
            listen,
            local: false,
            server: ServerSettings::default(),
            cognito: CognitoSettings::default(),
        }
    }
}

/// The TOML file as written. Unknown keys are errors, so a typo is never silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    server: FileServer,
    cognito: FileCognito,
}

impl FileConfig {
    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileServer {
    max_concurrent_streams: u32,
    max_local_error_reset_streams: usize,
    max_pending_accept_reset_streams: usize,
    max_decoding_message_size: usize,
    max_encoding_message_size: usize,
    max_header_list_size: u32,
    http2_keepalive_interval_secs: u64,
    http2_keepalive_timeout_secs: u64,
    tcp_keepalive_secs: u64,
    shutdown_grace_secs: u64,
}

impl Default for FileServer {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 256,
            // hyper's own default, which tonic 0.14 turns off unless set.
            max_local_error_reset_streams: 1024,
            max_pending_accept_reset_streams: 20,
            // Cognito admits 128-char usernames and metadata values of 131072 chars (up to 512 KiB
            // of UTF-8 each); 4 MiB holds several such values plus framing.
            max_decoding_message_size: 4 * 1024 * 1024,
            max_encoding_message_size: 64 * 1024,
            max_header_list_size: 16 * 1024,
            http2_keepalive_interval_secs: 30,
            http2_keepalive_timeout_secs: 10,
            tcp_keepalive_secs: 60,
            shutdown_grace_secs: 10,
        }
    }
}

impl FileServer {
    fn validate(self) -> Result<ServerSettings, ConfigError> {
        Ok(ServerSettings {
            max_concurrent_streams: within(
                "server.max_concurrent_streams",
                self.max_concurrent_streams,
                1..=65_536,
            )?,
            max_local_error_reset_streams: within(
                "server.max_local_error_reset_streams",
                self.max_local_error_reset_streams,
                1..=1_000_000,
            )?,
            max_pending_accept_reset_streams: within(
                "server.max_pending_accept_reset_streams",
                self.max_pending_accept_reset_streams,
                1..=100_000,
            )?,
            max_decoding_message_size: within(
                "server.max_decoding_message_size",
                self.max_decoding_message_size,
                1024..=64 * 1024 * 1024,
            )?,
            max_encoding_message_size: within(
                "server.max_encoding_message_size",
                self.max_encoding_message_size,
                1024..=64 * 1024 * 1024,
            )?,
            max_header_list_size: within(
                "server.max_header_list_size",
                self.max_header_list_size,
                1024..=1024 * 1024,
            )?,
            http2_keepalive_interval: secs(
                "server.http2_keepalive_interval_secs",
                self.http2_keepalive_interval_secs,
                1..=3600,
            )?,
            http2_keepalive_timeout: secs(
                "server.http2_keepalive_timeout_secs",
                self.http2_keepalive_timeout_secs,
                1..=600,
            )?,
            tcp_keepalive: secs(
                "server.tcp_keepalive_secs",
                self.tcp_keepalive_secs,
                1..=7200,
            )?,
            shutdown_grace: secs(
                "server.shutdown_grace_secs",
                self.shutdown_grace_secs,
                0..=600,
            )?,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileCognito {
    operation_timeout_ms: u64,
    connect_timeout_ms: u64,
    max_attempts: u32,
    initial_backoff_ms: u64,
    max_backoff_ms: u64,
    allowed_regions: Option<Vec<String>>,
    max_regions: usize,
}

impl Default for FileCognito {
    fn default() -> Self {
        Self {
            operation_timeout_ms: 5_000,
            connect_timeout_ms: 1_000,
            max_attempts: 3,
            initial_backoff_ms: 50,
            max_backoff_ms: 1_000,
            allowed_regions: None,
            max_regions: 16,
        }
    }
}

impl FileCognito {
    fn validate(self) -> Result<CognitoSettings, ConfigError> {
        let allowed_regions = match self.allowed_regions {
            None => None,
            Some(regions) => {
                if regions.is_empty() {
                    return Err(invalid(
                        "cognito.allowed_regions",
                        "must list at least one region, or be left out to allow any",
                    ));
                }
                if let Some(bad) = regions.iter().find(|r| !is_region_shaped(r)) {
                    return Err(invalid(
                        "cognito.allowed_regions",
                        format!("{bad:?} is not a region name like us-east-1"),
                    ));
                }
                Some(regions.into_iter().collect())
            }
        };
        let initial_backoff = millis(
            "cognito.initial_backoff_ms",
            self.initial_backoff_ms,
            1..=10_000,
        )?;
        let max_backoff = millis("cognito.max_backoff_ms", self.max_backoff_ms, 1..=60_000)?;
        if max_backoff < initial_backoff {
            return Err(invalid(
                "cognito.max_backoff_ms",
                "must not be below cognito.initial_backoff_ms",
            ));
        }
        Ok(CognitoSettings {
            operation_timeout: millis(
                "cognito.operation_timeout_ms",
                self.operation_timeout_ms,
                1..=300_000,
            )?,
            connect_timeout: millis(
                "cognito.connect_timeout_ms",
                self.connect_timeout_ms,
                1..=60_000,
            )?,
            max_attempts: within("cognito.max_attempts", self.max_attempts, 1..=10)?,
            initial_backoff,
            max_backoff,
            allowed_regions,
            max_regions: within("cognito.max_regions", self.max_regions, 1..=64)?,
        })
    }
}

fn invalid(key: &'static str, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        why: why.into(),
    }
}

fn within<T: PartialOrd + std::fmt::Display>(
    key: &'static str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(invalid(
            key,
            format!("{value} is outside {}..={}", range.start(), range.end()),
        ))
    }
}

fn secs(
    key: &'static str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Duration, ConfigError> {
    within(key, value, range).map(Duration::from_secs)
}

fn millis(
    key: &'static str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Duration, ConfigError> {
    within(key, value, range).map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> ServeArgs {
        let cli = Cli::try_parse_from(["cognito-gateway", "serve"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Serve(serve) => serve,
            Command::Reset(_) => unreachable!("parsed serve"),
        }
    }

    fn load(toml: &str) -> Result<Config, ConfigError> {
        let file = FileConfig::parse(toml).map_err(|source| ConfigError::Parse {
            path: "test.toml".into(),
            source: Box::new(source),
        })?;
        Config::from_parts(&serve(&[]), file)
    }

    #[test]
    fn defaults_are_valid_and_hardened() {
        let config = load("").unwrap();
        assert_eq!(config.listen, "127.0.0.1:50051".parse().unwrap());
        assert!(!config.local);
        assert_eq!(config.server.max_concurrent_streams, 256);
        assert_eq!(config.server.max_local_error_reset_streams, 1024);
        assert_eq!(config.cognito.operation_timeout, Duration::from_secs(5));
        assert_eq!(config.cognito.allowed_regions, None);
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
    fn file_values_are_read() {
        let config = load(
            "[server]\nmax_concurrent_streams = 10\n[cognito]\noperation_timeout_ms = 750\nallowed_regions = [\"eu-west-1\"]\n",
        )
        .unwrap();
        assert_eq!(config.server.max_concurrent_streams, 10);
        assert_eq!(config.cognito.operation_timeout, Duration::from_millis(750));
        assert!(
            config
                .cognito
                .allowed_regions
                .unwrap()
                .contains("eu-west-1")
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "[server]\nmax_concurrent_streams = 0\n",
                "server.max_concurrent_streams",
            ),
            ("[cognito]\nmax_attempts = 99\n", "cognito.max_attempts"),
            (
                "[cognito]\nallowed_regions = [\"mars\"]\n",
                "cognito.allowed_regions",
            ),
            (
                "[cognito]\nallowed_regions = []\n",
                "cognito.allowed_regions",
            ),
            (
                "[cognito]\ninitial_backoff_ms = 500\nmax_backoff_ms = 100\n",
                "cognito.max_backoff_ms",
            ),
            (
                "[server]\nmax_concurent_streams = 5\n",
                "max_concurent_streams",
            ),
            (
                "[cognito]\noperation_timeout_ms = \"5s\"\n",
                "operation_timeout_ms",
            ),
        ];
        for (toml, key) in cases {
            let message = load(toml).unwrap_err().to_string();
            assert!(message.contains(key), "{message:?} should name {key}");
        }
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
