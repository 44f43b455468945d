//! The Cognito backend: a narrow trait with the one operation the gateway uses, and its
//! implementation on the official AWS SDK.
//!
//! Two decisions live here:
//! - **Which region.** A user pool lives in one region and its id says which (`<region>_<id>`).
//!   Asking another region answers a misleading `ResourceNotFoundException`, so the region comes from
//!   the pool id and the SDK's region (`AWS_REGION`) is only a fallback. One client per region is
//!   built on first use and reused.
//! - **What may be retried.** Each send of `AdminResetUserPassword` may e-mail the user a new code,
//!   so [`SafeRetryClassifier`] retries only what certainly did not reach Cognito's business logic:
//!   throttling and failures to connect. Never HTTP 500, `LimitExceededException`, or a timeout
//!   after the request was written. A retry after throttling is another request against Cognito's
//!   quota, so it draws on the backend guard's budget like a call does, and is not made without it.

use std::{
    cell::Cell,
    collections::{BTreeSet, HashMap},
    future::Future,
    sync::{Arc, RwLock},
    time::Duration,
};

use aws_config::{
    BehaviorVersion, SdkConfig,
    default_provider::{credentials::DefaultCredentialsChain, token::DefaultTokenChain},
    environment::region::EnvironmentVariableRegionProvider,
    meta::region::RegionProviderChain,
    profile::ProfileFileRegionProvider,
};
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_cognitoidentityprovider::{
    Client,
    config::{
        Region,
        retry::{ClassifyRetry, RetryAction, RetryConfig},
        timeout::TimeoutConfig,
    },
    error::{ConnectorError, DisplayErrorContext, ProvideErrorMetadata, SdkError},
    operation::{RequestId, admin_reset_user_password::AdminResetUserPasswordError},
};
use aws_smithy_runtime_api::client::{
    dns::ResolveDnsError,
    interceptors::context::{
        Error as InterceptorError, FinalizerInterceptorContextMut, InterceptorContext,
    },
    orchestrator::OrchestratorError,
    retries::{RequestAttempts, classifiers::RetryClassifierPriority},
};
use tokio::time::Instant;

use crate::{
    config::CognitoSettings,
    domain::{self, ResetRequest, UserPoolId, Username},
    metrics::{cognito_attributes, metrics},
    rate::RateLimit,
};

/// The exceptions `AdminResetUserPassword` is documented to return (the SDK's typed variants).
pub const RESET_EXCEPTIONS: &[&str] = &[
    "InternalErrorException",
    "InvalidEmailRoleAccessPolicyException",
    "InvalidLambdaResponseException",
    "InvalidParameterException",
    "InvalidSmsRoleAccessPolicyException",
    "InvalidSmsRoleTrustRelationshipException",
    "LimitExceededException",
    "NotAuthorizedException",
    "OperationNotEnabledException",
    "ResourceNotFoundException",
    "TooManyRequestsException",
    "UnexpectedLambdaException",
    "UserLambdaValidationException",
    "UserNotFoundException",
];

/// AWS's exceptions that mean the gateway's own credentials or IAM policy are wrong: any AWS API
/// may return them.
pub const CREDENTIAL_EXCEPTIONS: &[&str] = &[
    "AccessDeniedException",
    "AccessDenied",
    "ExpiredTokenException",
    "ExpiredToken",
    "IncompleteSignature",
    "IncompleteSignatureException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "MissingAuthenticationToken",
    "MissingAuthenticationTokenException",
    "RequestExpired",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
];

/// Whether the backend knows `exception` by name ([`RESET_EXCEPTIONS`], [`CREDENTIAL_EXCEPTIONS`]):
/// metrics label only these, since Cognito's reply, or whatever stands in its place, may name
/// anything.
pub fn is_known_exception(exception: &str) -> bool {
    RESET_EXCEPTIONS.contains(&exception) || CREDENTIAL_EXCEPTIONS.contains(&exception)
}

/// What a successful reset tells the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResetOutcome {
    /// Cognito's `x-amzn-RequestId`, where it sent one.
    pub request_id: Option<String>,
}

/// An error Cognito itself returned: its exception name, message and request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CognitoFailure {
    /// The exception name, without namespace (`UserNotFoundException`); `""` when Cognito sent none.
    pub code: String,
    /// Cognito's message, which may quote the request; never logged at a level that leaks it.
    pub message: String,
    /// Cognito's `x-amzn-RequestId`.
    pub request_id: Option<String>,
    /// The HTTP status of the reply.
    pub http_status: u16,
}

