//! Builds what the agent embeds: the eBPF object (through aya-build, with
//! the nightly toolchain and bpf-linker) and the pprof and Pyroscope push
//! message types (through prost-build; protox parses the .proto files, so
//! no system `protoc` is needed).
use std::path::PathBuf;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent().context("agent/ has no parent")?;

    let proto_dir = workspace.join("proto");
    let protos = [
        proto_dir.join("profile.proto"),
        proto_dir.join("pyroscope/push.proto"),
    ];
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    let descriptors = protox::compile(&protos, [&proto_dir]).context("parsing proto/")?;
    prost_build::Config::new()
        .compile_fds(descriptors)
        .context("generating protobuf types")?;

    // aya-build relays every line the nested cargo prints as a warning;
    // keep that to real diagnostics.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    let ebpf_dir = workspace.join("ebpf").join("hearth-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 workspace path")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "hearth-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF programs: run `cargo xtask setup` if the nightly toolchain, \
         rust-src or bpf-linker is missing",
    )
}
