//! Configuration: the command line (clap, each flag with an `env` twin) and an optional TOML file for
//! the rest. Everything is validated at start; a bad value stops the process with a message that
//! names the key. AWS settings are not here: they come from the standard AWS chain.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::SocketAddr,
    path::PathBuf,
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::{
    domain::Region,
    jwt::{JwksSource, JwtConfig},
    tls::MtlsConfig,
};

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
    /// A second, health-only listener (grpc.health.v1, no authentication): for Kubernetes probes,
    /// which connect to the pod IP, when the API listens on loopback only.
    #[arg(long, env = "COGNITO_GATEWAY_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
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
    /// A file holding the bearer token (or JWT) to authenticate with, e.g. a mounted Secret or a
    /// projected service-account token. Read from a file so that it never shows in `ps`.
    #[arg(long, env = "COGNITO_GATEWAY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
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
    /// Where to serve health only, if anywhere.
    pub health_listen: Option<SocketAddr>,
    /// Whether to serve from the embedded local Cognito.
    pub local: bool,
    /// gRPC server hardening and shutdown.
    pub server: ServerSettings,
    /// The Cognito client.
    pub cognito: CognitoSettings,
    /// Who may call, and what for (`[auth]`, `[[callers]]`); reloadable.
    pub access: AccessConfig,
    /// Gateway-wide limits (`[limits]`).
    pub limits: LimitSettings,
    /// The file this came from, re-read for access changes (`--config`).
    pub path: Option<PathBuf>,
}

/// How callers prove who they are (`auth.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Bearer tokens, known by their SHA-256.
    Token,
    /// JSON Web Tokens, verified against a JWKS (`[auth.jwt]`).
    Jwt,
    /// Client certificates: server TLS, the caller is the certificate's SPIFFE ID (`[auth.mtls]`).
    Mtls,
    /// No authentication: every call is the caller `anonymous`.
    None,
}

/// The reloadable part of the configuration: authentication and the caller policy.
#[derive(Debug, Clone)]
pub struct AccessConfig {
    /// How callers authenticate.
    pub mode: AuthMode,
    /// The callers, validated.
    pub callers: Vec<CallerConfig>,
    /// How often the files are checked for changes.
    pub reload_interval: Duration,
    /// The optional file of token hashes (`auth.token_file`), e.g. a mounted Secret.
    pub token_file: Option<PathBuf>,
    /// `[auth.jwt]`, with mode `jwt`.
    pub jwt: Option<JwtConfig>,
    /// `[auth.mtls]`, with mode `mtls`.
    pub mtls: Option<MtlsConfig>,
}

/// One `[[callers]]` entry, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerConfig {
    /// The caller's name: its identity in logs, metrics and the policy.
    pub name: String,
    /// SHA-256 of its bearer token (mode `token`).
    pub token_sha256: Option<[u8; 32]>,
    /// The pools it may reset users in; `None` means every pool (`"*"`).
    pub user_pools: Option<Vec<String>>,
    /// Its sustained rate, per second.
    pub rate_per_second: u32,
    /// Its burst.
    pub burst: u32,
}

/// Gateway-wide limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSettings {
    /// Cognito calls per second across all callers and pools. Cognito's account-recovery quota (30
    /// per second per account and region) is shared by every pool and replica: keep below it.
    pub backend_rps: u32,
    /// Cognito calls that may go in one burst.
    pub backend_burst: u32,
    /// Cognito calls per second for each user pool, so that one pool cannot take the whole
    /// backend guard; 0: no such limit.
    pub pool_rps: u32,
    /// Each pool's burst.
    pub pool_burst: u32,
    /// After a successful reset, repeats for the same user within this window are answered without
    /// calling Cognito (`deduplicated = true`).
    pub user_cooldown: Duration,
    /// Calls in flight at once; more are shed with UNAVAILABLE OVERLOADED.
    pub max_in_flight: usize,
    /// Calls in flight at once from any one authenticated caller, so that one caller (stalled
    /// streams, say) cannot hold every place; more are shed likewise.
    pub max_in_flight_per_caller: usize,
    /// Rate of callers that set none.
    pub default_rate_per_second: u32,
    /// Burst of callers that set none.
    pub default_burst: u32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        FileLimits::default()
            .validate()
            .expect("the defaults are valid")
    }
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
    /// The longest a call may take, whatever its `grpc-timeout` (or without one).
    pub request_timeout: Duration,
    /// Connections are closed (gracefully) after this long, so that callers behind a Kubernetes
    /// Service spread over replicas as they come and go; `None` keeps them open.
    pub max_connection_age: Option<Duration>,
}