/// Why a call to Cognito did not succeed. Sorting into these is the backend's job; turning them into
/// gRPC statuses is [`crate::status`]'s.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    /// Cognito answered with an error.
    #[error("Cognito returned {} (HTTP {}): {}", .0.code, .0.http_status, .0.message)]
    Cognito(CognitoFailure),
    /// No answer in time. The request may have reached Cognito.
    #[error("no answer from Cognito within {0:?}")]
    Timeout(Duration),
    /// Cognito could not be reached (connect refused, DNS, TLS): nothing was sent.
    #[error("Cognito unreachable: {0}")]
    Unreachable(String),
    /// The connection failed after the request was written: the reset may have happened.
    #[error("connection to Cognito lost: {0}")]
    ConnectionLost(String),
    /// The request could not be built: no credentials, no region, bad endpoint.
    #[error("Cognito client misconfigured: {0}")]
    Misconfigured(String),
    /// Cognito's reply could not be understood.
    #[error("unparseable reply from Cognito: {detail}")]
    BadResponse {
        /// The request id, where the reply had one.
        request_id: Option<String>,
        /// What went wrong.
        detail: String,
    },
    /// The pool's region is not one this gateway serves.
    #[error("region {region:?} is not served by this gateway: {why}")]
    RegionNotAllowed {
        /// The region derived from the pool id.
        region: String,
        /// Which rule refused it.
        why: String,
    },
}

impl BackendError {
    /// Cognito's request id, where Cognito answered.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Self::Cognito(CognitoFailure { request_id, .. })
            | Self::BadResponse { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    /// Whether the request may have reached Cognito and the reset happened, though no answer
    /// says so: HTTP 5xx (above all `InternalErrorException`), a timeout, a connection lost after
    /// the request was written. Such a reset must not be sent again (contract §3, §5).
    pub fn outcome_unknown(&self) -> bool {
        match self {
            Self::Cognito(failure) => failure.http_status >= 500,
            Self::Timeout(_) | Self::ConnectionLost(_) => true,
            _ => false,
        }
    }

    /// What metrics, spans and `ErrorInfo` call this failure: Cognito's exception name, or the
    /// gateway's name for what went wrong on the way.
    pub fn exception(&self) -> &str {
        match self {
            Self::Cognito(failure) if failure.code.is_empty() => "HttpError",
            Self::Cognito(failure) => &failure.code,
            Self::Timeout(_) => "Timeout",
            Self::Unreachable(_) => "Unreachable",
            Self::ConnectionLost(_) => "ConnectionLost",
            Self::Misconfigured(_) => "Misconfigured",
            Self::BadResponse { .. } => "BadResponse",
            Self::RegionNotAllowed { .. } => "RegionNotAllowed",
        }
    }

    /// The error with `request`'s username and metadata cut out of every text it carries. Applied
    /// where the call ran, with the request that was sent: callers sharing the call get (and log)
    /// this version, never another caller's metadata.
    #[must_use]
    pub fn scrubbed(self, request: &ResetRequest) -> Self {
        match self {
            Self::Cognito(failure) => Self::Cognito(CognitoFailure {
                message: request.scrub(&failure.message),
                ..failure
            }),
            Self::Unreachable(text) => Self::Unreachable(request.scrub(&text)),
            Self::ConnectionLost(text) => Self::ConnectionLost(request.scrub(&text)),
            Self::Misconfigured(text) => Self::Misconfigured(request.scrub(&text)),
            Self::BadResponse { request_id, detail } => Self::BadResponse {
                request_id,
                detail: request.scrub(&detail),
            },
            Self::Timeout(_) | Self::RegionNotAllowed { .. } => self,
        }
    }
}

/// The CLIENT span of one call to Cognito (`method`: `AdminResetUserPassword`, ...), under
/// OpenTelemetry's RPC conventions; the backend fills in the rest as it learns it.
pub fn client_span(method: &'static str) -> tracing::Span {
    tracing::info_span!(
        "cognito",
        otel.name = format!("CognitoIdentityProvider/{method}"),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        rpc.system = "aws-api",
        rpc.service = "CognitoIdentityProvider",
        rpc.method = method,
        cloud.region = tracing::field::Empty,
        aws.request_id = tracing::field::Empty,
        aws.exception = tracing::field::Empty,
        aws.attempts = tracing::field::Empty,
    )
}

/// What bounds one call to Cognito.
#[derive(Debug, Clone, Copy)]
pub struct CallBounds {
    /// The whole call, retries included: `cognito.operation_timeout_ms`. Not the caller's
    /// deadline: a call may be shared by several callers, and its outcome decides whether a retry
    /// sends the user a second code, so it runs to its end (each caller waits only as long as
    /// their own deadline allows).
    pub timeout: Duration,
    /// No retry is sent after this: the deadline of the caller whose request it is.
    pub retry_until: Option<Instant>,
}

/// The operations the gateway needs from Cognito. One method per operation used.
pub trait Backend: Send + Sync + 'static {
    /// `AdminResetUserPassword`, within `bounds`.
    fn reset_user_password(
        &self,
        request: &ResetRequest,
        bounds: CallBounds,
    ) -> impl Future<Output = Result<ResetOutcome, BackendError>> + Send;

