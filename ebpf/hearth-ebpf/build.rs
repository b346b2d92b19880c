//! Rebuild the programs when the `bpf-linker` that links them changes.
fn main() {
    // Without bpf-linker the build fails later with a linker error; say what to do now.
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!(
            "cargo:warning=bpf-linker is not on PATH; run `cargo xtask setup` to install it"
        ),
    }
}
