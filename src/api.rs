//! The gRPC service: validate -> call Cognito -> answer. Every call ends here in exactly one log
//! line, and every failure becomes a status through [`crate::status`] only.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::{
    cognito::{Backend, BackendError},
    domain::{ResetRequest, UserPoolId},
    middleware::deadline::Deadline,
    proto::{
        ResetUserPasswordRequest, ResetUserPasswordResponse,
        user_admin_service_server::UserAdminService,
    },
    status::{GatewayError, code_name, is_server_side, to_status},
};

/// `cognitogateway.v1.UserAdminService`.
#[derive(Debug)]
pub struct UserAdmin<B> {
    backend: Arc<B>,
    operation_timeout: Duration,
}

impl<B> UserAdmin<B> {
    /// A service calling `backend`, each call bounded by `operation_timeout` (or the caller's
    /// deadline, if sooner).
    pub fn new(backend: Arc<B>, operation_timeout: Duration) -> Self {
        Self {
            backend,
            operation_timeout,
        }
    }
}

#[tonic::async_trait]
impl<B: Backend> UserAdminService for UserAdmin<B> {
    async fn reset_user_password(
        &self,
        request: Request<ResetUserPasswordRequest>,
    ) -> Result<Response<ResetUserPasswordResponse>, Status> {
        let started = Instant::now();
        let deadline = request.extensions().get::<Deadline>().copied();
        let message = request.into_inner();
        let pool_id = message.user_pool_id.clone();

        let request = match ResetRequest::parse(
            message.user_pool_id,
            message.username,
            message.client_metadata,
        ) {
            Ok(request) => request,
            Err(violations) => {
                let pool = UserPoolId::parse(pool_id).ok();
                let error = GatewayError::InvalidRequest(violations);
                return Err(finish(&error, pool.as_ref(), None, started));
            }
        };

        let (timeout, caller_bound) = match deadline.map(|d| d.remaining()) {
            Some(remaining) if remaining <= self.operation_timeout => (remaining, true),
            _ => (self.operation_timeout, false),
        };
        match self.backend.reset_user_password(&request, timeout).await {
            Ok(outcome) => {
                tracing::info!(
                    code = "OK",
                    user_pool_id = %request.user_pool_id,
                    cognito_request_id = outcome.request_id.as_deref().unwrap_or_default(),
                    duration_ms = started.elapsed().as_millis() as u64,
                    "ResetUserPassword",
                );
                Ok(Response::new(ResetUserPasswordResponse {
                    cognito_request_id: outcome.request_id.unwrap_or_default(),
                }))
            }
            Err(error) => {
                let error = match error {
                    BackendError::Timeout(_) if caller_bound => GatewayError::DeadlineExceeded,
                    other => GatewayError::Backend(other),
                };
                Err(finish(
                    &error,
                    Some(&request.user_pool_id),
                    Some(&request),
                    started,
                ))
            }
        }
    }
}

/// Builds the status and writes the call's one log line; server-side failures are logged in full
/// (with anything the caller sent scrubbed out), since their status is opaque.
fn finish(
    error: &GatewayError,
    pool: Option<&UserPoolId>,
    request: Option<&ResetRequest>,
    started: Instant,
) -> Status {
    let status = to_status(error, pool);
    let reason = tonic_types::StatusExt::get_details_error_info(&status)
        .map(|info| info.reason)
        .unwrap_or_default();
    let code = code_name(status.code());
    let pool = pool.map(UserPoolId::as_str).unwrap_or_default();
    let request_id = match error {
        GatewayError::Backend(BackendError::Cognito(failure)) => failure.request_id.as_deref(),
        _ => None,
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    if is_server_side(status.code()) {
        let detail = scrub(&error.to_string(), request);
        tracing::error!(
            code,
            reason,
            user_pool_id = pool,
            cognito_request_id = request_id.unwrap_or_default(),
            duration_ms,
            error = detail,
            "ResetUserPassword",
        );
    } else {
        tracing::info!(
            code,
            reason,
            user_pool_id = pool,
            cognito_request_id = request_id.unwrap_or_default(),
            duration_ms,
            "ResetUserPassword",
        );
    }
    status
}

/// Cognito's messages may quote the request (validation errors echo values, Lambda errors say
/// anything). The log must never hold the username or metadata, so they are cut out here.
fn scrub(text: &str, request: Option<&ResetRequest>) -> String {
    let Some(request) = request else {
        return text.to_owned();
    };
    let mut text = text.replace(request.username.expose(), "<username>");
    for value in request.client_metadata.expose().values() {
        // Very short values would blank out ordinary words without protecting anything.
        if value.chars().count() >= 4 {
            text = text.replace(value.as_str(), "<metadata>");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn scrub_removes_username_and_metadata_values() {
        let request = ResetRequest::parse(
            "us-east-1_Abc".into(),
            "jane.doe@example.com".into(),
            HashMap::from([
                ("k".into(), "tenant-42".into()),
                ("short".into(), "ab".into()),
            ]),
        )
        .unwrap();
        let text = "Value 'jane.doe@example.com' at 'username'; lambda said tenant-42 ab";
        let scrubbed = scrub(text, Some(&request));
        assert_eq!(
            scrubbed,
            "Value '<username>' at 'username'; lambda said <metadata> ab"
        );
    }
}