/// The Cognito client's settings (`[cognito]` in the TOML file).
#[derive(Debug, Clone)]
pub struct CognitoSettings {
    /// Upper bound on one Cognito call, retries included. A caller waits at most its own deadline;
    /// the call, which other callers may share, runs on to its end.
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
    pub allowed_regions: Option<BTreeSet<Region>>,
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
        /// The dotted key, e.g. `server.max_concurrent_streams` or `callers[billing].user_pools`.
        key: String,
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
        let server = file.server.validate()?;
        let cognito = file.cognito.validate()?;
        let limits = file.limits.validate()?;
        let access = AccessConfig::validate(file.auth, file.callers, &limits, args.local)?;
        Ok(Self {
            listen: args.listen,
            health_listen: args.health_listen,
            local: args.local,
            server,
            cognito,
            access,
            limits,
            path: args.config.clone(),
        })
    }

    /// Defaults, for a given address (tests, the local demo): no authentication.
    pub fn with_listen(listen: SocketAddr) -> Self {
        Self {
            listen,
            health_listen: None,
            local: false,
            server: ServerSettings::default(),
            cognito: CognitoSettings::default(),
            access: AccessConfig::none(),
            limits: LimitSettings::default(),
            path: None,
        }
    }
}

impl AccessConfig {
    /// No authentication and no callers: everyone is `anonymous`, allowed every pool.
    pub fn none() -> Self {
        Self {
            mode: AuthMode::None,
            callers: Vec::new(),
            reload_interval: Duration::from_secs(5),
            token_file: None,
            jwt: None,
            mtls: None,
        }
    }

