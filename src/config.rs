//! The validated settings: plain data that the rest of the gateway reads. They come from the
//! command line ([`Flags`]) and an optional TOML file (its schema is the private `file` module);
//! everything is validated at start, and a bad value stops the process with a message that names
//! the key. AWS settings are not here: they come from the standard AWS chain.
//!
//! Everything else reads this module, and it reads only [`crate::domain`], so that configuration
//! never sits on an import loop.

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::domain::Region;

mod file;

pub use file::{FileConfig, json_schema};

/// What `serve`'s command line decides (`crate::cli::ServeArgs` converts into this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flags {
    /// Where to listen (`--listen`).
    pub listen: SocketAddr,
    /// Where to serve health only, if anywhere (`--health-listen`).
    pub health_listen: Option<SocketAddr>,
    /// Whether to serve from the embedded local Cognito (`--local`).
    pub local: bool,
    /// The TOML file, if any (`--config`).
    pub config: Option<PathBuf>,
    /// The fleet's Redis, overriding `fleet.redis_url` (`COGNITO_GATEWAY_REDIS_URL`).
    pub redis_url: Option<String>,
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
    /// The store the replicas of a fleet share (`[fleet]`); `None`: this process alone.
    pub fleet: Option<FleetSettings>,
    /// The file this came from, re-read for access changes (`--config`).
    pub path: Option<PathBuf>,
    /// The command line it was read with: a reload reads the file with the same.
    pub flags: Flags,
}

/// How callers prove who they are (`auth.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
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

impl AuthMode {
    /// The name the TOML file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Jwt => "jwt",
            Self::Mtls => "mtls",
            Self::None => "none",
        }
    }
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

/// `[auth.jwt]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    /// The required `iss`.
    pub issuer: String,
    /// The required `aud` (the gateway's own audience).
    pub audience: String,
    /// The keys.
    pub jwks: JwksSource,
    /// The claim naming the caller (`sub` by default; a caller's `name` must equal it).
    pub caller_claim: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// How often the keys are re-read.
    pub refresh: Duration,
    /// The least time between two fetches caused by unknown key ids.
    pub min_refetch: Duration,
}

/// Where the JWT keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A file (a mounted ConfigMap, say), re-read on every refresh.
    File(PathBuf),
    /// An HTTPS URL (an OIDC issuer's `jwks_uri`); `ca_file` adds a CA bundle to the system roots
    /// (a cluster's own CA, say).
    Url {
        /// The URL.
        url: String,
        /// Extra trusted CAs, PEM.
        ca_file: Option<PathBuf>,
    },
}

/// `[auth.mtls]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtlsConfig {
    /// The server's certificate chain, PEM.
    pub cert_file: PathBuf,
    /// The server's private key, PEM.
    pub key_file: PathBuf,
    /// The CAs client certificates must chain to, PEM.
    pub client_ca_file: PathBuf,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
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
    /// How long a caller's request id is remembered (`limits.request_id_ttl_secs`).
    pub request_id_ttl: Duration,
    /// Who counts as the same person (`limits.user_identity`).
    pub user_identity: UserIdentity,
}

/// Who counts as the same person for the gate (docs/api.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UserIdentity {
    /// The username as the pool compares it: case-folded where the pool's usernames are
    /// case-insensitive (learned with `DescribeUserPool`).
    Username,
    /// The user's `sub`, resolved with `AdminGetUser`, so that every alias (email, phone) of one
    /// user is one person. Costs a read call per reset.
    Canonical,
}

impl UserIdentity {
    /// The name the TOML file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Username => "username",
            Self::Canonical => "canonical",
        }
    }
}

/// `[fleet]`: the Redis (or Valkey, ElastiCache, MemoryDB) every replica shares.
#[derive(Clone, PartialEq, Eq)]
pub struct FleetSettings {
    /// `redis://` or `rediss://` (TLS); may carry a password.
    pub redis_url: String,
    /// A password that replaces the URL's, read from `fleet.redis_password_file`.
    pub redis_password: Option<String>,
    /// Extra CA certificates (PEM) for `rediss://`, from `fleet.redis_ca_file`.
    pub redis_ca: Option<Vec<u8>>,
    /// Every key starts `<key_prefix>:`.
    pub key_prefix: String,
    /// The HMAC key for users and request ids, the same on every replica.
    pub user_key_secret: [u8; 32],
    /// One Redis round trip at most.
    pub timeout: Duration,
    /// What a replica does while the store cannot be reached.
    pub on_unavailable: OnUnavailable,
    /// How many replicas share the quota: a replica alone takes `1 / replicas_hint` of it.
    pub replicas_hint: u32,
}

