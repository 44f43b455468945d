//! Compiles the gRPC API with `protox` (pure Rust), so no system `protoc` is needed, and writes the
//! descriptor set that server reflection serves.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

const API: &str = "proto/cognitogateway/v1/user_admin.proto";

/// The error details every non-OK status carries (vendored from googleapis): reflection serves them
/// beside the API so that grpcurl and other dynamic clients can decode `grpc-status-details-bin`.
/// Their Rust types come from `tonic-types`, so no code is generated for them here.
const ERROR_DETAILS: [&str; 2] = [
    "proto/google/rpc/status.proto",
    "proto/google/rpc/error_details.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // With their imports (google/protobuf/any.proto, duration.proto), which protox carries.
    let reflected = protox::compile([API].into_iter().chain(ERROR_DETAILS), ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("reflection_descriptor.bin"),
        reflected.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        // Usernames and client metadata are sensitive: the generated `Debug` must not print them.
        .skip_debug(["cognitogateway.v1.ResetUserPasswordRequest"])
        .compile_fds(protox::compile([API], ["proto"])?)?;
    Ok(())
}