    /// Re-reads the access part of a config file (and its token file), for reloads.
    pub fn reload(path: &std::path::Path, local: bool) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file = FileConfig::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        let limits = file.limits.validate()?;
        Self::validate(file.auth, file.callers, &limits, local)
    }

    fn validate(
        auth: Option<FileAuth>,
        callers: Vec<FileCaller>,
        limits: &LimitSettings,
        local: bool,
    ) -> Result<Self, ConfigError> {
        let Some(auth) = auth else {
            if local {
                return Ok(Self::none());
            }
            return Err(invalid(
                "auth.mode",
                "no authentication configured: set auth.mode = \"token\" with [[callers]], or \
                 auth.mode = \"none\" to run without (only where the network already restricts callers)",
            ));
        };
        let mtls = match (auth.mode, auth.mtls) {
            (AuthMode::Mtls, Some(mtls)) => Some(mtls.validate()?),
            (AuthMode::Mtls, None) => {
                return Err(invalid("auth.mtls", "required with auth.mode = \"mtls\""));
            }
            (_, Some(_)) => {
                return Err(invalid("auth.mtls", "only used with auth.mode = \"mtls\""));
            }
            (_, None) => None,
        };
        let jwt = match (auth.mode, auth.jwt) {
            (AuthMode::Jwt, Some(jwt)) => Some(jwt.validate()?),
            (AuthMode::Jwt, None) => {
                return Err(invalid("auth.jwt", "required with auth.mode = \"jwt\""));
            }
            (_, Some(_)) => {
                return Err(invalid("auth.jwt", "only used with auth.mode = \"jwt\""));
            }
            (_, None) => None,
        };
        let token_hashes = match &auth.token_file {
            Some(path) => read_token_file(path)?,
            None => HashMap::new(),
        };
        let mut seen_names = HashSet::new();
        let mut seen_hashes = HashSet::new();
        let mut validated = Vec::with_capacity(callers.len());
        for caller in callers {
            let key = |field: &str| format!("callers[{}].{field}", caller.name);
            if caller.name.is_empty()
                || caller
                    .name
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(invalid(
                    "callers[].name",
                    format!("{:?} is not a usable name", caller.name),
                ));
            }
            if !seen_names.insert(caller.name.clone()) {
                return Err(invalid(key("name"), "appears twice"));
            }
            let inline = caller
                .token_sha256
                .as_deref()
                .map(|hex| parse_sha256(&key("token_sha256"), hex))
                .transpose()?;
            let from_file = token_hashes.get(&caller.name).copied();
            if inline.is_some() && from_file.is_some() {
                return Err(invalid(
                    key("token_sha256"),
                    "set both inline and in auth.token_file",
                ));
            }
            let token_sha256 = inline.or(from_file);
            if matches!(auth.mode, AuthMode::Jwt | AuthMode::Mtls) && token_sha256.is_some() {
                return Err(invalid(
                    key("token_sha256"),
                    "not used with auth.mode = \"jwt\" (callers are named by the token's claim or the certificate's SPIFFE ID)",
                ));
            }
            if auth.mode == AuthMode::Token {
                let Some(hash) = token_sha256 else {
                    return Err(invalid(
                        key("token_sha256"),
                        "required with auth.mode = \"token\" (inline or in auth.token_file)",
                    ));
                };
                if !seen_hashes.insert(hash) {
                    return Err(invalid(
                        key("token_sha256"),
                        "the same token hash belongs to another caller",
                    ));
                }
            }
            let user_pools = match caller.user_pools.as_slice() {
                [] => {
                    return Err(invalid(
                        key("user_pools"),
                        "must list pool ids, or [\"*\"] for every pool",
                    ));
                }
                [any] if any == "*" => None,
                pools => {
                    for pool in pools {
                        if pool == "*" {
                            return Err(invalid(key("user_pools"), "\"*\" must stand alone"));
                        }
                        crate::domain::UserPoolId::parse(pool.clone()).map_err(|v| {
                            invalid(key("user_pools"), format!("{pool:?}: {}", v.description))
                        })?;
                    }
                    Some(pools.to_vec())
                }
            };
            validated.push(CallerConfig {
                rate_per_second: within(
                    &key("rate_per_second"),
                    caller
                        .rate_per_second
                        .unwrap_or(limits.default_rate_per_second),
                    1..=100_000,
                )?,
                burst: within(
                    &key("burst"),
                    caller.burst.unwrap_or(limits.default_burst),
                    1..=100_000,
                )?,
                name: caller.name,
                token_sha256,
                user_pools,
            });
        }
        if auth.mode != AuthMode::None && validated.is_empty() {
            return Err(invalid(
                "callers",
                "authentication needs at least one [[callers]] entry",
            ));
        }
        if let Some(unknown) = token_hashes.keys().find(|name| !seen_names.contains(*name)) {
            return Err(invalid(
                "auth.token_file",
                format!("names {unknown:?}, which is not in [[callers]]"),
            ));
        }
        Ok(Self {
            mode: auth.mode,
            callers: validated,
            reload_interval: secs(
                "auth.reload_interval_secs",
                auth.reload_interval_secs,
                1..=3600,
            )?,
            token_file: auth.token_file,
            jwt,
            mtls,
        })
    }
}

/// The token file: `name = "<sha256 hex>"` lines (TOML), e.g. a Kubernetes Secret's key.
fn read_token_file(path: &std::path::Path) -> Result<HashMap<String, [u8; 32]>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let table: HashMap<String, String> =
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
    table
        .into_iter()
        .map(|(name, hex)| {
            let hash = parse_sha256(&format!("auth.token_file: {name}"), &hex)?;
            Ok((name, hash))
        })
        .collect()
}

fn parse_sha256(key: &str, hex: &str) -> Result<[u8; 32], ConfigError> {
    let mut hash = [0u8; 32];
    hex::decode_to_slice(hex.trim(), &mut hash).map_err(|_| {
        invalid(
            key,
            "must be the SHA-256 of the token, as 64 hex digits (never the token itself)",
        )
    })?;
    Ok(hash)
}

/// The TOML file as written. Unknown keys are errors, so a typo is never silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    server: FileServer,
    cognito: FileCognito,
    auth: Option<FileAuth>,
    callers: Vec<FileCaller>,
    limits: FileLimits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    mode: AuthMode,
    #[serde(default)]
    token_file: Option<PathBuf>,
    #[serde(default = "default_reload_interval_secs")]
    reload_interval_secs: u64,
    #[serde(default)]
    jwt: Option<FileJwt>,
    #[serde(default)]
    mtls: Option<FileMtls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMtls {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: PathBuf,
    #[serde(default = "default_handshake_timeout_secs")]
    handshake_timeout_secs: u64,
}

fn default_handshake_timeout_secs() -> u64 {
    10
}

