//! Generates the protobuf types from `proto/*.proto` with a pure-Rust
//! compiler (protox), so a fresh machine needs no `protoc`: the `.proto`
//! files are the one definition of the wire and journal formats.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = "../../proto";
    println!("cargo:rerun-if-changed={proto_dir}");
    let descriptors = protox::compile(["farestream.proto", "journal.proto"], [proto_dir])?;
    // A terminal key's Debug is written by hand (src/wire/messages.rs): a
    // derived one would print its secret into any log that shows it.
    prost_build::Config::new().skip_debug([".farestream.v1.TerminalKey"]).compile_fds(descriptors)?;
    Ok(())
}
