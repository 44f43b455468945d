//! The production backend: the AWS SDK, one client per region (the region comes from the pool id),
//! over connections kept warm (`connect.rs`).

use std::{
    cell::Cell,
    collections::{BTreeSet, HashMap},
    future::Future,
    sync::{
        Arc, OnceLock, RwLock,
        atomic::{AtomicU64, Ordering},
    },
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
    config::{Region, retry::RetryConfig, timeout::TimeoutConfig},
    error::{ConnectorError, DisplayErrorContext, ProvideErrorMetadata, SdkError},
    operation::RequestId,
};
use aws_smithy_runtime_api::client::{dns::ResolveDnsError, retries::RequestAttempts};
use tokio::time::Instant;

use crate::{
    cognito::connect::{WarmHandle, WarmHttp},
    config::CognitoSettings,
    domain::{self, ResetRequest, UserPoolId, Username},
    metrics::record_client_call,
    rate::RateLimit,
};

use super::{
    Backend, BackendError, CallBounds, CognitoFailure, ResetOutcome, is_known_exception,
    retry::{RETRY, RetryGate, RetryState, SafeRetryClassifier, is_connect_failure},
};

/// The production backend: the AWS SDK, one client per region.
#[derive(Debug)]
pub struct SdkBackend {
    base: SdkConfig,
    settings: CognitoSettings,
    /// What throttling retries draw on; without one they are bounded by `max_attempts` alone.
    /// Shared with every region's client, including those built before it was given.
    send_budget: Arc<OnceLock<Arc<RateLimit>>>,
    clients: RwLock<HashMap<String, Regional>>,
    /// A clock of calls: each region notes when it was last used, and the least recently used
    /// goes first when there are too many (see [`SdkBackend::client_for`]).
    uses: AtomicU64,
    /// The HTTP client every region's SDK client sends with.
    http: WarmHttp,
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

    /// A backend on an already loaded SDK configuration. Inside a Tokio runtime, each allowed
    /// region (without `cognito.allowed_regions`, the fallback region) gets its client now and a
    /// connection opened in the background: the first call finds it ready, and nothing waits for
    /// it (readiness never waits on AWS).
    pub fn new(base: SdkConfig, settings: CognitoSettings) -> Self {
        let http = WarmHttp::new(settings.connection_refresh, settings.connect_timeout)
            .expect("aws-lc-rs supports rustls' default protocol versions");
        let backend = Self {
            base,
            settings,
            send_budget: Arc::default(),
            clients: RwLock::new(HashMap::new()),
            uses: AtomicU64::new(0),
            http,
            region_labels: RwLock::new(BTreeSet::new()),
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            let regions: Vec<String> = match &backend.settings.allowed_regions {
                Some(allowed) => allowed.iter().map(|r| r.as_str().to_owned()).collect(),
                None => backend
                    .base
                    .region()
                    .map(|r| r.to_string())
                    .into_iter()
                    .collect(),
            };
            for region in regions {
                let _ = backend.client_for(region);
            }
        }
        backend
    }

