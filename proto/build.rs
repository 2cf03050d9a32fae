//! Compiles `echo/v1/*.proto` without a system `protoc`: `protox` (a pure-Rust protobuf
//! compiler) parses the files into a `FileDescriptorSet`, which `tonic-prost-build` turns
//! into prost messages plus the tonic client and server. The encoded descriptor set is also
//! written to `OUT_DIR` for `echo_proto::FILE_DESCRIPTOR_SET` (gRPC reflection, tooling).

use std::{env, fs, path::PathBuf};

use prost::Message as _;

const PROTO_ROOT: &str = ".";
const PROTOS: &[&str] = &[
    "echo/v1/common.proto",
    "echo/v1/trading.proto",
    "echo/v1/market_data.proto",
    "echo/v1/link.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=echo");
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }

    let fds = protox::compile(PROTOS, [PROTO_ROOT])?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("echo_v1_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // The rpc is named `Connect`, which would clash with the generated
        // `EchoLinkClient::connect(endpoint)` constructor. Without it, callers build the
        // client from a channel: `EchoLinkClient::new(endpoint.connect().await?)`. This
        // also keeps tonic's transport feature out of this crate.
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