impl FileMtls {
    fn validate(self) -> Result<MtlsConfig, ConfigError> {
        Ok(MtlsConfig {
            cert_file: self.cert_file,
            key_file: self.key_file,
            client_ca_file: self.client_ca_file,
            handshake_timeout: secs(
                "auth.mtls.handshake_timeout_secs",
                self.handshake_timeout_secs,
                1..=60,
            )?,
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileJwt {
    issuer: String,
    audience: String,
    #[serde(default)]
    jwks_file: Option<PathBuf>,
    #[serde(default)]
    jwks_url: Option<String>,
    #[serde(default)]
    jwks_ca_file: Option<PathBuf>,
    #[serde(default = "default_caller_claim")]
    caller_claim: String,
    #[serde(default = "default_leeway_secs")]
    leeway_secs: u64,
    #[serde(default = "default_jwks_refresh_secs")]
    jwks_refresh_secs: u64,
    #[serde(default = "default_jwks_refetch_min_secs")]
    jwks_refetch_min_secs: u64,
}

fn default_caller_claim() -> String {
    "sub".to_owned()
}
fn default_leeway_secs() -> u64 {
    30
}
fn default_jwks_refresh_secs() -> u64 {
    300
}
fn default_jwks_refetch_min_secs() -> u64 {
    10
}

impl FileJwt {
    fn validate(self) -> Result<JwtConfig, ConfigError> {
        if self.issuer.is_empty() {
            return Err(invalid("auth.jwt.issuer", "must not be empty"));
        }
        if self.audience.is_empty() {
            return Err(invalid("auth.jwt.audience", "must not be empty"));
        }
        if self.caller_claim.is_empty() {
            return Err(invalid("auth.jwt.caller_claim", "must not be empty"));
        }
        let jwks = match (self.jwks_file, self.jwks_url) {
            (Some(path), None) => {
                if self.jwks_ca_file.is_some() {
                    return Err(invalid(
                        "auth.jwt.jwks_ca_file",
                        "only used with auth.jwt.jwks_url",
                    ));
                }
                JwksSource::File(path)
            }
            (None, Some(url)) => {
                let uri: http::Uri = url
                    .parse()
                    .map_err(|e| invalid("auth.jwt.jwks_url", format!("{url:?}: {e}")))?;
                let loopback = matches!(uri.host(), Some("127.0.0.1" | "localhost" | "[::1]"));
                match uri.scheme_str() {
                    Some("https") => {}
                    // Keys over plain HTTP could be swapped by anyone on the path; only loopback
                    // (a local proxy, tests) is trusted.
                    Some("http") if loopback => {}
                    _ => return Err(invalid("auth.jwt.jwks_url", "must be https://")),
                }
                JwksSource::Url {
                    url,
                    ca_file: self.jwks_ca_file,
                }
            }
            _ => {
                return Err(invalid(
                    "auth.jwt",
                    "set exactly one of jwks_file and jwks_url",
                ));
            }
        };
        Ok(JwtConfig {
            issuer: self.issuer,
            audience: self.audience,
            jwks,
            caller_claim: self.caller_claim,
            leeway: secs("auth.jwt.leeway_secs", self.leeway_secs, 0..=300)?,
            refresh: secs(
                "auth.jwt.jwks_refresh_secs",
                self.jwks_refresh_secs,
                10..=86_400,
            )?,
            min_refetch: secs(
                "auth.jwt.jwks_refetch_min_secs",
                self.jwks_refetch_min_secs,
                1..=3600,
            )?,
        })
    }
}

fn default_reload_interval_secs() -> u64 {
    5
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCaller {
    name: String,
    #[serde(default)]
    token_sha256: Option<String>,
    #[serde(default)]
    user_pools: Vec<String>,
    #[serde(default)]
    rate_per_second: Option<u32>,
    #[serde(default)]
    burst: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileLimits {
    backend_rps: u32,
    backend_burst: Option<u32>,
    pool_rps: u32,
    pool_burst: Option<u32>,
    user_cooldown_secs: u64,
    max_in_flight: usize,
    max_in_flight_per_caller: Option<usize>,
    default_rate_per_second: u32,
    default_burst: u32,
}

impl Default for FileLimits {
    fn default() -> Self {
        Self {
            backend_rps: 25,
            backend_burst: None,
            pool_rps: 0,
            pool_burst: None,
            user_cooldown_secs: 30,
            max_in_flight: 256,
            max_in_flight_per_caller: None,
            default_rate_per_second: 10,
            default_burst: 20,
        }
    }
}

impl FileLimits {
    fn validate(self) -> Result<LimitSettings, ConfigError> {
        let backend_rps = within("limits.backend_rps", self.backend_rps, 1..=10_000)?;
        Ok(LimitSettings {
            backend_rps,
            // A burst of one second's budget: the quota Cognito enforces is per second.
            backend_burst: within(
                "limits.backend_burst",
                self.backend_burst.unwrap_or(backend_rps),
                1..=10_000,
            )?,
            pool_rps: within("limits.pool_rps", self.pool_rps, 0..=10_000)?,
            pool_burst: within(
                "limits.pool_burst",
                self.pool_burst.unwrap_or(self.pool_rps.max(1)),
                1..=10_000,
            )?,
            user_cooldown: secs(
                "limits.user_cooldown_secs",
                self.user_cooldown_secs,
                0..=86_400,
            )?,
            max_in_flight: within("limits.max_in_flight", self.max_in_flight, 1..=100_000)?,
            // Half by default: one caller can then never shut the others out.
            max_in_flight_per_caller: within(
                "limits.max_in_flight_per_caller",
                self.max_in_flight_per_caller
                    .unwrap_or(self.max_in_flight.div_ceil(2)),
                1..=self.max_in_flight.max(1),
            )?,
            default_rate_per_second: within(
                "limits.default_rate_per_second",
                self.default_rate_per_second,
                1..=100_000,
            )?,
            default_burst: within("limits.default_burst", self.default_burst, 1..=100_000)?,
        })
    }
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
    request_timeout_secs: u64,
    max_connection_age_secs: u64,
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
            request_timeout_secs: 30,
            // Off: a sidecar has one caller on loopback. The shared Deployment sets it.
            max_connection_age_secs: 0,
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
            request_timeout: secs(
                "server.request_timeout_secs",
                self.request_timeout_secs,
                1..=3600,
            )?,
            max_connection_age: match within(
                "server.max_connection_age_secs",
                self.max_connection_age_secs,
                0..=86_400,
            )? {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
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
                let regions = regions
                    .into_iter()
                    .map(Region::parse)
                    .collect::<Result<BTreeSet<_>, _>>()
                    .map_err(|bad| invalid("cognito.allowed_regions", bad.to_string()))?;
                Some(regions)
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

pub(crate) fn invalid(key: impl Into<String>, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        why: why.into(),
    }
}

pub(crate) fn within<T: PartialOrd + std::fmt::Display>(
    key: &str,
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
    key: &str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Duration, ConfigError> {
    within(key, value, range).map(Duration::from_secs)
}

fn millis(
    key: &str,
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

    fn load_with(args: &[&str], toml: &str) -> Result<Config, ConfigError> {
        let file = FileConfig::parse(toml).map_err(|source| ConfigError::Parse {
            path: "test.toml".into(),
            source: Box::new(source),
        })?;
        Config::from_parts(&serve(args), file)
    }

    /// A file with the given text, run without authentication (these tests are about the rest).
    fn load(toml: &str) -> Result<Config, ConfigError> {
        load_with(&[], &format!("{toml}\n[auth]\nmode = \"none\"\n"))
    }

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn authentication_must_be_chosen_outside_local_mode() {
        let error = load_with(&[], "").unwrap_err().to_string();
        assert!(error.contains("auth.mode"), "{error}");
        let local = load_with(&["--local"], "").unwrap();
        assert_eq!(local.access.mode, AuthMode::None);
        let none = load_with(&[], "[auth]\nmode = \"none\"\n").unwrap();
        assert_eq!(none.access.mode, AuthMode::None);
    }

    #[test]
    fn token_callers_are_read() {
        let config = load_with(
            &[],
            &format!(
                "[auth]\nmode = \"token\"\n[[callers]]\nname = \"billing\"\ntoken_sha256 = \"{HASH}\"\nuser_pools = [\"us-east-1_AbC\"]\nrate_per_second = 5\nburst = 10\n[[callers]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\nuser_pools = [\"*\"]\n",
                HASH.replace('9', "8")
            ),
        )
        .unwrap();
        let billing = &config.access.callers[0];
        assert_eq!(billing.name, "billing");
        assert_eq!(
            billing.user_pools.as_deref(),
            Some(&["us-east-1_AbC".to_owned()][..])
        );
        assert_eq!((billing.rate_per_second, billing.burst), (5, 10));
        let ops = &config.access.callers[1];
        assert_eq!(ops.user_pools, None);
        assert_eq!((ops.rate_per_second, ops.burst), (10, 20), "the defaults");
    }

    #[test]
    fn caller_errors_name_the_caller_and_key() {
        let caller = |body: &str| {
            format!("[auth]\nmode = \"token\"\n[[callers]]\nname = \"billing\"\n{body}")
        };
        let cases = [
            (
                caller("user_pools = [\"*\"]\n"),
                "callers[billing].token_sha256",
            ),
            (
                caller("token_sha256 = \"abc\"\nuser_pools = [\"*\"]\n"),
                "callers[billing].token_sha256",
            ),
            (
                caller(&format!("token_sha256 = \"{HASH}\"\n")),
                "callers[billing].user_pools",
            ),
            (
                caller(&format!(
                    "token_sha256 = \"{HASH}\"\nuser_pools = [\"not a pool\"]\n"
                )),
                "callers[billing].user_pools",
            ),
            (
                caller(&format!(
                    "token_sha256 = \"{HASH}\"\nuser_pools = [\"*\", \"us-east-1_A\"]\n"
                )),
                "callers[billing].user_pools",
            ),
            (
                caller(&format!(
                    "token_sha256 = \"{HASH}\"\nuser_pools = [\"*\"]\nrate_per_second = 0\n"
                )),
                "callers[billing].rate_per_second",
            ),
            (
                format!(
                    "{}[[callers]]\nname = \"billing\"\ntoken_sha256 = \"{HASH}\"\nuser_pools = [\"*\"]\n",
                    caller(&format!(
                        "token_sha256 = \"{HASH}\"\nuser_pools = [\"*\"]\n"
                    ))
                ),
                "callers[billing].name",
            ),
            ("[auth]\nmode = \"token\"\n".to_owned(), "callers"),
            ("[auth]\nmode = \"jwt\"\n".to_owned(), "auth.jwt"),
            ("[auth]\nmode = \"mtls\"\n".to_owned(), "auth.mtls"),
            ("[auth]\nmode = \"jwt\"\n[auth.jwt]\nissuer = \"i\"\naudience = \"a\"\njwks_url = \"http://example.com/keys\"\n".to_owned(), "auth.jwt.jwks_url"),
            ("[auth]\nmode = \"jwt\"\n[auth.jwt]\nissuer = \"i\"\naudience = \"a\"\n".to_owned(), "auth.jwt"),
            ("[auth]\nmode = \"basic\"\n".to_owned(), "mode"),
            (
                "[limits]\nbackend_rps = 0\n[auth]\nmode = \"none\"\n".to_owned(),
                "limits.backend_rps",
            ),
        ];
        for (toml, key) in cases {
            let message = load_with(&[], &toml).unwrap_err().to_string();
            assert!(
                message.contains(key),
                "{message:?} should name {key}\n{toml}"
            );
        }
    }

    #[test]
    fn token_hashes_can_live_in_their_own_file() {
        let dir = std::env::temp_dir().join(format!("cg-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tokens = dir.join("tokens.toml");
        std::fs::write(&tokens, format!("billing = \"{HASH}\"\n")).unwrap();
        let toml = format!(
            "[auth]\nmode = \"token\"\ntoken_file = {:?}\n[[callers]]\nname = \"billing\"\nuser_pools = [\"*\"]\n",
            tokens.display().to_string()
        );
        let config = load_with(&[], &toml).unwrap();
        assert!(config.access.callers[0].token_sha256.is_some());
        std::fs::write(&tokens, format!("stranger = \"{HASH}\"\n")).unwrap();
        let error = load_with(&[], &toml).unwrap_err().to_string();
        assert!(error.contains("auth.token_file"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
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
            "[server]\nmax_concurrent_streams = 10\nmax_connection_age_secs = 300\n[cognito]\noperation_timeout_ms = 750\nallowed_regions = [\"eu-west-1\"]\n",
        )
        .unwrap();
        assert_eq!(config.server.max_concurrent_streams, 10);
        assert_eq!(
            config.server.max_connection_age,
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            load("").unwrap().server.max_connection_age,
            None,
            "off by default"
        );
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
            ("[limits]\npool_rps = 20000\n", "limits.pool_rps"),
            (
                "[limits]\nmax_in_flight = 10\nmax_in_flight_per_caller = 11\n",
                "limits.max_in_flight_per_caller",
            ),
            (
                "[limits]\npool_rps = 5\npool_burst = 0\n",
                "limits.pool_burst",
            ),
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
