//! The embedded local Cognito behind `serve --local`: an in-memory user pool that speaks Cognito's
//! JSON 1.1 wire protocol on loopback, so the gateway runs the very same SDK path as in production.
//! It models `AdminResetUserPassword` the way Cognito (and moto's model of it) does:
//!
//! | user state | answer |
//! |---|---|
//! | unknown pool | `ResourceNotFoundException` |
//! | unknown user | `UserNotFoundException` |
//! | disabled | `NotAuthorizedException` "User is disabled." |
//! | already `RESET_REQUIRED` | OK, no change |
//! | not `CONFIRMED` | `NotAuthorizedException` "User password cannot be reset in the current state." |
//! | no verified email or phone | `InvalidParameterException` |
//! | otherwise | OK, user becomes `RESET_REQUIRED` |
//!
//! It also answers `DescribeUserPool` (the demo pool's usernames are case-insensitive, as the
//! console has made them since 2020) and `AdminGetUser` (each user has a `sub` and an e-mail alias),
//! which the gateway asks to know who is the same person.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use serde::Deserialize;
use tokio::{net::TcpListener, task::JoinHandle};

/// The demo pool's id. Its region prefix, `local-1`, is no AWS region, so even a misrouted request
/// could not reach AWS.
pub const DEMO_POOL_ID: &str = "local-1_DemoPool";

/// A user's account status, as Cognito names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserStatus {
    /// Signed up and confirmed: can be reset.
    Confirmed,
    /// Signed up, not confirmed yet.
    Unconfirmed,
    /// Created by an admin, first password not changed yet.
    ForceChangePassword,
    /// Reset: must set a new password at next sign-in.
    ResetRequired,
}

impl UserStatus {
    /// Cognito's name for the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Confirmed => "CONFIRMED",
            Self::Unconfirmed => "UNCONFIRMED",
            Self::ForceChangePassword => "FORCE_CHANGE_PASSWORD",
            Self::ResetRequired => "RESET_REQUIRED",
        }
    }
}

/// One seeded demo user, with what resetting it does.
#[derive(Debug, Clone, Copy)]
pub struct DemoUser {
    /// The username.
    pub username: &'static str,
    /// What `reset` answers for this user.
    pub expected: &'static str,
    enabled: bool,
    status: UserStatus,
    verified_contact: bool,
}

/// The seeded users of [`DEMO_POOL_ID`].
pub const DEMO_USERS: &[DemoUser] = &[
    DemoUser {
        username: "alice",
        expected: "OK: reset, status becomes RESET_REQUIRED (a repeat is OK and changes nothing)",
        enabled: true,
        status: UserStatus::Confirmed,
        verified_contact: true,
    },
    DemoUser {
        username: "bob-disabled",
        expected: "FAILED_PRECONDITION USER_NOT_RESETTABLE (user is disabled)",
        enabled: false,
        status: UserStatus::Confirmed,
        verified_contact: true,
    },
    DemoUser {
        username: "carol-unconfirmed",
        expected: "FAILED_PRECONDITION USER_NOT_RESETTABLE (not confirmed)",
        enabled: true,
        status: UserStatus::Unconfirmed,
        verified_contact: true,
    },
    DemoUser {
        username: "dave-no-contact",
        expected: "FAILED_PRECONDITION NO_VERIFIED_CONTACT (no verified email or phone)",
        enabled: true,
        status: UserStatus::Confirmed,
        verified_contact: false,
    },
];

#[derive(Debug, Clone)]
struct User {
    username: String,
    sub: String,
    email: String,
    enabled: bool,
    status: UserStatus,
    verified_contact: bool,
}

#[derive(Debug, Default)]
struct Pool {
    /// As Cognito's `UsernameConfiguration.CaseSensitive`.
    case_sensitive: bool,
    users: Vec<User>,
}

impl Pool {
    /// The user a username or e-mail alias names, compared as the pool compares.
    fn find(&mut self, name: &str) -> Option<&mut User> {
        let case_sensitive = self.case_sensitive;
        let same = |a: &str, b: &str| {
            if case_sensitive {
                a == b
            } else {
                a.to_lowercase() == b.to_lowercase()
            }
        };
        self.users
            .iter_mut()
            .find(|user| same(&user.username, name) || same(&user.email, name))
    }
}

#[derive(Debug, Default)]
struct Pools {
    pools: HashMap<String, Pool>,
}

#[derive(Debug, Default)]
struct Shared {
    pools: Mutex<Pools>,
    requests: AtomicU64,
    resets: AtomicU64,
}

