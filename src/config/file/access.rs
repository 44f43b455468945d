//! `[auth]` and `[[callers]]` as written (and the token file they may name), validated into
//! [`AccessConfig`].

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use schemars::JsonSchema;
use serde::Deserialize;

use super::{read_toml, secs, within};
use crate::{
    config::{
        AccessConfig, AuthMode, CallerConfig, ConfigError, JwksSource, JwtConfig, LimitSettings,
        MtlsConfig, invalid,
    },
    domain::UserPoolId,
};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAuth {
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

#[derive(Debug, Deserialize, JsonSchema)]
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

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FileMtls {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: PathBuf,
    #[serde(default = "default_handshake_timeout_secs")]
    handshake_timeout_secs: u64,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct FileCaller {
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

/// `[auth]` and `[[callers]]`, validated; `limits` gives the callers' default rate and burst.
pub(super) fn access(
    auth: Option<FileAuth>,
    callers: Vec<FileCaller>,
    limits: &LimitSettings,
    local: bool,
) -> Result<AccessConfig, ConfigError> {
    let Some(auth) = auth else {
        if local {
            return Ok(AccessConfig::none());
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
                    UserPoolId::parse(pool.clone()).map_err(|v| {
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
    Ok(AccessConfig {
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

/// The token file: `name = "<sha256 hex>"` lines (TOML), e.g. a Kubernetes Secret's key.
fn read_token_file(path: &Path) -> Result<HashMap<String, [u8; 32]>, ConfigError> {
    read_toml::<HashMap<String, String>>(path)?
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

fn default_reload_interval_secs() -> u64 {
    5
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

fn default_handshake_timeout_secs() -> u64 {
    10
}
