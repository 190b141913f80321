use which::which;

/// Rebuilds the eBPF object when bpf-linker changes (it is the linker cargo
/// invokes for the bpf target, so cargo does not track it otherwise).
fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