    /// The pool's region and its client. A region already served is found by the pool id's
    /// prefix alone: only region-shaped, allowed names become keys of the map.
    fn regional(&self, pool: &UserPoolId) -> Result<(String, Client), BackendError> {
        let prefix = pool.region_prefix();
        if let Some(regional) = self.read_clients().get(prefix) {
            return Ok((prefix.to_owned(), self.used(regional)));
        }
        let region = self.region_for(pool)?;
        let client = self.client_for(region.clone())?;
        Ok((region, client))
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

    /// `regional`'s client, noting that it is used now.
    fn used(&self, regional: &Regional) -> Client {
        let now = self.uses.fetch_add(1, Ordering::Relaxed);
        regional.used.store(now, Ordering::Relaxed);
        regional.client.clone()
    }

    fn client_for(&self, region: String) -> Result<Client, BackendError> {
        if let Some(regional) = self.read_clients().get(&region) {
            return Ok(self.used(regional));
        }
        let mut clients = self
            .clients
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(regional) = clients.get(&region) {
            return Ok(regional.client.clone());
        }
        // Without an allow-list, any region-shaped prefix is accepted; the cap keeps callers from
        // growing this map (and its connection pools, its spare) without bound. Beyond it the
        // least recently used client is dropped (and rebuilt if needed, about 2.5 ms) rather than
        // a region refused, so made-up regions cannot lock the real ones out, and a region in use
        // outlasts a flood of made-up ones.
        if clients.len() >= self.settings.max_regions
            && let Some(evicted) = clients
                .iter()
                .filter(|(r, _)| **r != region)
                .min_by_key(|(_, regional)| regional.used.load(Ordering::Relaxed))
                .map(|(r, _)| r.clone())
        {
            tracing::warn!(%evicted, %region, max = self.settings.max_regions, "cognito.max_regions reached: dropping a client");
            clients.remove(&evicted);
        }
        let gate = RetryGate {
            budget: Arc::clone(&self.send_budget),
        };
        let client = Client::from_conf(
            client_config(&self.base, &self.settings, &region, gate)
                .http_client(self.http.shared())
                .build(),
        );
        let warm = self.http.keep_warm(endpoint(&self.base, &region));
        tracing::info!(%region, "created Cognito client");
        clients.insert(
            region,
            Regional {
                client: client.clone(),
                used: AtomicU64::new(self.uses.fetch_add(1, Ordering::Relaxed)),
                _warm: warm,
            },
        );
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

    fn read_clients(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Regional>> {
        // A panic while holding the lock cannot leave the map half-written: insert is the only write.
        self.clients
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// A region's SDK client, and the task that keeps a connection to its endpoint ready.
#[derive(Debug)]
struct Regional {
    client: Client,
    /// When it was last used, on [`SdkBackend::uses`]' clock.
    used: AtomicU64,
    _warm: WarmHandle,
}

/// The endpoint the SDK will send `region`'s calls to, resolved as the SDK resolves it (the same
/// explicit endpoint, FIPS and dual-stack settings), for the connection kept ready.
fn endpoint(
    base: &SdkConfig,
    region: &str,
) -> impl Future<Output = Option<http::Uri>> + Send + 'static {
    use aws_sdk_cognitoidentityprovider::config::endpoint::{
        DefaultResolver, Params, ResolveEndpoint as _,
    };
    // As the SDK's `Builder::from(&SdkConfig)`: an endpoint set in code wins, then the
    // service's own (`AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER`, the profile's), then the global.
    let explicit = if base.get_origin("endpoint_url").is_client_config() {
        base.endpoint_url().map(str::to_owned)
    } else {
        base.service_config()
            .and_then(|config| {
                config.load_config(
                    aws_types::service_config::ServiceConfigKey::builder()
                        .service_id("Cognito Identity Provider")
                        .env("AWS_ENDPOINT_URL")
                        .profile("endpoint_url")
                        .build()
                        .expect("every field is set"),
                )
            })
            .or_else(|| base.endpoint_url().map(str::to_owned))
    };
    let params = Params::builder()
        .region(region)
        .set_use_fips(base.use_fips())
        .set_use_dual_stack(base.use_dual_stack())
        .set_endpoint(explicit)
        .build();
    async move {
        let params = params.ok()?;
        let endpoint = DefaultResolver::new()
            .resolve_endpoint(&params)
            .await
            .ok()?;
        endpoint.url().parse().ok()
    }
}

/// A region's client configuration, but its HTTP client.
fn client_config(
    base: &SdkConfig,
    settings: &CognitoSettings,
    region: &str,
    gate: RetryGate,
) -> aws_sdk_cognitoidentityprovider::config::Builder {
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

impl Backend for SdkBackend {
    fn serves(&self, pool: &UserPoolId) -> Result<(), BackendError> {
        if self.read_clients().contains_key(pool.region_prefix()) {
            return Ok(());
        }
        self.region_for(pool).map(drop)
    }

    fn with_send_budget(self, budget: Arc<RateLimit>) -> Self {
        let _ = self.send_budget.set(budget);
        self
    }

    async fn reset_user_password(
        &self,
        request: &ResetRequest,
        bounds: CallBounds,
    ) -> Result<ResetOutcome, BackendError> {
        let (region, client) = self.regional(&request.user_pool_id)?;
        tracing::Span::current().record("cloud.region", region.as_str());
        let metadata = &request.client_metadata;
        let timeout = bounds.timeout;
        // The SDK's send future is several kilobytes: boxed once here, it is not copied again
        // each time the futures around it move (into the gate's task, into hyper's), which cost
        // about 80,000 instructions of memcpy per call (callgrind, release).
        let send = Box::pin(
            client
                .admin_reset_user_password()
                .user_pool_id(request.user_pool_id.as_str())
                .username(request.username.expose())
                .set_client_metadata((!metadata.is_empty()).then(|| metadata.expose().clone()))
                .send(),
        );
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
        let (region, client) = self.regional(pool)?;
        // Boxed, as the reset's: the lookups' futures are inside every call's, cache hit or not.
        let describe = Box::pin(
            client
                .describe_user_pool()
                .user_pool_id(pool.as_str())
                .send(),
        );
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
        let (region, client) = self.regional(pool)?;
        let get = Box::pin(
            client
                .admin_get_user()
                .user_pool_id(pool.as_str())
                .username(username.expose())
                .send(),
        );
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

/// Finishes the CLIENT span (the current one, made by the caller) and the
/// `rpc.client.call.duration` metric, whose labels take a bounded set of values: `region_label`,
/// and an exception the error table knows or `_OTHER`.
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
    record_client_call(method, exception_label, region_label, started.elapsed());
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
        // Cognito answered, but the reply could not be read: cut off mid-body, truncated, not
        // JSON. After a 5xx or a 2xx the reset happened or may have, as after a lost connection.
        SdkError::ResponseError(response) if response.raw().status().is_server_error() => {
            BackendError::Cognito(CognitoFailure {
                code: String::new(),
                message: detail(),
                request_id,
                http_status: response.raw().status().as_u16(),
            })
        }
        SdkError::ResponseError(response) if response.raw().status().is_success() => {
            BackendError::ConnectionLost(detail())
        }
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

#[cfg(test)]
mod tests;
