//! The TOML file as written, and its validation into the plain data of [`super`]. Every check
//! names the dotted key at fault; unknown keys are errors. `[auth]` and `[[callers]]` are in
//! [`access`].

use std::{collections::BTreeSet, path::Path, time::Duration};

use schemars::JsonSchema;
use serde::{Deserialize, de::DeserializeOwned};

use super::{
    CognitoSettings, Config, ConfigError, Flags, FleetSettings, LimitSettings, OnUnavailable,
    ServerSettings, UserIdentity, invalid,
};
use crate::domain::Region;

mod access;

use access::{FileAuth, FileCaller, access};

/// The TOML file as written (`--config`). Unknown keys are errors, so a typo is never silently
/// ignored.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[schemars(
    title = "cognito-gateway configuration (--config)",
    description = "What serde accepts: keys and types. Ranges and rules between keys are checked by `cognito-gateway check-config`."
)]
pub struct FileConfig {
    server: FileServer,
    cognito: FileCognito,
    auth: Option<FileAuth>,
    callers: Vec<FileCaller>,
    limits: FileLimits,
    fleet: Option<FileFleet>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub(super) struct FileServer {
    max_concurrent_streams: u32,
    max_local_error_reset_streams: usize,
    max_pending_accept_reset_streams: usize,
    max_decoding_message_size: usize,
    max_request_bytes_in_flight: usize,
    max_encoding_message_size: usize,
    max_header_list_size: u32,
    http2_keepalive_interval_secs: u64,
    http2_keepalive_timeout_secs: u64,
    tcp_keepalive_secs: u64,
    shutdown_grace_secs: u64,
    request_timeout_secs: u64,
    max_connection_age_secs: u64,
    max_connections: usize,
    max_connections_per_peer: usize,
    handshake_timeout_secs: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub(super) struct FileCognito {
    operation_timeout_ms: u64,
    connect_timeout_ms: u64,
    max_attempts: u32,
    initial_backoff_ms: u64,
    max_backoff_ms: u64,
    allowed_regions: Option<Vec<String>>,
    max_regions: usize,
    connection_refresh_secs: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub(super) struct FileLimits {
    backend_rps: u32,
    backend_burst: Option<u32>,
    pool_rps: u32,
    pool_burst: Option<u32>,
    user_cooldown_secs: u64,
    max_in_flight: usize,
    max_in_flight_per_caller: Option<usize>,
    default_rate_per_second: u32,
    default_burst: u32,
    request_id_ttl_secs: u64,
    user_identity: UserIdentity,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FileFleet {
    #[serde(default)]
    redis_url: Option<String>,
    #[serde(default)]
    redis_password_file: Option<std::path::PathBuf>,
    #[serde(default)]
    redis_ca_file: Option<std::path::PathBuf>,
    #[serde(default = "default_key_prefix")]
    key_prefix: String,
    user_key_secret_file: std::path::PathBuf,
    #[serde(default = "default_fleet_timeout_ms")]
    timeout_ms: u64,
    #[serde(default = "default_on_unavailable")]
    on_unavailable: OnUnavailable,
    #[serde(default = "default_replicas_hint")]
    replicas_hint: u32,
}

fn default_key_prefix() -> String {
    "cognito-gateway".to_owned()
}
fn default_fleet_timeout_ms() -> u64 {
    50
}
fn default_on_unavailable() -> OnUnavailable {
    OnUnavailable::Local
}
fn default_replicas_hint() -> u32 {
    2
}

/// The TOML file's JSON Schema (draft 2020-12), as `cognito-gateway config-schema` prints it and
/// docs/config.schema.json holds it: derived from the types serde reads the file into, so it cannot
/// drift from them. Editors and CI validate with it; `check-config` remains the full check.
pub fn json_schema() -> String {
    let schema = schemars::generate::SchemaSettings::draft2020_12()
        .with_transform(schemars::transform::RecursiveTransform(no_null))
        .into_generator()
        .into_root_schema_for::<FileConfig>();
    let mut text = serde_json::to_string_pretty(&schema)
        .expect("a schema built of JSON values always serializes");
    text.push('\n');
    text
}

/// TOML has no null: a key left out is serde's `None`, so the `null` that schemars allows for every
/// `Option` (and gives as its default) is taken out, and the schema says only what a file can hold.
fn no_null(schema: &mut schemars::Schema) {
    let is_null = |value: &serde_json::Value| value == "null" || value["type"] == "null";
    if schema
        .get("default")
        .is_some_and(serde_json::Value::is_null)
    {
        schema.remove("default");
    }
    if let Some(serde_json::Value::Array(types)) = schema.get_mut("type") {
        types.retain(|t| !is_null(t));
        if let [only] = types.as_slice() {
            let only = only.clone();
            schema.insert("type".to_owned(), only);
        }
    }
    if let Some(serde_json::Value::Array(any_of)) = schema.get_mut("anyOf") {
        any_of.retain(|alternative| !is_null(alternative));
        if let [serde_json::Value::Object(only)] = any_of.as_slice() {
            let only = only.clone();
            schema.remove("anyOf");
            for (key, value) in only {
                schema.insert(key, value);
            }
        }
    }
}

impl FileConfig {
    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Validates everything, together with the flags.
    pub(super) fn validate(self, flags: &Flags) -> Result<Config, ConfigError> {
        let server = self.server.validate()?;
        let cognito = self.cognito.validate()?;
        let limits = self.limits.validate()?;
        let access = access(self.auth, self.callers, &limits, flags.local)?;
        // A shutdown must not cut off a reset mid-call, leaving its outcome unknown and unlogged.
        if server.shutdown_grace < cognito.operation_timeout {
            return Err(invalid(
                "server.shutdown_grace_secs",
                format!(
                    "{} s is shorter than cognito.operation_timeout_ms ({} ms): a shutdown could cut a reset off mid-call",
                    server.shutdown_grace.as_secs(),
                    cognito.operation_timeout.as_millis()
                ),
            ));
        }
        let fleet = match (self.fleet, &flags.redis_url) {
            (Some(fleet), url) => Some(fleet.validate(url.clone())?),
            (None, Some(_)) => {
                return Err(invalid(
                    "fleet",
                    "COGNITO_GATEWAY_REDIS_URL is set, but there is no [fleet] (it needs at least user_key_secret_file)",
                ));
            }
            (None, None) => None,
        };
        Ok(Config {
            listen: flags.listen,
            health_listen: flags.health_listen,
            local: flags.local,
            server,
            cognito,
            access,
            limits,
            fleet,
            path: flags.config.clone(),
            flags: flags.clone(),
        })
    }
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
            // All calls together: four of the largest messages, or tens of thousands of real ones.
            max_request_bytes_in_flight: 16 * 1024 * 1024,
            max_encoding_message_size: 64 * 1024,
            max_header_list_size: 16 * 1024,
            http2_keepalive_interval_secs: 30,
            http2_keepalive_timeout_secs: 10,
            tcp_keepalive_secs: 60,
            shutdown_grace_secs: 10,
            request_timeout_secs: 30,
            // Every connection ends (gracefully: GOAWAY, calls in flight finish within
            // request_timeout) after half an hour: callers behind a Service spread over replicas,
            // and a connection that stays idle after its preface holds a place for a bounded time.
            max_connection_age_secs: 1800,
            // Each costs a file descriptor and a few KiB; far more than real callers need.
            max_connections: 1024,
            // One host (a hostile or broken client) cannot hold every place. Behind a proxy that
            // hides client addresses (a mesh's inbound hop), all callers share one address: raise
            // it to max_connections there.
            max_connections_per_peer: 256,
            handshake_timeout_secs: 10,
        }
    }
}

impl FileServer {
    pub(super) fn validate(self) -> Result<ServerSettings, ConfigError> {
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
            max_request_bytes_in_flight: within(
                "server.max_request_bytes_in_flight",
                self.max_request_bytes_in_flight,
                // One message of the largest size must fit, with its 5-byte gRPC frame header.
                self.max_decoding_message_size.saturating_add(5)..=1024 * 1024 * 1024,
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
            max_connections: within("server.max_connections", self.max_connections, 1..=100_000)?,
            max_connections_per_peer: within(
                "server.max_connections_per_peer",
                self.max_connections_per_peer,
                1..=self.max_connections.max(1),
            )?,
            handshake_timeout: secs(
                "server.handshake_timeout_secs",
                self.handshake_timeout_secs,
                1..=60,
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
            // Below the shortest idle limit reported of AWS endpoints that matters here (S3's
            // ~20 s); see cognito/connect.rs.
            connection_refresh_secs: 15,
        }
    }
}

impl FileCognito {
    pub(super) fn validate(self) -> Result<CognitoSettings, ConfigError> {
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
            connection_refresh: Duration::from_secs(within(
                "cognito.connection_refresh_secs",
                self.connection_refresh_secs,
                1..=3_600,
            )?),
        })
    }
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
            request_id_ttl_secs: 86_400,
            user_identity: UserIdentity::Username,
        }
    }
}

