//! The server around the API: health, reflection, hardening against bad input, graceful shutdown,
//! and what reaches the logs.

use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use cognito_gateway::{app::SERVICE_NAME, config::CognitoSettings, telemetry};
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tracing_subscriber::{Layer as _, filter::FilterFn, layer::SubscriberExt as _};
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{header, method},
};

use crate::{
    helpers::{error_info, eventually, raw},
    kit::{
        app::{
            TestApp, request, sdk_backend, spawn_app, spawn_app_with, test_config, test_settings,
        },
        fake_cognito::{TARGET, cognito_ok, fake_cognito},
    },
};

const RESET_PATH: &str = "/cognitogateway.v1.UserAdminService/ResetUserPassword";

async fn health(app: &TestApp, service: &str) -> ServingStatus {
    let mut client = HealthClient::new(app.channel.clone());
    let response = client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap();
    response.into_inner().status()
}

#[tokio::test]
async fn health_serves_overall_and_per_service() {
    let server = fake_cognito(cognito_ok("rid")).await;
    let app = spawn_app(&server.uri()).await;
    assert_eq!(health(&app, "").await, ServingStatus::Serving);
    assert_eq!(health(&app, SERVICE_NAME).await, ServingStatus::Serving);
    let unknown = HealthClient::new(app.channel.clone())
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_the_api() {
    use tonic_reflection::pb::{v1, v1alpha};
    let server = fake_cognito(cognito_ok("rid")).await;
    let app = spawn_app(&server.uri()).await;

    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(app.channel.clone());
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        stream.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&SERVICE_NAME), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                SERVICE_NAME.to_owned(),
            ),
        ),
    };
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(app.channel.clone());
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.next().await.unwrap().unwrap().message_response;
    assert!(
        matches!(response, Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
        "{response:?}"
    );
}

#[tokio::test]
async fn malformed_messages_get_a_clear_status_and_the_server_lives_on() {
    let server = fake_cognito(cognito_ok("rid")).await;
    let app = spawn_app(&server.uri()).await;

    // Not protobuf at all.
    let reply = raw::call(app.addr, RESET_PATH, &[0xff, 0xff, 0xff, 0xff, 0x0f], &[]).await;
    let status = reply.status.expect("a gRPC status");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(error_info(&status).reason, "MALFORMED_REQUEST");

    // Invalid UTF-8 in a string field (field 2, length 2).
    let reply = raw::call(app.addr, RESET_PATH, &[0x12, 0x02, 0xc3, 0x28], &[]).await;
    assert_eq!(
        error_info(&reply.status.unwrap()).reason,
        "MALFORMED_REQUEST"
    );

    // A frame that announces more than the limit.
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(64 * 1024 * 1024u32).to_be_bytes());
    let reply = raw::call_framed(app.addr, RESET_PATH, framed, &[]).await;
    let status = reply.status.expect("a gRPC status");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        error_info(&status).reason,
        "MESSAGE_TOO_LARGE",
        "{status:?}"
    );

    // An unknown method.
    let reply = raw::call(
        app.addr,
        "/cognitogateway.v1.UserAdminService/Nope",
        &[],
        &[],
    )
    .await;
    let status = reply.status.expect("a gRPC status");
    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(error_info(&status).reason, "UNKNOWN_METHOD");

    // And a good call still works, none of the above reached Cognito.
    assert_eq!(crate::kit::fake_cognito::sends(&server).await, 0);
    app.reset("us-east-1_Pool1", "alice").await.unwrap();
}