    /// `DescribeUserPool`: whether the pool compares usernames case-sensitively
    /// (`UsernameConfiguration.CaseSensitive`; pools created without it are). A backend that cannot
    /// tell says they are, and usernames are then compared exactly.
    fn usernames_case_sensitive(
        &self,
        _pool: &UserPoolId,
        _timeout: Duration,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send {
        std::future::ready(Ok(true))
    }

    /// `AdminGetUser`: the `sub` of the user a username or alias names.
    fn user_sub(
        &self,
        _pool: &UserPoolId,
        _username: &Username,
        _timeout: Duration,
    ) -> impl Future<Output = Result<String, BackendError>> + Send {
        std::future::ready(Err(BackendError::Misconfigured(
            "this backend cannot look users up (AdminGetUser)".into(),
        )))
    }

    /// Whether this backend can serve the pool at all, checked before a call spends the backend
    /// guard's budget: a call that cannot be sent must not crowd out one that can.
    fn serves(&self, _pool: &UserPoolId) -> Result<(), BackendError> {
        Ok(())
    }

    /// Gives the backend the gateway-wide budget of Cognito requests (the backend guard), for the
    /// requests it makes beyond a call's first: retries after throttling.
    #[must_use]
    fn with_send_budget(self, _budget: Arc<RateLimit>) -> Self
    where
        Self: Sized,
    {
        self
    }
}

/// The production backend: the AWS SDK, one client per region.
#[derive(Debug)]
pub struct SdkBackend {
    base: SdkConfig,
    settings: CognitoSettings,
    /// What throttling retries draw on; without one they are bounded by `max_attempts` alone.
    send_budget: Option<Arc<RateLimit>>,
    clients: RwLock<HashMap<String, Client>>,
    /// The regions metrics name (see [`SdkBackend::region_label`]).
    region_labels: RwLock<BTreeSet<String>>,
}

impl SdkBackend {
    /// Loads the standard AWS chain (credentials, `AWS_ENDPOINT_URL*`, profile). The fallback region
    /// is read from the environment and profile only, never from IMDS: a pod's IMDS can hang for
    /// seconds, and the pool id names the region anyway.
    pub async fn from_env(settings: CognitoSettings) -> Self {
        let region: Option<Region> =
            RegionProviderChain::first_try(EnvironmentVariableRegionProvider::new())
                .or_else(ProfileFileRegionProvider::new())
                .region()
                .await;
        // The credential and token chains look for a region of their own (IMDS included) unless
        // given one: they get this one, even when it is none.
        let credentials = DefaultCredentialsChain::builder()
            .region(region.clone())
            .build()
            .await;
        let token = DefaultTokenChain::builder()
            .region(region.clone())
            .build()
            .await;
        let base = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .credentials_provider(credentials)
            .token_provider(token)
            .load()
            .await;
        Self::new(base, settings)
    }

    /// A backend that sends everything to `endpoint_url` with fixed, fake credentials: the local
    /// Cognito, moto and test fakes. `fallback_region` stands in for `AWS_REGION`.
    pub async fn with_endpoint(
        endpoint_url: &str,
        fallback_region: &str,
        settings: CognitoSettings,
    ) -> Self {
        let credentials = aws_sdk_cognitoidentityprovider::config::Credentials::new(
            "local",
            "local",
            None,
            None,
            "cognito-gateway-fixed",
        );
        let base = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(fallback_region.to_owned()))
            .credentials_provider(credentials)
            .endpoint_url(endpoint_url)
            .load()
            .await;
        Self::new(base, settings)
    }

