//! `--metrics-listen`: the real binary serves `GET /metrics` on a listener of its own, and a
//! scrape over a real socket shows the calls that were made, counted and labelled, and nothing a
//! caller sent.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

use super::{reset, stop};
use crate::kit::{
    binary::{Gateway, start_binary},
    files::Files,
};

/// The address the gateway logged for `/metrics`.
fn metrics_addr(gateway: &Gateway) -> String {
    gateway
        .startup_log
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|event| event["message"] == "serving /metrics")
        .and_then(|event| event["metrics_addr"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no `serving /metrics` line: {:#?}", gateway.startup_log))
}

/// One HTTP/1.1 request over a fresh socket; the status line and the body (the server closes
/// the connection after one response), both empty if the connection was closed without one.
fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut socket = TcpStream::connect(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // A connection the server closed at once fails the write or the read: no answer.
    let mut response = String::new();
    let sent = write!(
        socket,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: test\r\n\r\n"
    );
    if sent.is_ok() && socket.read_to_string(&mut response).is_err() {
        response.clear();
    }
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, body.to_owned())
}

/// A sample of the text format: its labels and value.
#[derive(Debug)]
struct Sample {
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of `name` in a Prometheus text exposition.
fn samples(exposition: &str, name: &str) -> Vec<Sample> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((metric, labels)) => (metric, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let labels = labels
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .filter_map(|pair| {
                    let (key, value) = pair.split_once("=\"")?;
                    Some((key.to_owned(), value.trim_end_matches('"').to_owned()))
                })
                .collect();
            Some(Sample {
                labels,
                value: value.parse().ok()?,
            })
        })
        .collect()
}

/// The value of the one sample of `name` whose labels include `with`.
fn value(exposition: &str, name: &str, with: &[(&str, &str)]) -> f64 {
    let found: Vec<Sample> = samples(exposition, name)
        .into_iter()
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    match found.as_slice() {
        [one] => one.value,
        other => panic!("{name} {with:?}: {other:?}\n{exposition}"),
    }
}

const RESET: &str = "cognitogateway.v1.UserAdminService/ResetUserPassword";