impl std::fmt::Debug for FleetSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password; the secret is a secret.
        f.debug_struct("FleetSettings")
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .field("on_unavailable", &self.on_unavailable)
            .field("replicas_hint", &self.replicas_hint)
            .finish_non_exhaustive()
    }
}

/// `fleet.on_unavailable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnUnavailable {
    /// Each replica falls back to its own gate and limits, at `1 / replicas_hint` of the budgets.
    Local,
    /// Calls are refused (UNAVAILABLE FLEET_STORE_UNAVAILABLE) until the store answers again.
    Deny,
}

impl OnUnavailable {
    /// The name the TOML file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Deny => "deny",
        }
    }
}

/// HTTP/2 and shutdown settings (`[server]` in the TOML file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Streams one connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// Streams a peer may make the server reset before the connection is closed (reset floods).
    pub max_local_error_reset_streams: usize,
    /// Streams reset by the peer that may wait to be accepted (CVE-2023-44487, "rapid reset").
    pub max_pending_accept_reset_streams: usize,
    /// Largest request message accepted, in bytes.
    pub max_decoding_message_size: usize,
    /// Request bytes all calls together may hold at once; past it calls are refused (OVERLOADED).
    pub max_request_bytes_in_flight: usize,
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
    /// Connections open at once on the API port; more are closed as they come.
    pub max_connections: usize,
    /// Connections open at once from one IP address, within `max_connections`.
    pub max_connections_per_peer: usize,
    /// How long a new connection has to send the HTTP/2 preface (its TLS handshake included).
    pub handshake_timeout: Duration,
}

/// The Cognito client's settings (`[cognito]` in the TOML file).
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// How long a connection to Cognito may idle, pooled or opened ahead of need, before it is
    /// replaced: below the time AWS closes idle connections after (`cognito/connect.rs`).
    pub connection_refresh: Duration,
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
    pub fn load(flags: impl Into<Flags>) -> Result<Self, ConfigError> {
        let flags = flags.into();
        let file = match &flags.config {
            None => FileConfig::default(),
            Some(path) => file::read_toml(path)?,
        };
        Self::from_parts(&flags, file)
    }

    /// Validates a parsed file together with the flags.
    pub fn from_parts(flags: &Flags, file: FileConfig) -> Result<Self, ConfigError> {
        file.validate(flags)
    }

    /// Defaults, for a given address (tests, the local demo): no authentication.
    /// The file read again, and validated exactly as at start (every key, every file it names),
    /// with the same command line; without a file, the same configuration.
    pub fn reread(&self) -> Result<Self, ConfigError> {
        match &self.flags.config {
            Some(_) => Self::load(self.flags.clone()),
            None => Ok(self.clone()),
        }
    }

    /// The sections whose settings differ in `new` and take effect only after a restart: only
    /// the callers (and their tokens) change in place.
    pub fn restart_needed(&self, new: &Self) -> Vec<&'static str> {
        let (old_access, new_access) = (&self.access, &new.access);
        [
            ("server", self.server != new.server),
            ("cognito", self.cognito != new.cognito),
            ("limits", self.limits != new.limits),
            ("fleet", self.fleet != new.fleet),
            (
                "auth",
                // The token file moving elsewhere too: the files watched are the ones started with.
                (
                    old_access.mode,
                    &old_access.jwt,
                    &old_access.mtls,
                    &old_access.token_file,
                ) != (
                    new_access.mode,
                    &new_access.jwt,
                    &new_access.mtls,
                    &new_access.token_file,
                ) || old_access.reload_interval != new_access.reload_interval,
            ),
        ]
        .into_iter()
        .filter_map(|(section, changed)| changed.then_some(section))
        .collect()
    }

    pub fn with_listen(listen: SocketAddr) -> Self {
        Self {
            flags: Flags {
                listen,
                health_listen: None,
                local: false,
                config: None,
                redis_url: None,
            },
            listen,
            health_listen: None,
            local: false,
            server: ServerSettings::default(),
            cognito: CognitoSettings::default(),
            access: AccessConfig::none(),
            limits: LimitSettings::default(),
            fleet: None,
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
}

impl Default for LimitSettings {
    fn default() -> Self {
        file::FileLimits::default()
            .validate()
            .expect("the defaults are valid")
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        file::FileServer::default()
            .validate()
            .expect("the defaults are valid")
    }
}

impl Default for CognitoSettings {
    fn default() -> Self {
        file::FileCognito::default()
            .validate()
            .expect("the defaults are valid")
    }
}

/// A value out of range, named by its dotted key.
pub(crate) fn invalid(key: impl Into<String>, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        why: why.into(),
    }
}

#[cfg(test)]
mod tests;
