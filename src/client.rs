//! `cognito-gateway reset`: the client a person or a script uses. It prints the outcome on one
//! readable line (status, reason, message, request id) and exits non-zero on error.

use std::{fmt::Write as _, process::ExitCode, time::Duration};

use tonic::{Status, transport::Endpoint};
use tonic_types::StatusExt as _;

use crate::{
    cli::ResetArgs,
    proto::{
        ResetUserPasswordRequest, ResetUserPasswordResponse,
        user_admin_service_client::UserAdminServiceClient,
    },
    status::code_name,
};

/// Calls the gateway and prints the outcome: stdout on success, stderr on failure.
pub async fn run(args: ResetArgs) -> ExitCode {
    // A fresh one by default: the gateway remembers it, so that a retry of this very call can
    // never send the user a second code.
    let request_id = args
        .request_id
        .clone()
        .unwrap_or_else(crate::domain::random_uuid);
    match call(&args, &request_id).await {
        Ok(response) if response.deduplicated => {
            println!(
                "OK: already reset moments ago (or by this request id); no new code was sent (Cognito request id: {})",
                or_none(&response.cognito_request_id)
            );
            ExitCode::SUCCESS
        }
        Ok(response) => {
            println!(
                "OK: password reset (Cognito request id: {})",
                or_none(&response.cognito_request_id)
            );
            ExitCode::SUCCESS
        }
        Err(status) => {
            eprintln!("{}", describe(&status));
            // Whether the reset happened is not known: the same id asks again without sending
            // the user another code.
            if matches!(
                status.code(),
                tonic::Code::Unknown | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            ) {
                eprintln!("  to retry this very request safely: --request-id {request_id}");
            }
            ExitCode::FAILURE
        }
    }
}

async fn call(args: &ResetArgs, request_id: &str) -> Result<ResetUserPasswordResponse, Status> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let endpoint = Endpoint::from_shared(args.addr.clone())
        .map_err(|e| Status::invalid_argument(format!("bad --addr {:?}: {e}", args.addr)))?
        .connect_timeout(timeout);
    let channel = endpoint.connect().await.map_err(|e| {
        Status::unavailable(format!(
            "cannot connect to the gateway at {}: {e}",
            args.addr
        ))
    })?;
    let mut client = UserAdminServiceClient::new(channel);
    let mut request = tonic::Request::new(ResetUserPasswordRequest {
        user_pool_id: args.user_pool_id.clone(),
        username: args.username.clone(),
        client_metadata: args.client_metadata.iter().cloned().collect(),
        request_id: request_id.to_owned(),
    });
    if let Some(path) = &args.token_file {
        let token = std::fs::read_to_string(path).map_err(|e| {
            Status::invalid_argument(format!("cannot read --token-file {}: {e}", path.display()))
        })?;
        let value = format!("Bearer {}", token.trim()).parse().map_err(|_| {
            Status::invalid_argument("the token file holds characters a header cannot")
        })?;
        request.metadata_mut().insert("authorization", value);
    }
    // The deadline goes to the gateway (`grpc-timeout`), which answers DEADLINE_EXCEEDED when it
    // runs out; the local bound, a little later, is only for a gateway that never answers.
    request.set_timeout(timeout);
    let answer = client.reset_user_password(request);
    match tokio::time::timeout(timeout + Duration::from_secs(1), answer).await {
        Ok(response) => Ok(response?.into_inner()),
        Err(_) => Err(Status::deadline_exceeded(
            "no answer from the gateway; the reset may or may not have happened",
        )),
    }
}

/// One line a person can read: `CODE REASON: message [details]`.
pub fn describe(status: &Status) -> String {
    let details = status.get_error_details();
    let mut line = code_name(status.code()).to_owned();
    if let Some(info) = details.error_info() {
        let _ = write!(line, " {}", info.reason);
    }
    let _ = write!(line, ": {}", status.message());
    if let Some(bad) = details.bad_request() {
        for v in &bad.field_violations {
            let _ = write!(line, "\n  field {}: {}", v.field, v.description);
        }
    }
    if let Some(retry) = details.retry_info().and_then(|r| r.retry_delay) {
        let _ = write!(line, "\n  retry after {retry:?}");
    }
    if let Some(exception) = details
        .error_info()
        .and_then(|i| i.metadata.get("exception"))
    {
        let _ = write!(line, "\n  Cognito exception: {exception}");
    }
    if let Some(request) = details.request_info() {
        let _ = write!(line, "\n  request id: {}", or_none(&request.request_id));
    }
    line
}

fn or_none(id: &str) -> &str {
    if id.is_empty() { "none" } else { id }
}
