use super::*;

/// `serve`'s defaults (the flags themselves are `cli`'s tests), with or without `--local`.
fn flags(local: bool) -> Flags {
    Flags {
        listen: "127.0.0.1:50051".parse().unwrap(),
        health_listen: None,
        local,
        config: None,
        redis_url: None,
    }
}

fn load_with(local: bool, toml: &str) -> Result<Config, ConfigError> {
    let file = FileConfig::parse(toml).map_err(|source| ConfigError::Parse {
        path: "test.toml".into(),
        source: Box::new(source),
    })?;
    Config::from_parts(&flags(local), file)
}

/// A file with the given text, run without authentication (these tests are about the rest).
fn load(toml: &str) -> Result<Config, ConfigError> {
    load_with(false, &format!("{toml}\n[auth]\nmode = \"none\"\n"))
}

const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

#[test]
fn authentication_must_be_chosen_outside_local_mode() {
    let error = load_with(false, "").unwrap_err().to_string();
    assert!(error.contains("auth.mode"), "{error}");
    let local = load_with(true, "").unwrap();
    assert_eq!(local.access.mode, AuthMode::None);
    let none = load_with(false, "[auth]\nmode = \"none\"\n").unwrap();
    assert_eq!(none.access.mode, AuthMode::None);
}

#[test]
fn token_callers_are_read() {
    let config = load_with(
        false,
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
    let caller =
        |body: &str| format!("[auth]\nmode = \"token\"\n[[callers]]\nname = \"billing\"\n{body}");
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
        let message = load_with(false, &toml).unwrap_err().to_string();
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
    let config = load_with(false, &toml).unwrap();
    assert!(config.access.callers[0].token_sha256.is_some());
    std::fs::write(&tokens, format!("stranger = \"{HASH}\"\n")).unwrap();
    let error = load_with(false, &toml).unwrap_err().to_string();
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
        Some(Duration::from_secs(1800)),
        "half an hour by default"
    );
    assert_eq!(
        load("[server]\nmax_connection_age_secs = 0\n")
            .unwrap()
            .server
            .max_connection_age,
        None,
        "0 keeps connections open"
    );
    assert!(
        load("[server]\nmax_connections = 10\nmax_connections_per_peer = 11\n")
            .unwrap_err()
            .to_string()
            .contains("server.max_connections_per_peer"),
        "a peer's share is within the cap"
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
            "[server]\nshutdown_grace_secs = 2\n",
            "server.shutdown_grace_secs",
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
fn fleet_settings_are_read_with_their_files() {
    let dir = std::env::temp_dir().join(format!("cg-fleet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, format!("{}\n", "s".repeat(32))).unwrap();
    let fleet = |body: &str| {
        format!(
            "[fleet]\nuser_key_secret_file = {:?}\n{body}",
            secret.display().to_string()
        )
    };
    let config = load(&fleet("redis_url = \"redis://127.0.0.1:6379/0\"\n")).unwrap();
    let settings = config.fleet.unwrap();
    assert_eq!(settings.key_prefix, "cognito-gateway");
    assert_eq!(settings.timeout, Duration::from_millis(50));
    assert_eq!(settings.on_unavailable, OnUnavailable::Local);
    assert_eq!(settings.replicas_hint, 2);
    // The secret's trailing newline is not part of it; a secret is never printed.
    let same = {
        std::fs::write(&secret, "s".repeat(32)).unwrap();
        load(&fleet("redis_url = \"redis://127.0.0.1:6379/0\"\n"))
            .unwrap()
            .fleet
            .unwrap()
    };
    assert_eq!(same.user_key_secret, settings.user_key_secret);
    let printed = format!("{settings:?}");
    assert!(
        !printed.contains("127.0.0.1") && !printed.contains("secret"),
        "{printed}"
    );
    // The environment's URL wins.
    let mut with_env = flags(false);
    with_env.redis_url = Some("rediss://cache.example:6380".into());
    let file = FileConfig::parse(&format!(
        "{}[auth]\nmode = \"none\"\n",
        fleet("redis_url = \"redis://127.0.0.1:6379/0\"\n")
    ))
    .unwrap();
    let config = Config::from_parts(&with_env, file).unwrap();
    assert_eq!(
        config.fleet.unwrap().redis_url,
        "rediss://cache.example:6380"
    );

    let cases = [
        (fleet(""), "fleet.redis_url"),
        (fleet("redis_url = \"http://x\"\n"), "fleet.redis_url"),
        (
            fleet("redis_url = \"redis://x\"\nkey_prefix = \"a:b\"\n"),
            "fleet.key_prefix",
        ),
        (
            fleet("redis_url = \"redis://x\"\non_unavailable = \"maybe\"\n"),
            "on_unavailable",
        ),
        (
            fleet("redis_url = \"redis://x\"\nredis_password_file = \"/nonexistent\"\n"),
            "fleet.redis_password_file",
        ),
        (
            fleet("redis_url = \"redis://x\"\nredis_ca_file = {:?}\n")
                .replace("{:?}", &format!("{:?}", secret.display().to_string())),
            "fleet.redis_ca_file",
        ),
        (
            "[fleet]\nredis_url = \"redis://x\"\nuser_key_secret_file = \"/nonexistent\"\n"
                .to_owned(),
            "fleet.user_key_secret_file",
        ),
        (
            "[limits]\nrequest_id_ttl_secs = 0\n".to_owned(),
            "limits.request_id_ttl_secs",
        ),
        (
            "[limits]\nuser_identity = \"email\"\n".to_owned(),
            "user_identity",
        ),
    ];
    for (toml, key) in cases {
        let message = load(&toml).unwrap_err().to_string();
        assert!(
            message.contains(key),
            "{message:?} should name {key}\n{toml}"
        );
    }
    std::fs::write(&secret, "short").unwrap();
    let message = load(&fleet("redis_url = \"redis://x\"\n"))
        .unwrap_err()
        .to_string();
    assert!(message.contains("at least 32"), "{message}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The shipped schema is what `config-schema` prints today: a type changed without regenerating it
/// fails here.
#[test]
fn the_committed_json_schema_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.schema.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == json_schema(),
        "docs/config.schema.json is stale; regenerate it: cargo run -- config-schema > docs/config.schema.json"
    );
}

/// Every table of the schema refuses unknown keys, as serde does (`deny_unknown_fields`), and the
/// keys serde cannot do without are required.
#[test]
fn the_json_schema_refuses_what_serde_refuses() {
    fn tables<'a>(value: &'a serde_json::Value, found: &mut Vec<&'a serde_json::Value>) {
        match value {
            serde_json::Value::Object(map) => {
                if map.contains_key("properties") {
                    found.push(value);
                }
                map.values().for_each(|v| tables(v, found));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| tables(v, found)),
            _ => {}
        }
    }
    let schema: serde_json::Value = serde_json::from_str(&json_schema()).unwrap();
    let mut found = Vec::new();
    tables(&schema, &mut found);
    // The file, [server], [cognito], [auth], [auth.jwt], [auth.mtls], [[callers]], [limits], [fleet].
    assert_eq!(found.len(), 9, "{schema:#}");
    for table in &found {
        assert_eq!(table["additionalProperties"], false, "{table:#}");
    }
    let required = |name: &str| schema["$defs"][name]["required"].clone();
    assert_eq!(required("FileAuth"), serde_json::json!(["mode"]));
    assert_eq!(
        required("FileFleet"),
        serde_json::json!(["user_key_secret_file"])
    );
    assert_eq!(required("FileServer"), serde_json::Value::Null);
    // The file itself: the same defaults serde applies to a file with nothing in it.
    assert!(FileConfig::parse("").is_ok());
    assert_eq!(schema["required"], serde_json::Value::Null);
}
