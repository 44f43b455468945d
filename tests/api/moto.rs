//! The gateway against moto's Cognito (`moto_server`), a third-party model of Cognito's behaviour:
//! real server on port 0, real tonic client, real AWS SDK, real HTTP to a separate process.
//!
//! Each test starts its own `moto_server` (startup takes well under a second) and seeds it with
//! boto3 through `tests/moto/seed.py`, so tests share no state and run in parallel. Seeding and the
//! after-the-fact status checks go through boto3, not the gateway's SDK, so the code under test never
//! checks its own work.
//!
//! moto is required: CI installs it, and a missing `moto_server` or `python3` fails the test rather
//! than skipping it.

use std::{
    collections::BTreeSet,
    io::ErrorKind,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde::Deserialize;
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::{
    helpers::{details, error_info},
    kit::app::{TestApp, spawn_app},
};

/// How long `moto_server` may take to listen. Generous: the suite runs on busy 2-core CI machines.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A pool id of the right shape, in the right region, that moto does not have.
const UNKNOWN_POOL: &str = "us-east-1_DoesNotExist1";

/// A running `moto_server`. Dropping it kills the process, also when the test panics.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        // Reap it too, or it lingers as a zombie until the test binary exits.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts `moto_server` on a free loopback port and waits until it accepts connections.
    async fn start() -> Self {
        let addr = free_port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &addr.port().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| match err.kind() {
                ErrorKind::NotFound => panic!(
                    "moto_server is not on PATH; these tests need it: pip install 'moto[server]==5.2.1' boto3"
                ),
                _ => panic!("could not start moto_server: {err}"),
            });
        // Guard it from here on, so that a failed wait below still kills the process.
        let mut moto = Self {
            child,
            endpoint: format!("http://{addr}"),
        };
        moto.wait_until_listening(addr).await;
        moto
    }

    /// Polls a TCP connect. Also watches the child: if it dies (port taken, broken install), fail at
    /// once with that rather than after the whole timeout; this is why `helpers::eventually` is not
    /// used here.
    async fn wait_until_listening(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(exit) = self.child.try_wait().expect("the child can be polled") {
                panic!("moto_server exited ({exit}) before listening on {addr}");
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on {addr} within {STARTUP_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs `tests/moto/seed.py ENDPOINT ARGS...` and returns its stdout. Fails the test, with the
    /// script's stderr, if it fails.
    async fn script(&self, args: &[&str]) -> String {
        let script: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "moto", "seed.py"]
            .iter()
            .collect();
        let mut command = Command::new("python3");
        command
            .arg(&script)
            .arg(&self.endpoint)
            .args(args)
            // Fake credentials for boto3, on the child only: the test process's environment is
            // shared by every test in the binary. The gateway has its own fixed ones.
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_SESSION_TOKEN", "testing")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            // Usernames pass through argv; UTF-8 whatever the machine's locale.
            .env("PYTHONUTF8", "1")
            .stdin(Stdio::null());
        // A blocking wait; keep it off the runtime thread that also runs the gateway.
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("the blocking task does not panic")
            .unwrap_or_else(|err| panic!("could not run python3 {}: {err}", script.display()));
        assert!(
            output.status.success(),
            "seed.py {args:?} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("seed.py prints UTF-8")
    }

    /// Creates a user pool with one user per state (see `seed.py`).
    async fn seed(&self) -> Seeded {
        let out = self.script(&["seed"]).await;
        serde_json::from_str(&out).unwrap_or_else(|err| panic!("seed.py printed {out:?}: {err}"))
    }

    /// The user's `UserStatus`, as moto reports it to boto3.
    async fn user_status(&self, pool_id: &str, username: &str) -> String {
        self.script(&["status", pool_id, username])
            .await
            .trim()
            .to_owned()
    }
}

/// A port that was free a moment ago (moto's CLI cannot report a port it chose itself short of parsing
/// its log, which goes to /dev/null). Something else may bind it before moto does: moto then exits
/// ("Address already in use"), which [`Moto::wait_until_listening`] reports, unless the other
/// listener answers first, in which case seeding fails against it. Rare (a random ephemeral port,
/// taken within moto's startup time), and loud rather than silent either way.
fn free_port() -> SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind a loopback port");
    listener
        .local_addr()
        .expect("a bound listener has an address")
}

/// What `seed.py seed` prints.
#[derive(Debug, Deserialize)]
struct Seeded {
    pool_id: String,
    users: Users,
}

/// The seeded usernames, by state.
#[derive(Debug, Deserialize)]
struct Users {
    /// CONFIRMED, enabled, verified email.
    resettable: String,
    /// CONFIRMED with verified email, then disabled.
    disabled: String,
    /// FORCE_CHANGE_PASSWORD: created by an admin, never confirmed.
    unconfirmed: String,
    /// CONFIRMED, email not verified, no phone.
    no_verified_contact: String,
    /// CONFIRMED, verified email, a non-ASCII username.
    unicode: String,
}

/// moto, seeded, with the gateway in front of it. Keep the `Moto` bound (`_moto`, not `_`): dropping
/// it kills the server.
async fn seeded_gateway() -> (Moto, Seeded, TestApp) {
    let moto = Moto::start().await;
    let seeded = moto.seed().await;
    let app = spawn_app(&moto.endpoint).await;
    (moto, seeded, app)
}

/// A Cognito error as the table in `src/status.rs` turns it out, with what every such status has:
/// Cognito's domain, its exception name, the pool id and Cognito's request id, and nothing else in
/// the metadata (in particular, never the username).
#[track_caller]
fn assert_cognito_error(status: &Status, code: Code, reason: &str, exception: &str, pool: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    let info = error_info(status);
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(info.domain, "cognito-idp.amazonaws.com");
    let keys: BTreeSet<_> = info.metadata.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["awsRequestId", "exception", "userPoolId"]),
        "exactly these metadata keys: {:?}",
        info.metadata
    );
    assert_eq!(info.metadata["exception"], exception);
    assert_eq!(info.metadata["userPoolId"], pool);
    // moto sends an x-amzn-RequestId on errors too; the status carries it twice.
    let request_id = &info.metadata["awsRequestId"];
    assert!(!request_id.is_empty(), "moto's request id is empty");
    let details = details(status);
    let request_info = details.request_info().expect("a RequestInfo detail");
    assert_eq!(&request_info.request_id, request_id);
}

