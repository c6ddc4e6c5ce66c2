//! Compiles the .proto files with `protox` (pure Rust), so a fresh machine needs no `protoc`.
//! `tonic-prost-build` adds the gRPC client and server for services (the mesh data plane).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/rumor/gossip/v1/gossip.proto",
        "proto/rumor/mesh/v1/mesh.proto",
        "proto/rumor/events/v1/events.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let mut prost = prost_build::Config::new();
    prost.bytes(["."]);
    tonic_prost_build::configure()
        // No `connect(addr)` helper: it needs tonic's transport, and callers
        // build their own pooled channels.
        .build_transport(false)
        .compile_fds_with_config(fds, prost)?;
    Ok(())
}
