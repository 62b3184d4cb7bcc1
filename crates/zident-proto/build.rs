//! Compiles `proto/` with protox (pure Rust), so the build needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [
        "istio/v1/auth/ca.proto",
        "spiffe/workload.proto",
        "envoy/service/discovery/v3/ads.proto",
        "istio/workload/workload.proto",
        "istio/security/authorization.proto",
        "zident/mesh/mesh.proto",
        "zident/ca/v1/jwt.proto",
        "envoy/extensions/transport_sockets/tls/v3/secret.proto",
        "envoy/service/secret/v3/sds.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let descriptors = protox::compile(files, [&root])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
