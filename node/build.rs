//! Compiles proto/bftd.proto for the gRPC API (runtime/grpc.rs) with protox,
//! a pure-Rust protobuf compiler: building bftd needs no `protoc` binary.

#[cfg(feature = "grpc")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/bftd.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["../proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}

#[cfg(not(feature = "grpc"))]
fn main() {}
