//! # echo-proto — Echo's wire contract
//!
//! This crate owns the protobuf contract between Echo's processes and nothing else: the
//! `.proto` files under `proto/echo/v1/` (package `echo.v1`) and the Rust code generated
//! from them by prost and tonic — the messages, the enums, and the `EchoLink` gRPC service
//! (one bidirectional stream, `Connect(stream AgentToCore) returns (stream CoreToAgent)`)
//! with its generated client ([`v1::echo_link_client`]) and server ([`v1::echo_link_server`]).
//!
//! It must never contain logic: no routing, retry, backoff, ack-stage or validation rules
//! (those live in `echo-statemachine`), no IO, sockets, clocks or tasks (those live in
//! `echo-runtime`), and no hand-written conversions that make decisions. It must never
//! renumber or reuse a published field number or enum value: peers of different versions
//! talk over this contract, and journals store its enum values.
//!
//! The code is generated at build time by `build.rs` with `protox` (a pure-Rust protobuf
//! compiler), so no system `protoc` is needed.

/// Version of the contract in this crate, sent in `AgentHello.protocol_version` and
/// `CoreHello.protocol_version`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The encoded `google.protobuf.FileDescriptorSet` of every file in package `echo.v1`
/// (with its imports), e.g. for a gRPC reflection service or for decoding in tools.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/echo_v1_descriptor.bin"));

/// Package `echo.v1`: generated messages, enums, and the `EchoLink` client and server.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    rustdoc::all
)]
pub mod v1 {
    tonic::include_proto!("echo.v1");
}
