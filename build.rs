//! Compiles the gRPC API with `protox` (pure Rust), so no system `protoc` is needed, and writes the
//! descriptor set that server reflection serves.

use std::{env, fs, path::PathBuf};

use prost::Message as _;

const PROTO: &str = "proto/cognitogateway/v1/user_admin.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile([PROTO], ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("user_admin_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // Usernames and client metadata are sensitive: the generated `Debug` must not print them.
        .skip_debug(["cognitogateway.v1.ResetUserPasswordRequest"])
        .compile_fds(fds)?;
    Ok(())
}
