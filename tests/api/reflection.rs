//! Reflection as a dynamic client (grpcurl, Postman) uses it to decode an error: the status's
//! `grpc-status-details-bin` is a `google.rpc.Status` whose details are `Any`s naming
//! `google.rpc.ErrorInfo`, `RetryInfo`, ...; the client asks for the file that holds each message,
//! then for every file that file imports, until it has them all.

use std::collections::BTreeMap;

use prost::Message as _;
use prost_types::FileDescriptorProto;
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use crate::kit::{
    app::spawn_app,
    fake_cognito::{cognito_ok, fake_cognito},
};

/// One reflection request, and the files its answer holds (decoded).
async fn ask(
    client: &mut ServerReflectionClient<Channel>,
    request: MessageRequest,
) -> Vec<FileDescriptorProto> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request.clone()),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.next().await.unwrap().unwrap().message_response;
    let Some(MessageResponse::FileDescriptorResponse(files)) = response else {
        panic!("no file for this request: {response:?}");
    };
    files
        .file_descriptor_proto
        .iter()
        .map(|bytes| FileDescriptorProto::decode(bytes.as_slice()).unwrap())
        .collect()
}

#[tokio::test]
async fn reflection_resolves_the_error_details_and_every_file_they_import() {
    let server = fake_cognito(cognito_ok("rid")).await;
    let app = spawn_app(&server.uri()).await;
    let mut client = ServerReflectionClient::new(app.channel.clone());

    let mut files: BTreeMap<String, FileDescriptorProto> = BTreeMap::new();
    for symbol in ["google.rpc.Status", "google.rpc.ErrorInfo"] {
        let mut pending = ask(
            &mut client,
            MessageRequest::FileContainingSymbol(symbol.to_owned()),
        )
        .await;
        while let Some(file) = pending.pop() {
            for import in &file.dependency {
                if !files.contains_key(import) {
                    pending.extend(
                        ask(&mut client, MessageRequest::FileByFilename(import.clone())).await,
                    );
                }
            }
            files.insert(file.name().to_owned(), file);
        }
    }
    assert_eq!(
        files.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "google/protobuf/any.proto",
            "google/protobuf/duration.proto",
            "google/rpc/error_details.proto",
            "google/rpc/status.proto",
        ]
    );

    // Every detail the gateway sends (docs/api.md) is described, and ErrorInfo as the wire has it.
    let details = &files["google/rpc/error_details.proto"];
    assert_eq!(details.package(), "google.rpc");
    let messages: Vec<_> = details.message_type.iter().map(|m| m.name()).collect();
    for sent in [
        "ErrorInfo",
        "RetryInfo",
        "BadRequest",
        "QuotaFailure",
        "PreconditionFailure",
        "ResourceInfo",
        "RequestInfo",
    ] {
        assert!(messages.contains(&sent), "{sent} missing from {messages:?}");
    }
    let error_info = details
        .message_type
        .iter()
        .find(|m| m.name() == "ErrorInfo")
        .unwrap();
    let fields: Vec<_> = error_info
        .field
        .iter()
        .map(|f| (f.name(), f.number()))
        .collect();
    assert_eq!(fields, [("reason", 1), ("domain", 2), ("metadata", 3)]);

    // The API's own file is still served, and names the options other languages generate with.
    let api = ask(
        &mut client,
        MessageRequest::FileContainingSymbol("cognitogateway.v1.UserAdminService".to_owned()),
    )
    .await;
    assert_eq!(api[0].name(), "cognitogateway/v1/user_admin.proto");
    let options = api[0].options.as_ref().unwrap();
    assert!(options.go_package().ends_with(";cognitogatewayv1"));
    assert_eq!(options.java_package(), "com.cognitogateway.v1");
}