/// A running local Cognito. Dropping it stops the server.
#[derive(Debug)]
pub struct LocalCognito {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for LocalCognito {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LocalCognito {
    /// Starts on a free loopback port, seeded with [`DEMO_POOL_ID`] and [`DEMO_USERS`].
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let users = DEMO_USERS
            .iter()
            .enumerate()
            .map(|(i, u)| User {
                username: u.username.to_owned(),
                sub: format!("00000000-0000-4000-8000-{:012}", i + 1),
                email: format!("{}@example.com", u.username),
                enabled: u.enabled,
                status: u.status,
                verified_contact: u.verified_contact,
            })
            .collect();
        let pool = Pool {
            case_sensitive: false,
            users,
        };
        let shared = Arc::new(Shared::default());
        lock(&shared.pools)
            .pools
            .insert(DEMO_POOL_ID.to_owned(), pool);
        let app = Router::new()
            .route("/", post(handle))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "local Cognito stopped");
            }
        });
        Ok(Self { addr, shared, task })
    }

    /// The endpoint URL to point the SDK at.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A user's status, for tests and demos.
    pub fn user_status(&self, pool: &str, username: &str) -> Option<UserStatus> {
        lock(&self.shared.pools)
            .pools
            .get_mut(pool)?
            .find(username)
            .map(|u| u.status)
    }

    /// How many requests reached this Cognito.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// How many of them were resets (`AdminResetUserPassword`): the sends that e-mail someone.
    pub fn resets(&self) -> u64 {
        self.shared.resets.load(Ordering::Relaxed)
    }
}

fn lock(pools: &Mutex<Pools>) -> std::sync::MutexGuard<'_, Pools> {
    // Every critical section leaves the map consistent, so a poisoned lock is still usable.
    pools.lock().unwrap_or_else(|poison| poison.into_inner())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UserBody {
    user_pool_id: String,
    username: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PoolBody {
    user_pool_id: String,
}

/// A Cognito error: its exception name and message.
type Failure = (&'static str, String);

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(body).map_err(|_| {
        (
            "SerializationException",
            "could not read the request body".to_owned(),
        )
    })
}

async fn handle(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let n = shared.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let request_id = format!("local-{n:012}");
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let result = match target.strip_prefix("AWSCognitoIdentityProviderService.") {
        Some("AdminResetUserPassword") => {
            shared.resets.fetch_add(1, Ordering::Relaxed);
            parse(&body).and_then(|body| reset(&shared, &body).map(|()| "{}".to_owned()))
        }
        Some("AdminGetUser") => parse(&body).and_then(|body| get_user(&shared, &body)),
        Some("DescribeUserPool") => parse(&body).and_then(|body| describe_pool(&shared, &body)),
        _ => Err((
            "UnknownOperationException",
            "the local Cognito implements AdminResetUserPassword, AdminGetUser and DescribeUserPool only"
                .to_owned(),
        )),
    };
    let (status, body, error_type) = match result {
        Ok(body) => (StatusCode::OK, body, None),
        Err((code, message)) => {
            let body = serde_json::json!({ "__type": code, "message": message }).to_string();
            (StatusCode::BAD_REQUEST, body, Some(code))
        }
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        headers.insert("x-amzn-requestid", id);
    }
    if let Some(code) = error_type {
        headers.insert("x-amzn-errortype", HeaderValue::from_static(code));
    }
    response
}

fn pool<'a>(pools: &'a mut Pools, id: &str) -> Result<&'a mut Pool, Failure> {
    pools.pools.get_mut(id).ok_or_else(|| {
        (
            "ResourceNotFoundException",
            format!("User pool {id} does not exist."),
        )
    })
}

fn user<'a>(pools: &'a mut Pools, body: &UserBody) -> Result<&'a mut User, Failure> {
    pool(pools, &body.user_pool_id)?
        .find(&body.username)
        .ok_or_else(|| ("UserNotFoundException", "User does not exist.".to_owned()))
}

fn describe_pool(shared: &Shared, body: &PoolBody) -> Result<String, Failure> {
    let mut pools = lock(&shared.pools);
    let pool = pool(&mut pools, &body.user_pool_id)?;
    Ok(serde_json::json!({
        "UserPool": {
            "Id": body.user_pool_id,
            "UsernameConfiguration": { "CaseSensitive": pool.case_sensitive },
        }
    })
    .to_string())
}

fn get_user(shared: &Shared, body: &UserBody) -> Result<String, Failure> {
    let mut pools = lock(&shared.pools);
    let user = user(&mut pools, body)?;
    Ok(serde_json::json!({
        "Username": user.username,
        "Enabled": user.enabled,
        "UserStatus": user.status.as_str(),
        "UserAttributes": [
            { "Name": "sub", "Value": user.sub },
            { "Name": "email", "Value": user.email },
        ],
    })
    .to_string())
}

fn reset(shared: &Shared, body: &UserBody) -> Result<(), Failure> {
    let mut pools = lock(&shared.pools);
    let user = user(&mut pools, body)?;
    if !user.enabled {
        return Err(("NotAuthorizedException", "User is disabled.".to_owned()));
    }
    match user.status {
        UserStatus::ResetRequired => return Ok(()),
        UserStatus::Confirmed => {}
        UserStatus::Unconfirmed | UserStatus::ForceChangePassword => {
            return Err((
                "NotAuthorizedException",
                "User password cannot be reset in the current state.".to_owned(),
            ));
        }
    }
    if !user.verified_contact {
        return Err((
            "InvalidParameterException",
            "Cannot reset password for the user as there is no registered/verified email or phone_number".to_owned(),
        ));
    }
    user.status = UserStatus::ResetRequired;
    Ok(())
}