    /// A backend on an already loaded SDK configuration.
    pub fn new(base: SdkConfig, settings: CognitoSettings) -> Self {
        Self {
            base,
            settings,
            send_budget: None,
            clients: RwLock::new(HashMap::new()),
            region_labels: RwLock::new(BTreeSet::new()),
        }
    }

    fn region_for(&self, pool: &UserPoolId) -> Result<String, BackendError> {
        let prefix = pool.region_prefix();
        // Anything but a region-shaped prefix is not taken for a region.
        let region = if let Ok(region) = domain::Region::parse(prefix.to_owned()) {
            String::from(region)
        } else if let Some(fallback) = self.base.region() {
            fallback.to_string()
        } else {
            return Err(BackendError::Misconfigured(
                "the pool id names no region and no fallback region is set (AWS_REGION)".into(),
            ));
        };
        if let Some(allowed) = &self.settings.allowed_regions
            && !allowed.contains(region.as_str())
        {
            return Err(BackendError::RegionNotAllowed {
                region,
                why: "not in cognito.allowed_regions".into(),
            });
        }
        Ok(region)
    }

    fn client_for(&self, region: String) -> Result<Client, BackendError> {
        if let Some(client) = self.read_clients().get(&region) {
            return Ok(client.clone());
        }
        let mut clients = self
            .clients
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(client) = clients.get(&region) {
            return Ok(client.clone());
        }
        // Without an allow-list, any region-shaped prefix is accepted; the cap keeps callers from
        // growing this map (and its connection pools) without bound. Beyond it a client is
        // dropped (and rebuilt if needed, about 2.5 ms) rather than a region refused, so made-up
        // regions cannot lock the real ones out.
        if clients.len() >= self.settings.max_regions
            && let Some(evicted) = clients.keys().find(|r| **r != region).cloned()
        {
            tracing::warn!(%evicted, %region, max = self.settings.max_regions, "cognito.max_regions reached: dropping a client");
            clients.remove(&evicted);
        }
        let gate = RetryGate {
            budget: self.send_budget.clone(),
        };
        let client = Client::from_conf(client_config(&self.base, &self.settings, &region, gate));
        tracing::info!(%region, "created Cognito client");
        clients.insert(region, client.clone());
        Ok(client)
    }

