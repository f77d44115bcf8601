//! Generates the protobuf types from `proto/*.proto` with a pure-Rust
//! compiler (protox), so a fresh machine needs no `protoc`: the `.proto`
//! files are the one definition of the wire and journal formats.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = "../../proto";
    println!("cargo:rerun-if-changed={proto_dir}");
    let descriptors = protox::compile(["farestream.proto", "journal.proto"], [proto_dir])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