#[tokio::test]
async fn shutdown_turns_health_off_and_lets_in_flight_calls_finish() {
    let server = fake_cognito(cognito_ok("rid").set_delay(Duration::from_millis(300))).await;
    let mut app = spawn_app(&server.uri()).await;
    let mut watch = HealthClient::new(app.channel.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );

    let call = {
        let client = app.client.clone();
        tokio::spawn(async move {
            let mut client = client;
            client
                .reset_user_password(request("us-east-1_Pool1", "alice"))
                .await
        })
    };
    eventually("the call to reach Cognito", || async {
        crate::kit::fake_cognito::sends(&server).await == 1
    })
    .await;
    app.begin_shutdown();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status(),
        ServingStatus::NotServing
    );
    // The watch ends there, so that it does not hold the connection (and the shutdown) open.
    assert!(watch.next().await.is_none(), "the watch stream ended");
    let response = call.await.unwrap().expect("the in-flight call finishes");
    assert_eq!(response.into_inner().cognito_request_id, "rid");
    app.handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn shutdown_is_bounded_by_the_grace_period() {
    let server = fake_cognito(cognito_ok("rid").set_delay(Duration::from_secs(60))).await;
    let mut config = test_config();
    config.server.shutdown_grace = Duration::from_millis(200);
    config.cognito = CognitoSettings {
        operation_timeout: Duration::from_secs(120),
        ..test_settings()
    };
    let backend = sdk_backend(&server.uri(), config.cognito.clone()).await;
    let mut app = spawn_app_with(config, backend).await;
    let _call = {
        let mut client = app.client.clone();
        tokio::spawn(async move {
            client
                .reset_user_password(request("us-east-1_Pool1", "alice"))
                .await
        })
    };
    eventually("the call to reach Cognito", || async {
        crate::kit::fake_cognito::sends(&server).await == 1
    })
    .await;
    app.begin_shutdown();
    // The backend would answer after 60 s; `run` returns after the 200 ms grace, and the binary
    // then exits, taking the connection (a task of its own) with it.
    tokio::time::timeout(Duration::from_secs(10), app.handle)
        .await
        .expect("shutdown is bounded")
        .unwrap()
        .unwrap();
}

/// A `MakeWriter` into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Runs calls that exercise success, caller-side and server-side failures, with every event at
/// every level recorded, and returns the log text. `capped` applies the gateway's own cap.
fn logs_of_calls(capped: bool) -> String {
    const USER: &str = "jane.secret-person@example.com";
    const METADATA: &str = "tenant-secret-value";
    let captured = Captured::default();
    let writer = captured.clone();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(move || writer.clone())
        .with_ansi(false);
    let cap = FilterFn::new(move |m| !capped || telemetry::allowed(m));
    let subscriber = tracing_subscriber::registry().with(
        fmt.with_filter(cap)
            .with_filter(tracing_subscriber::filter::LevelFilter::TRACE),
    );
    let _guard = tracing::subscriber::set_default(subscriber);
    // One thread: everything the server and the SDK spawn runs under the subscriber above.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = MockServer::start().await;
        // Cognito quoting the username back, as its validation and Lambda messages can.
        Mock::given(method("POST"))
        .and(header("x-amz-target", TARGET))
            .respond_with(
                ResponseTemplate::new(400)
                    .insert_header("x-amzn-ErrorType", "UnexpectedLambdaException")
                    .set_body_raw(
                        format!(r#"{{"__type":"UnexpectedLambdaException","message":"lambda failed for {USER} ({METADATA})"}}"#),
                        "application/x-amz-json-1.1",
                    ),
            )
            .up_to_n_times(1)
            .with_priority(1)
            .mount(&server)
            .await;
        Mock::given(method("POST"))
        .and(header("x-amz-target", TARGET)).respond_with(cognito_ok("rid")).with_priority(2).mount(&server).await;
        let app = spawn_app(&server.uri()).await;
        let mut with_metadata = request("us-east-1_Pool1", USER);
        with_metadata.client_metadata.insert("tenant".into(), METADATA.into());
        let failed = app.reset_request(with_metadata.clone()).await.unwrap_err();
        assert_eq!(failed.code(), Code::Internal);
        app.reset_request(with_metadata).await.unwrap();
        let invalid = app.reset("us-east-1_Pool1", &format!("{USER} ")).await.unwrap_err();
        assert_eq!(invalid.code(), Code::InvalidArgument);
        app.stop().await.unwrap();
    });
    let text = captured.text();
    assert!(
        text.contains("ResetUserPassword"),
        "the calls were logged: {text}"
    );
    text
}