    /// The region as a metric label. Without `cognito.allowed_regions` any region-shaped prefix a
    /// caller sends is a region, so only the first `cognito.max_regions` seen are named; the rest
    /// are `_OTHER` (spans still name them).
    fn region_label<'a>(&self, region: &'a str) -> &'a str {
        if self.settings.allowed_regions.is_some() {
            return region;
        }
        let known = self
            .region_labels
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .contains(region);
        if known {
            return region;
        }
        let mut labelled = self
            .region_labels
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        if labelled.len() < self.settings.max_regions {
            labelled.insert(region.to_owned());
            region
        } else {
            "_OTHER"
        }
    }

    fn read_clients(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Client>> {
        // A panic while holding the lock cannot leave the map half-written: insert is the only write.
        self.clients
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

fn client_config(
    base: &SdkConfig,
    settings: &CognitoSettings,
    region: &str,
    gate: RetryGate,
) -> aws_sdk_cognitoidentityprovider::Config {
    let retry = RetryConfig::standard()
        .with_max_attempts(settings.max_attempts)
        .with_initial_backoff(settings.initial_backoff)
        .with_max_backoff(settings.max_backoff);
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(settings.connect_timeout)
        .operation_timeout(settings.operation_timeout)
        .build();
    aws_sdk_cognitoidentityprovider::config::Builder::from(base)
        .region(Region::new(region.to_owned()))
        .retry_config(retry)
        .timeout_config(timeouts)
        .retry_classifier(SafeRetryClassifier)
        .interceptor(gate)
        .interceptor(AttemptsOnSpan)
        .build()
}

/// Records how many sends a call took (`aws.attempts`) on the CLIENT span, which is the current
/// span while the SDK runs: the SDK's own spans are disabled by the log and trace filters.
#[derive(Debug, Clone, Copy)]
struct AttemptsOnSpan;

impl aws_sdk_cognitoidentityprovider::config::Intercept for AttemptsOnSpan {
    fn name(&self) -> &'static str {
        "cognito-gateway: attempts on the span"
    }

    fn read_after_attempt(
        &self,
        _context: &aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef<'_>,
        _runtime_components: &aws_sdk_cognitoidentityprovider::config::RuntimeComponents,
        cfg: &mut aws_sdk_cognitoidentityprovider::config::ConfigBag,
    ) -> Result<(), aws_sdk_cognitoidentityprovider::error::BoxError> {
        if let Some(attempts) = cfg.load::<RequestAttempts>() {
            tracing::Span::current().record("aws.attempts", i64::from(attempts.attempts()));
        }
        Ok(())
    }
}

tokio::task_local! {
    /// The call being made: its retry window, and whether its last attempt may be retried. Set by
    /// [`RetryGate`] once per attempt; read by [`SafeRetryClassifier`], which the SDK runs more
    /// than once per attempt and which therefore only reads.
    static RETRY: RetryState;
}

struct RetryState {
    until: Option<Instant>,
    refused: Cell<bool>,
}

/// Decides, once per failed attempt that could be retried, whether the retry may go out:
/// - only if it can be sent before the caller's deadline (`CallBounds::retry_until`), counting the
///   longest backoff the SDK could wait first;
/// - after throttling, only if the backend guard has room: the retry is one more request against
///   the quota that just refused one.
#[derive(Debug, Clone)]
struct RetryGate {
    budget: Option<Arc<RateLimit>>,
}

impl aws_sdk_cognitoidentityprovider::config::Intercept for RetryGate {
    fn name(&self) -> &'static str {
        "cognito-gateway: retries within the caller's deadline and the backend guard"
    }

    fn modify_before_attempt_completion(
        &self,
        context: &mut FinalizerInterceptorContextMut<'_>,
        _runtime_components: &aws_sdk_cognitoidentityprovider::config::RuntimeComponents,
        cfg: &mut aws_sdk_cognitoidentityprovider::config::ConfigBag,
    ) -> Result<(), aws_sdk_cognitoidentityprovider::error::BoxError> {
        let Some(Err(error)) = context.output_or_error() else {
            return Ok(());
        };
        let throttled = is_throttling(error);
        if !throttled && !is_connect_failure_error(error) {
            return Ok(());
        }
        let attempts = cfg.load::<RequestAttempts>().map_or(1, |a| a.attempts());
        let Some(retry) = cfg.load::<RetryConfig>() else {
            return Ok(());
        };
        // The last attempt has no retry to decide on, or to pay for.
        if attempts >= retry.max_attempts() {
            return Ok(());
        }
        // The SDK waits up to initial_backoff * 2^(attempts - 1), at most max_backoff.
        let backoff = retry
            .initial_backoff()
            .saturating_mul(1 << (attempts - 1).min(16))
            .min(retry.max_backoff());
        let _outside_a_call = RETRY.try_with(|state| {
            let too_late = state
                .until
                .is_some_and(|until| Instant::now() + backoff >= until);
            let no_budget =
                || throttled && self.budget.as_ref().is_some_and(|b| b.check().is_err());
            state.refused.set(too_late || no_budget());
        });
        Ok(())
    }
}

impl Backend for SdkBackend {
    fn serves(&self, pool: &UserPoolId) -> Result<(), BackendError> {
        self.region_for(pool).map(drop)
    }

    fn with_send_budget(mut self, budget: Arc<RateLimit>) -> Self {
        self.send_budget = Some(budget);
        self
    }

    async fn reset_user_password(
        &self,
        request: &ResetRequest,
        bounds: CallBounds,
    ) -> Result<ResetOutcome, BackendError> {
        let region = self.region_for(&request.user_pool_id)?;
        tracing::Span::current().record("cloud.region", region.as_str());
        let client = self.client_for(region.clone())?;
        let metadata = &request.client_metadata;
        let timeout = bounds.timeout;
        let send = client
            .admin_reset_user_password()
            .user_pool_id(request.user_pool_id.as_str())
            .username(request.username.expose())
            .set_client_metadata((!metadata.is_empty()).then(|| metadata.expose().clone()))
            .send();
        let started = Instant::now();
        let retry = RetryState {
            until: bounds.retry_until,
            refused: Cell::new(false),
        };
        // Dropping the send future on timeout cancels any retry in progress as well.
        let result = match RETRY
            .scope(retry, tokio::time::timeout(timeout, send))
            .await
        {
            Err(_elapsed) => Err(BackendError::Timeout(timeout)),
            Ok(Ok(output)) => Ok(ResetOutcome {
                request_id: output.request_id().map(str::to_owned),
            }),
            Ok(Err(err)) => Err(sort_sdk_error(err, timeout)),
        };
        if let Ok(ResetOutcome {
            request_id: Some(id),
        }) = &result
        {
            tracing::Span::current().record("aws.request_id", id.as_str());
        }
        record_cognito_call(
            "AdminResetUserPassword",
            &result,
            self.region_label(&region),
            started,
        );
        result
    }