impl FileLimits {
    pub(super) fn validate(self) -> Result<LimitSettings, ConfigError> {
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
            request_id_ttl: secs(
                "limits.request_id_ttl_secs",
                self.request_id_ttl_secs,
                1..=7 * 86_400,
            )?,
            user_identity: self.user_identity,
        })
    }
}

impl FileFleet {
    /// Validates `[fleet]`, reading the files it names; `url` (the environment) wins over
    /// `redis_url`.
    fn validate(self, url: Option<String>) -> Result<FleetSettings, ConfigError> {
        let Some(redis_url) = url.or(self.redis_url) else {
            return Err(invalid(
                "fleet.redis_url",
                "required (or COGNITO_GATEWAY_REDIS_URL)",
            ));
        };
        if !(redis_url.starts_with("redis://") || redis_url.starts_with("rediss://")) {
            // Never echo the URL: it may hold a password.
            return Err(invalid(
                "fleet.redis_url",
                "must start redis:// or rediss:// (TLS)",
            ));
        }
        if self.key_prefix.is_empty()
            || !self
                .key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(invalid(
                "fleet.key_prefix",
                "must be letters, digits, '-', '_' or '.'",
            ));
        }
        let secret = read_file("fleet.user_key_secret_file", &self.user_key_secret_file)?;
        let secret = trim_newline(&secret);
        if secret.len() < 32 {
            return Err(invalid(
                "fleet.user_key_secret_file",
                format!("holds {} bytes; at least 32 are needed", secret.len()),
            ));
        }
        // Derived, so that a secret of any length (at least 32 bytes) keys the HMAC the same way
        // on every replica.
        let user_key_secret = sha2::Digest::finalize(sha2::Digest::chain_update(
            <sha2::Sha256 as sha2::Digest>::new(),
            secret,
        ))
        .into();
        let redis_password = match &self.redis_password_file {
            Some(path) => {
                let bytes = read_file("fleet.redis_password_file", path)?;
                let password = String::from_utf8(trim_newline(&bytes).to_vec())
                    .map_err(|_| invalid("fleet.redis_password_file", "must hold UTF-8 text"))?;
                Some(password)
            }
            None => None,
        };
        let redis_ca = match &self.redis_ca_file {
            Some(path) => Some(read_file("fleet.redis_ca_file", path)?),
            None => None,
        };
        if redis_ca.is_some() && !redis_url.starts_with("rediss://") {
            return Err(invalid(
                "fleet.redis_ca_file",
                "only used with a rediss:// URL",
            ));
        }
        Ok(FleetSettings {
            redis_url,
            redis_password,
            redis_ca,
            key_prefix: self.key_prefix,
            user_key_secret,
            timeout: millis("fleet.timeout_ms", self.timeout_ms, 1..=10_000)?,
            on_unavailable: self.on_unavailable,
            replicas_hint: within("fleet.replicas_hint", self.replicas_hint, 1..=1_000)?,
        })
    }
}

fn read_file(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|error| invalid(key, format!("{}: {error}", path.display())))
}

/// A file's content without the line end editors and `echo` add.
fn trim_newline(bytes: &[u8]) -> &[u8] {
    bytes
        .strip_suffix(b"\r\n")
        .or_else(|| bytes.strip_suffix(b"\n"))
        .unwrap_or(bytes)
}

/// Reads and parses a TOML file; either failure names the file.
pub(super) fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

fn within<T: PartialOrd + std::fmt::Display>(
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