#[tokio::test]
async fn reset_of_confirmed_user_succeeds_and_requires_new_password() {
    let (moto, seeded, app) = seeded_gateway().await;
    let user = &seeded.users.resettable;

    app.reset(&seeded.pool_id, user).await.expect("OK");

    assert_eq!(
        moto.user_status(&seeded.pool_id, user).await,
        "RESET_REQUIRED"
    );
}

#[tokio::test]
async fn reset_of_unicode_username_succeeds_and_requires_new_password() {
    let (moto, seeded, app) = seeded_gateway().await;
    let user = &seeded.users.unicode;
    assert!(!user.is_ascii(), "the test needs a non-ASCII username");

    app.reset(&seeded.pool_id, user).await.expect("OK");

    // moto found the user by this exact name, so the bytes survived gRPC, validation and the SDK.
    assert_eq!(
        moto.user_status(&seeded.pool_id, user).await,
        "RESET_REQUIRED"
    );
}

#[tokio::test]
async fn ok_reset_returns_motos_request_id() {
    let (_moto, seeded, app) = seeded_gateway().await;
    let user = &seeded.users.resettable;

    let first = app.reset(&seeded.pool_id, user).await.expect("OK");
    // A repeat on a RESET_REQUIRED user is OK too (moto, like Cognito, changes nothing).
    let second = app
        .reset(&seeded.pool_id, user)
        .await
        .expect("a repeat is OK");

    // moto sends a random x-amzn-RequestId with every reply; different ids show that it is moto's,
    // per request, and not a constant filled in somewhere on the way.
    assert!(
        !first.cognito_request_id.is_empty(),
        "no request id: {first:?}"
    );
    assert!(
        !second.cognito_request_id.is_empty(),
        "no request id: {second:?}"
    );
    assert_ne!(first.cognito_request_id, second.cognito_request_id);
}