/// A unary call to `/no.such.Service/Method`, which the server does not have.
async fn call_unknown_method(addr: &str) -> tonic::Status {
    use cognito_gateway::proto::{ResetUserPasswordRequest, ResetUserPasswordResponse};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec =
        tonic_prost::ProstCodec::<ResetUserPasswordRequest, ResetUserPasswordResponse>::default();
    grpc.unary(
        tonic::Request::new(ResetUserPasswordRequest::default()),
        http::uri::PathAndQuery::from_static("/no.such.Service/Method"),
        codec,
    )
    .await
    .unwrap_err()
}
const COGNITO_RESET: &str = "CognitoIdentityProvider/AdminResetUserPassword";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_shows_the_calls_made() {
    let gateway = start_binary(&["--local", "--metrics-listen", "127.0.0.1:0"], &[]);
    let addr = metrics_addr(&gateway);
    assert_ne!(addr, gateway.addr, "a listener of its own");

    reset(&gateway, "alice", None).await.unwrap();
    reset(&gateway, "alice", None).await.unwrap(); // deduplicated: no Cognito call
    let disabled = reset(&gateway, "bob-disabled", None).await.unwrap_err();
    assert_eq!(disabled.code(), tonic::Code::FailedPrecondition);
    let invalid = reset(&gateway, "not valid", None).await.unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    // A path the server does not have: UNIMPLEMENTED, a server-class code, under `_OTHER`.
    let unknown = call_unknown_method(&gateway.addr).await;
    assert_eq!(unknown.code(), tonic::Code::Unimplemented);

    let exposition = tokio::task::spawn_blocking(move || {
        let (status, body) = http_get(&addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
        let (missing, _) = http_get(&addr, "/other");
        assert_eq!(missing, "HTTP/1.1 404 Not Found");
        body
    })
    .await
    .unwrap();

    // The server metric, under semantic conventions v1.42, by code.
    let server = "rpc_server_call_duration_seconds_count";
    let call = |code: &str| {
        value(
            &exposition,
            server,
            &[
                ("rpc_method", RESET),
                ("rpc_response_status_code", code),
                ("rpc_system_name", "grpc"),
                ("cognito_gateway_caller", "anonymous"),
            ],
        )
    };
    assert_eq!(call("OK"), 2.0);
    assert_eq!(call("FAILED_PRECONDITION"), 1.0);
    assert_eq!(call("INVALID_ARGUMENT"), 1.0);
    // Caller-side codes carry no error.type; server-class ones carry their name. A made-up path
    // is `_OTHER`: callers cannot make series.
    assert!(
        samples(&exposition, server)
            .iter()
            .filter(|s| s.labels["rpc_method"] == RESET)
            .all(|s| !s.labels.contains_key("error_type")),
        "{exposition}"
    );
    assert_eq!(
        value(
            &exposition,
            server,
            &[
                ("rpc_method", "_OTHER"),
                ("rpc_response_status_code", "UNIMPLEMENTED"),
                ("error_type", "UNIMPLEMENTED"),
            ]
        ),
        1.0
    );
    assert!(!exposition.contains("no.such"), "{exposition}");
    // The histogram's buckets are in seconds.
    let buckets = samples(&exposition, "rpc_server_call_duration_seconds_bucket");
    assert!(
        buckets
            .iter()
            .any(|s| s.labels.get("le").map(String::as_str) == Some("0.005")),
        "{buckets:?}"
    );

    // Cognito: one reset sent for alice, one refused for bob; the repeat sent nothing.
    let client = "rpc_client_call_duration_seconds_count";
    let sent = samples(&exposition, client);
    let resets: Vec<&Sample> = sent
        .iter()
        .filter(|s| s.labels.get("rpc_method").map(String::as_str) == Some(COGNITO_RESET))
        .collect();
    assert_eq!(resets.len(), 2, "{resets:?}");
    assert_eq!(
        value(
            &exposition,
            client,
            &[
                ("rpc_method", COGNITO_RESET),
                ("error_type", "NotAuthorizedException")
            ]
        ),
        1.0
    );
    assert!(
        resets
            .iter()
            .all(|s| s.labels["rpc_system_name"] == "aws-api"
                && s.labels["cloud_region"] == "local-1")
    );
    assert_eq!(resets.iter().map(|s| s.value).sum::<f64>(), 2.0);
    assert_eq!(
        value(
            &exposition,
            "cognito_gateway_deduplicated_total",
            &[("kind", "cooldown")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &exposition,
            "cognito_gateway_limit",
            &[("setting", "backend_rps")]
        ),
        25.0
    );
    assert!(value(&exposition, "cognito_gateway_callers", &[]) >= 1.0);
    assert!(value(&exposition, "process_memory_usage_bytes", &[]) > 0.0);

    // Nothing a caller sent: labels are callers, pools, codes.
    for secret in [
        "alice",
        "bob-disabled",
        "not valid",
        "secret-metadata-value",
    ] {
        assert!(!exposition.contains(secret), "{secret} is in /metrics");
    }
    let (code, _) = stop(gateway).await;
    assert_eq!(code, Some(0));
}

/// Connections to /metrics are capped, and one that sends nothing is closed at the request
/// deadline, after which a scrape is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_cannot_be_held() {
    let gateway = start_binary(&["--local", "--metrics-listen", "127.0.0.1:0"], &[]);
    let addr = metrics_addr(&gateway);
    let outcome = tokio::task::spawn_blocking(move || {
        // MAX_CONNECTIONS (8) that say nothing take every place...
        let mut silent: Vec<TcpStream> = (0..8)
            .map(|_| {
                let socket = TcpStream::connect(&addr).unwrap();
                socket
                    .set_read_timeout(Some(Duration::from_secs(30)))
                    .unwrap();
                socket
            })
            .collect();
        // ...so the next is closed at once, without an answer. The accept loop takes
        // connections in order: once it has closed this one, it has admitted the eight.
        let (refused, body) = http_get(&addr, "/metrics");
        // ...and each of the eight is closed by the server at the deadline (5 s).
        for socket in &mut silent {
            let mut byte = [0; 1];
            let read = socket.read(&mut byte);
            assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        }
        let (served, metrics) = http_get(&addr, "/metrics");
        (refused, body, served, metrics)
    })
    .await
    .unwrap();
    let (refused, body, served, metrics) = outcome;
    assert_eq!(
        refused, "",
        "over the cap: closed without an answer ({body})"
    );
    assert_eq!(served, "HTTP/1.1 200 OK");
    assert!(metrics.contains("cognito_gateway_callers"), "{metrics}");
    let (code, _) = stop(gateway).await;
    assert_eq!(code, Some(0));
}

/// The reload metrics: the JWKS loaded at start (its keys, its time), and a configuration file
/// that stops validating, refused on SIGHUP and counted so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_of_keys_and_configuration_are_measured() {
    let files = Files::new("scrape-reloads");
    // One usable RS256 key (the modulus need not belong to a key anyone holds: nothing is
    // verified here) and one the gateway ignores (an HMAC secret).
    let modulus = "u".repeat(344);
    let jwks = files.write(
        "jwks.json",
        &format!(
            r#"{{"keys":[{{"kty":"RSA","kid":"a","use":"sig","alg":"RS256","n":"{modulus}","e":"AQAB"}},{{"kty":"oct","kid":"b","k":"c2VjcmV0"}}]}}"#
        ),
    );
    let config_text = format!(
        "[auth]\nmode = \"jwt\"\nreload_interval_secs = 1\n[auth.jwt]\nissuer = \"https://issuer.test\"\naudience = \"cognito-gateway\"\njwks_file = \"{}\"\n[[callers]]\nname = \"system:serviceaccount:billing:api\"\nuser_pools = [\"*\"]\n",
        jwks.display()
    );
    let config = files.write("gateway.toml", &config_text);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut gateway = start_binary(
        &[
            "--local",
            "--config",
            config.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    let addr = metrics_addr(&gateway);
    let scrape = {
        let addr = addr.clone();
        move || http_get(&addr, "/metrics").1
    };
    let exposition = tokio::task::spawn_blocking(scrape.clone()).await.unwrap();
    assert_eq!(value(&exposition, "cognito_gateway_jwks_keys", &[]), 1.0);
    assert_eq!(
        value(
            &exposition,
            "cognito_gateway_jwks_refreshes_total",
            &[("outcome", "ok")]
        ),
        1.0
    );
    let loaded_at = value(&exposition, "cognito_gateway_jwks_loaded_at_seconds", &[]);
    assert!(loaded_at >= before.floor(), "{loaded_at} < {before}");

    // A file the next start would refuse: re-read within a second, and refused. (A change of the
    // file rather than SIGHUP: the signal's handler is installed only once the server runs, a
    // moment after SERVING.)
    std::fs::write(
        &config,
        format!("{config_text}[limits]\nbackend_rps = -1\n"),
    )
    .unwrap();
    let lines = std::mem::replace(&mut gateway.lines, std::sync::mpsc::channel().1);
    // Waits for the log line (at most 30 s, should it never come).
    let (refused, seen) = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        while let Ok(line) = lines.recv_timeout(Duration::from_secs(30)) {
            if line.contains("reload refused") {
                return (true, seen);
            }
            seen.push(line);
        }
        (false, seen)
    })
    .await
    .unwrap();
    assert!(refused, "no `reload refused` line: {seen:#?}");
    let exposition = tokio::task::spawn_blocking(scrape).await.unwrap();
    assert_eq!(
        value(
            &exposition,
            "cognito_gateway_config_reloads_total",
            &[("outcome", "refused")]
        ),
        1.0
    );
    let (code, _) = stop(gateway).await;
    assert_eq!(code, Some(0));
}
