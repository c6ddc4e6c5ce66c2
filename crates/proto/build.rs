//! Compiles the .proto files with `protox` (pure Rust), so a fresh machine needs no `protoc`.
//!
//! - `prost-build` makes the message types of every package.
//! - With the `grpc` feature, `tonic-prost-build` adds the gRPC client and
//!   server of the mesh service; without it nothing here depends on tonic,
//!   so the pure protocol crates stay free of any async runtime.
//! - `pbjson-build` adds serde implementations that follow the proto3 JSON
//!   mapping to the packages that travel as JSON (the HTTP APIs' bodies).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/rumor/gossip/v1/gossip.proto",
        "proto/rumor/mesh/v1/mesh.proto",
        "proto/rumor/events/v1/events.proto",
        "proto/rumor/api/v1/api.proto",
        "proto/rumor/edge/v1/edge.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut prost = prost_build::Config::new();
    prost.bytes(["."]);
    if std::env::var_os("CARGO_FEATURE_GRPC").is_some() {
        tonic_prost_build::configure()
            // No `connect(addr)` helper: it needs tonic's transport, and
            // callers build their own pooled channels.
            .build_transport(false)
            .compile_fds_with_config(fds.clone(), prost)?;
    } else {
        prost.compile_fds(fds.clone())?;
    }

    let descriptors = prost::Message::encode_to_vec(&fds);
    // Kept for the OpenAPI documents, whose schemas come from these types.
    std::fs::write(out.join("descriptors.bin"), &descriptors)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .out_dir(&out)
        .preserve_proto_field_names()
        // Every field appears, with its default value when unset (`null`
        // for an absent message or optional field), so a reader sees the
        // whole shape of each body.
        .emit_fields()
        // A newer client's fields are ignored by an older server, as in the
        // binary encoding.
        .ignore_unknown_fields()
        .build(&[".rumor.api"])?;
    // The client edge's frames travel as JSON to every client, many per
    // reply: fields at their default values are left out.
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .out_dir(&out)
        .preserve_proto_field_names()
        .ignore_unknown_fields()
        .build(&[".rumor.edge"])?;
    Ok(())
}
