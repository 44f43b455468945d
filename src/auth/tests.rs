use std::time::Duration;

use super::*;

fn sha(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn access(callers: Vec<CallerConfig>) -> AccessConfig {
    AccessConfig {
        mode: AuthMode::Token,
        callers,
        ..AccessConfig::none()
    }
}

fn caller_config(name: &str, token: &str, pools: Option<&[&str]>) -> CallerConfig {
    CallerConfig {
        name: name.into(),
        token_sha256: Some(sha(token)),
        user_pools: pools.map(|p| p.iter().map(|s| (*s).to_owned()).collect()),
        rate_per_second: 5,
        burst: 10,
    }
}

/// The configuration `serve --config path` starts with.
fn from_file(path: &std::path::Path) -> Config {
    Config::load(crate::config::Flags {
        listen: "127.0.0.1:0".parse().unwrap(),
        health_listen: None,
        local: false,
        config: Some(path.to_owned()),
        redis_url: None,
    })
    .unwrap()
}

fn policy() -> Policy {
    Policy::build(
        &access(vec![
            caller_config("billing", "tok-billing", Some(&["us-east-1_A"])),
            caller_config("ops", "tok-ops", None),
        ]),
        &LimitSettings::default(),
        None,
    )
}

#[test]
fn tokens_identify_their_caller() {
    let policy = policy();
    let billing = policy.authenticate(Some(b"Bearer tok-billing")).unwrap();
    assert_eq!(&*billing.name, "billing");
    assert_eq!(
        &*policy.authenticate(Some(b"bearer  tok-ops ")).unwrap().name,
        "ops"
    );
}

#[test]
fn wrong_missing_and_malformed_tokens_fail() {
    let policy = policy();
    assert_eq!(
        policy.authenticate(None).unwrap_err(),
        "no authorization header"
    );
    assert_eq!(
        policy.authenticate(Some(b"Bearer nope")).unwrap_err(),
        "unknown token"
    );
    assert_eq!(
        policy.authenticate(Some(b"Basic dG9r")).unwrap_err(),
        "authorization is not a bearer token"
    );
    assert_eq!(
        policy.authenticate(Some(b"Bearer ")).unwrap_err(),
        "authorization is not a bearer token"
    );
    assert_eq!(
        policy.authenticate(Some(b"tok-ops")).unwrap_err(),
        "authorization is not a bearer token"
    );
}

#[test]
fn pools_are_deny_by_default() {
    let policy = policy();
    let billing = policy.authenticate(Some(b"Bearer tok-billing")).unwrap();
    assert!(billing.may_reset_in("us-east-1_A"));
    assert!(!billing.may_reset_in("us-east-1_B"));
    let ops = policy.authenticate(Some(b"Bearer tok-ops")).unwrap();
    assert!(ops.may_reset_in("anything_x"));
}

#[test]
fn without_auth_everyone_is_anonymous() {
    let policy = Policy::build(&AccessConfig::none(), &LimitSettings::default(), None);
    let caller = policy.authenticate(None).unwrap();
    assert_eq!(&*caller.name, ANONYMOUS);
    assert!(caller.may_reset_in("us-east-1_A"));
}

#[test]
fn a_rebuild_keeps_unchanged_buckets_and_replaces_changed_ones() {
    let old = policy();
    let mut changed = caller_config("ops", "tok-ops", None);
    changed.rate_per_second = 1;
    let new = Policy::build(
        &access(vec![
            caller_config("billing", "tok-billing", Some(&["us-east-1_A"])),
            changed,
        ]),
        &LimitSettings::default(),
        Some(&old),
    );
    let rate = |p: &Policy, n: &str| Arc::clone(&p.named(n).unwrap().rate);
    assert!(Arc::ptr_eq(&rate(&old, "billing"), &rate(&new, "billing")));
    assert!(!Arc::ptr_eq(&rate(&old, "ops"), &rate(&new, "ops")));
}

#[tokio::test]
async fn files_are_still_watched_when_no_signal_can_come() {
    let dir = std::env::temp_dir().join(format!("cg-policy-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    let with_token = |token: &str| {
        format!(
            "[auth]\nmode = \"token\"\nreload_interval_secs = 1\n[[callers]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\nuser_pools = [\"*\"]\n",
            hex::encode(sha(token))
        )
    };
    std::fs::write(&path, with_token("tok-old")).unwrap();
    let access = Arc::new(Access::new(&from_file(&path)));
    // The SIGHUP side is gone (as when the signal cannot be registered).
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    drop(sender);
    tokio::spawn(Arc::clone(&access).watch(receiver));
    // Twice: the watcher must go on after it has seen the signals end.
    for token in ["tok-new", "tok-newer"] {
        std::fs::write(&path, with_token(token)).unwrap();
        let header = format!("Bearer {token}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while access
            .policy()
            .authenticate(Some(header.as_bytes()))
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the file with {token} was never read"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_file_is_refused_and_the_old_policy_stays() {
    let dir = std::env::temp_dir().join(format!("cg-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    let good = format!(
        "[auth]\nmode = \"token\"\n[[callers]]\nname = \"ops\"\ntoken_sha256 = \"{}\"\nuser_pools = [\"*\"]\n",
        hex::encode(sha("tok-ops"))
    );
    std::fs::write(&path, &good).unwrap();
    let access = Access::new(&from_file(&path));
    assert!(
        access
            .policy()
            .authenticate(Some(b"Bearer tok-ops"))
            .is_ok()
    );

    std::fs::write(
        &path,
        "[auth]\nmode = \"token\"\n[[callers]]\nname = \"ops\"\n",
    )
    .unwrap();
    let error = access.reload().unwrap_err().to_string();
    assert!(error.contains("callers[ops].token_sha256"), "{error}");
    assert!(
        access
            .policy()
            .authenticate(Some(b"Bearer tok-ops"))
            .is_ok(),
        "old policy kept"
    );

    std::fs::write(&path, "[auth]\nmode = \"none\"\n").unwrap();
    let error = access.reload().unwrap_err().to_string();
    assert!(error.contains("restart"), "{error}");
    assert!(
        access.policy().authenticate(None).is_err(),
        "authentication stays on"
    );

    std::fs::write(
        &path,
        good.replace(&hex::encode(sha("tok-ops")), &hex::encode(sha("tok-new"))),
    )
    .unwrap();
    access.reload().unwrap();
    assert!(
        access
            .policy()
            .authenticate(Some(b"Bearer tok-ops"))
            .is_err()
    );

    // Startup would refuse a bad [server] (or any section): so does a reload, callers and all.
    let with_caller = |extra: &str| {
        format!(
            "{}[[callers]]\nname = \"intruder\"\ntoken_sha256 = \"{}\"\nuser_pools = [\"*\"]\n{extra}",
            good.replace(&hex::encode(sha("tok-ops")), &hex::encode(sha("tok-new"))),
            hex::encode(sha("tok-intruder"))
        )
    };
    std::fs::write(&path, with_caller("[server]\nmax_concurrent_streams = 0\n")).unwrap();
    let error = access.reload().unwrap_err().to_string();
    assert!(error.contains("server.max_concurrent_streams"), "{error}");
    assert!(
        access
            .policy()
            .authenticate(Some(b"Bearer tok-intruder"))
            .is_err(),
        "nothing of a refused file is admitted"
    );
    // A valid change of a setting that needs a restart: the callers reload, the rest waits.
    std::fs::write(
        &path,
        with_caller("[server]\nmax_concurrent_streams = 10\n"),
    )
    .unwrap();
    access.reload().unwrap();
    assert!(
        access
            .policy()
            .authenticate(Some(b"Bearer tok-intruder"))
            .is_ok()
    );
    assert_eq!(
        access
            .running
            .restart_needed(&access.running.reread().unwrap()),
        ["server"]
    );
    assert!(
        access
            .policy()
            .authenticate(Some(b"Bearer tok-new"))
            .is_ok()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn debug_shows_no_token_hash() {
    let policy = policy();
    let printed = format!("{policy:?}");
    assert!(!printed.contains("token"), "{printed}");
}