    async fn usernames_case_sensitive(
        &self,
        pool: &UserPoolId,
        timeout: Duration,
    ) -> Result<bool, BackendError> {
        let region = self.region_for(pool)?;
        let client = self.client_for(region.clone())?;
        let describe = client
            .describe_user_pool()
            .user_pool_id(pool.as_str())
            .send();
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, describe).await {
            Err(_elapsed) => Err(BackendError::Timeout(timeout)),
            // No UsernameConfiguration: a pool created without one, whose usernames are
            // case-sensitive.
            Ok(Ok(output)) => Ok(output
                .user_pool()
                .and_then(|pool| pool.username_configuration())
                .is_none_or(|configuration| configuration.case_sensitive())),
            Ok(Err(err)) => Err(sort_sdk_error(err, timeout)),
        };
        record_cognito_call(
            "DescribeUserPool",
            &result,
            self.region_label(&region),
            started,
        );
        result
    }

    async fn user_sub(
        &self,
        pool: &UserPoolId,
        username: &Username,
        timeout: Duration,
    ) -> Result<String, BackendError> {
        let region = self.region_for(pool)?;
        let client = self.client_for(region.clone())?;
        let get = client
            .admin_get_user()
            .user_pool_id(pool.as_str())
            .username(username.expose())
            .send();
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, get).await {
            Err(_elapsed) => Err(BackendError::Timeout(timeout)),
            Ok(Ok(output)) => output
                .user_attributes()
                .iter()
                .find(|attribute| attribute.name() == "sub")
                .and_then(|attribute| attribute.value())
                .map(str::to_owned)
                .ok_or_else(|| BackendError::BadResponse {
                    request_id: output.request_id().map(str::to_owned),
                    detail: "AdminGetUser answered without the user's sub".into(),
                }),
            Ok(Err(err)) => Err(sort_sdk_error(err, timeout)),
        };
        record_cognito_call("AdminGetUser", &result, self.region_label(&region), started);
        result
    }
}

/// Finishes the CLIENT span (the current one, made by the caller) and the `rpc.client.duration`
/// metric, whose labels take a bounded set of values: `region_label`, and an exception the error
/// table knows or `_OTHER`.
fn record_cognito_call<T>(
    method: &'static str,
    result: &Result<T, BackendError>,
    region_label: &str,
    started: Instant,
) {
    let span = tracing::Span::current();
    let request_id = match result {
        Ok(_) => None,
        Err(error) => error.request_id(),
    };
    let exception = match result {
        Ok(_) => "",
        Err(error) => error.exception(),
    };
    if let Some(id) = request_id {
        span.record("aws.request_id", id);
    }
    if result.is_err() {
        span.record("aws.exception", exception);
        span.record("otel.status_code", "ERROR");
    }
    let exception_label = match result {
        Err(BackendError::Cognito(_)) if !is_known_exception(exception) => "_OTHER",
        _ => exception,
    };
    metrics().rpc_client_duration.record(
        started.elapsed().as_secs_f64() * 1000.0,
        &cognito_attributes(method, exception_label, region_label),
    );
}