#[tokio::test]
async fn unknown_user_is_user_not_found() {
    let (_moto, seeded, app) = seeded_gateway().await;

    let status = app
        .reset(&seeded.pool_id, "nobody-by-this-name")
        .await
        .unwrap_err();

    assert_cognito_error(
        &status,
        Code::NotFound,
        "USER_NOT_FOUND",
        "UserNotFoundException",
        &seeded.pool_id,
    );
    // The user is named by its pool only: the username is sensitive.
    let details = details(&status);
    let resource = details.resource_info().expect("a ResourceInfo detail");
    assert_eq!(resource.resource_type, "cognito-idp.amazonaws.com/User");
    assert_eq!(resource.resource_name, "");
    assert_eq!(resource.owner, seeded.pool_id);
}

#[tokio::test]
async fn unknown_pool_is_user_pool_not_found() {
    // No seeding: moto starts with no pools at all.
    let moto = Moto::start().await;
    let app = spawn_app(&moto.endpoint).await;

    let status = app.reset(UNKNOWN_POOL, "alice").await.unwrap_err();

    assert_cognito_error(
        &status,
        Code::NotFound,
        "USER_POOL_NOT_FOUND",
        "ResourceNotFoundException",
        UNKNOWN_POOL,
    );
    let details = details(&status);
    let resource = details.resource_info().expect("a ResourceInfo detail");
    assert_eq!(resource.resource_type, "cognito-idp.amazonaws.com/UserPool");
    assert_eq!(resource.resource_name, UNKNOWN_POOL);
}

#[tokio::test]
async fn disabled_user_is_not_resettable() {
    let (moto, seeded, app) = seeded_gateway().await;
    let user = &seeded.users.disabled;

    let status = app.reset(&seeded.pool_id, user).await.unwrap_err();

    assert_cognito_error(
        &status,
        Code::FailedPrecondition,
        "USER_NOT_RESETTABLE",
        "NotAuthorizedException",
        &seeded.pool_id,
    );
    assert_eq!(moto.user_status(&seeded.pool_id, user).await, "CONFIRMED");
}

#[tokio::test]
async fn unconfirmed_user_is_not_resettable() {
    let (moto, seeded, app) = seeded_gateway().await;
    let user = &seeded.users.unconfirmed;

    let status = app.reset(&seeded.pool_id, user).await.unwrap_err();

    assert_cognito_error(
        &status,
        Code::FailedPrecondition,
        "USER_NOT_RESETTABLE",
        "NotAuthorizedException",
        &seeded.pool_id,
    );
    assert_eq!(
        moto.user_status(&seeded.pool_id, user).await,
        "FORCE_CHANGE_PASSWORD"
    );
}

#[tokio::test]
async fn user_without_verified_contact_has_no_verified_contact() {
    let (moto, seeded, app) = seeded_gateway().await;
    let user = &seeded.users.no_verified_contact;

    let status = app.reset(&seeded.pool_id, user).await.unwrap_err();

    // Cognito says this with an InvalidParameterException; the table reads its message.
    assert_cognito_error(
        &status,
        Code::FailedPrecondition,
        "NO_VERIFIED_CONTACT",
        "InvalidParameterException",
        &seeded.pool_id,
    );
    let details = details(&status);
    let violations = &details
        .precondition_failure()
        .expect("a PreconditionFailure detail")
        .violations;
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].r#type, "USER_CONTACT");
    assert_eq!(violations[0].subject, "user");
    assert_eq!(moto.user_status(&seeded.pool_id, user).await, "CONFIRMED");
}