#[test]
fn no_username_or_metadata_reaches_the_logs_at_any_level() {
    let text = logs_of_calls(true);
    assert!(
        text.contains("LAMBDA_FAILED"),
        "the server-side failure was logged: {text}"
    );
    assert!(!text.contains("secret-person"), "username leaked:\n{text}");
    assert!(
        !text.contains("tenant-secret-value"),
        "metadata leaked:\n{text}"
    );
}

#[test]
fn the_cap_on_dependency_logs_is_what_keeps_them_out() {
    // Without the cap, the SDK's own trace output does carry the request: the cap is load-bearing.
    let text = logs_of_calls(false);
    assert!(
        text.contains("secret-person"),
        "expected the uncapped SDK logs to show the request"
    );
}

#[tokio::test]
async fn http2_limits_are_advertised() {
    let server = fake_cognito(cognito_ok("rid")).await;
    let mut config = test_config();
    config.server.max_concurrent_streams = 7;
    let backend = sdk_backend(&server.uri(), test_settings()).await;
    let app = spawn_app_with(config, backend).await;
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (_send, mut connection) = h2::client::handshake(tcp).await.unwrap();
    // Drive the connection until the server's SETTINGS frame has been read.
    tokio::time::timeout(
        Duration::from_secs(10),
        std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(result) = std::pin::Pin::new(&mut connection).poll(cx) {
                panic!("connection ended early: {result:?}");
            }
            if connection.max_concurrent_send_streams() == 7 {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        }),
    )
    .await
    .expect("the server advertises SETTINGS_MAX_CONCURRENT_STREAMS = 7");
}

#[tokio::test]
async fn a_health_only_listener_serves_probes_and_nothing_else() {
    let server = fake_cognito(cognito_ok("rid")).await;
    let mut config = test_config();
    config.health_listen = Some("127.0.0.1:0".parse().unwrap());
    let backend = sdk_backend(&server.uri(), test_settings()).await;
    let mut app = spawn_app_with(config, backend).await;
    let health_addr = app.health_addr.expect("bound");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{health_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut probe = HealthClient::new(channel.clone());
    let check = |service: &str| HealthCheckRequest {
        service: service.to_owned(),
    };
    assert_eq!(
        probe.check(check("")).await.unwrap().into_inner().status(),
        ServingStatus::Serving
    );
    assert_eq!(
        probe
            .check(check(SERVICE_NAME))
            .await
            .unwrap()
            .into_inner()
            .status(),
        ServingStatus::Serving
    );

    // The API is not reachable there.
    let mut api =
        cognito_gateway::proto::user_admin_service_client::UserAdminServiceClient::new(channel);
    let status = api
        .reset_user_password(request("us-east-1_Pool1", "alice"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    assert_eq!(error_info(&status).reason, "UNKNOWN_METHOD");

    // On shutdown it reports NOT_SERVING while in-flight calls finish.
    let mut watch = probe.watch(check("")).await.unwrap().into_inner();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
    app.begin_shutdown();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status(),
        ServingStatus::NotServing
    );
    assert_eq!(crate::kit::fake_cognito::sends(&server).await, 0);
}

#[tokio::test]
async fn a_call_whose_body_never_comes_is_ended_and_frees_its_place() {
    let server = fake_cognito(cognito_ok("rid")).await;
    let mut config = test_config();
    config.limits.max_in_flight = 1;
    config.server.request_timeout = Duration::from_millis(500);
    let backend = sdk_backend(&server.uri(), test_settings()).await;
    let app = spawn_app_with(config, backend).await;

    // Headers, then silence: no body, no end of stream, no grpc-timeout.
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (send, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    let request = http::Request::post(format!("http://{}{RESET_PATH}", app.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, _body_sender) = send.send_request(request, false).unwrap();

    // It holds the only place meanwhile.
    eventually("the silent call to hold the place", || async {
        app.reset("us-east-1_Pool1", "probe")
            .await
            .is_err_and(|s| error_info(&s).reason == "OVERLOADED")
    })
    .await;
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("the server ends it")
        .unwrap();
    let status =
        tonic::Status::from_header_map(response.headers()).expect("a trailers-only status");
    assert_eq!(status.code(), Code::DeadlineExceeded);
    // And the place is free again.
    app.reset("us-east-1_Pool1", "alice").await.unwrap();
}