/// Sorts the SDK's failure into a [`BackendError`].
fn sort_sdk_error<E: ProvideErrorMetadata>(
    err: SdkError<E, aws_smithy_runtime_api::http::Response>,
    timeout: Duration,
) -> BackendError
where
    SdkError<E, aws_smithy_runtime_api::http::Response>: std::error::Error + 'static,
{
    let request_id = err.request_id().map(str::to_owned);
    let detail = || DisplayErrorContext(&err).to_string();
    match &err {
        SdkError::ServiceError(service) => {
            let error = service.err();
            BackendError::Cognito(CognitoFailure {
                code: error.code().unwrap_or_default().to_owned(),
                message: error.message().unwrap_or_default().to_owned(),
                request_id,
                http_status: service.raw().status().as_u16(),
            })
        }
        SdkError::TimeoutError(_) => BackendError::Timeout(timeout),
        SdkError::DispatchFailure(failure) => match failure.as_connector_error() {
            Some(connector) if never_left_the_process(connector) => {
                BackendError::Misconfigured(detail())
            }
            Some(connector) if connector.is_timeout() && !is_connect_failure(connector) => {
                BackendError::Timeout(timeout)
            }
            Some(connector) if !is_connect_failure(connector) => {
                BackendError::ConnectionLost(detail())
            }
            _ => BackendError::Unreachable(detail()),
        },
        SdkError::ConstructionFailure(_) => BackendError::Misconfigured(detail()),
        _ => BackendError::BadResponse {
            request_id,
            detail: detail(),
        },
    }
}

/// The SDK reports failures to sign (no credentials, no identity resolver) as dispatch failures,
/// though nothing was sent: they are configuration errors, not an unreachable Cognito. They are the
/// "other" connector errors with a credentials error, or no network error at all, in their chain.
fn never_left_the_process(connector: &ConnectorError) -> bool {
    if !connector.is_other() {
        return false;
    }
    let mut network = false;
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(connector);
    while let Some(error) = next {
        if error.is::<CredentialsError>() {
            return true;
        }
        network |= error.is::<std::io::Error>()
            || error.is::<hyper_util::client::legacy::Error>()
            || error.is::<ResolveDnsError>();
        next = error.source();
    }
    !network
}

/// Whether the attempt failed to connect (see [`is_connect_failure`]).
fn is_connect_failure_error(error: &OrchestratorError<InterceptorError>) -> bool {
    error
        .as_connector_error()
        .is_some_and(|connector| is_connect_failure(connector))
}

fn is_throttling(error: &OrchestratorError<InterceptorError>) -> bool {
    error
        .as_operation_error()
        .and_then(|e| e.downcast_ref::<AdminResetUserPasswordError>())
        .and_then(|e| e.code())
        == Some("TooManyRequestsException")
}

/// Whether a connector error happened before the request could be written: connection refused,
/// DNS, TLS handshake, connect timeout. Only these are certain not to have reached Cognito.
fn is_connect_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<ResolveDnsError>() {
            return true;
        }
        if error
            .downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(hyper_util::client::legacy::Error::is_connect)
        {
            return true;
        }
        next = error.source();
    }
    false
}

/// The SDK's retry decision, replaced. It runs after the SDK's own classifiers and has the last word:
/// retry throttling and connect failures, forbid everything else. The SDK's defaults would also
/// retry HTTP 500, `LimitExceededException` and timeouts, each of which may send the user another
/// code.
///
/// A retry is not made when [`RetryGate`] refused it (too late for the caller, or no budget).
///
/// The SDK runs its classifiers more than once per attempt (connection poisoning asks too), so this
/// one decides from what it is shown and changes nothing.
#[derive(Debug, Clone, Copy)]
pub struct SafeRetryClassifier;

impl ClassifyRetry for SafeRetryClassifier {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let Some(Err(error)) = ctx.output_or_error() else {
            return RetryAction::NoActionIndicated;
        };
        let throttled = is_throttling(error);
        if !throttled && !is_connect_failure_error(error) {
            return RetryAction::RetryForbidden;
        }
        if RETRY.try_with(|state| state.refused.get()).unwrap_or(false) {
            RetryAction::RetryForbidden
        } else if throttled {
            RetryAction::throttling_error()
        } else {
            RetryAction::transient_error()
        }
    }

    fn name(&self) -> &'static str {
        "cognito-gateway: retry only what certainly did not happen"
    }

    fn priority(&self) -> RetryClassifierPriority {
        RetryClassifierPriority::run_after(RetryClassifierPriority::transient_error_classifier())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn metrics_name_at_most_max_regions_regions() {
        let settings = CognitoSettings {
            max_regions: 2,
            ..CognitoSettings::default()
        };
        let backend = SdkBackend::with_endpoint("http://127.0.0.1:1", "us-east-1", settings).await;
        assert_eq!(backend.region_label("us-east-1"), "us-east-1");
        assert_eq!(backend.region_label("eu-west-1"), "eu-west-1");
        assert_eq!(backend.region_label("xx-made-up-1"), "_OTHER");
        assert_eq!(backend.region_label("us-east-1"), "us-east-1");
    }
}
