use anyhow::{anyhow, Context as _};
use aya_build::Toolchain;

/// Builds the test-only option writer (lab-ebpf) into OUT_DIR.
fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let package = packages
        .into_iter()
        .find(|p| p.name.as_str() == "lab-ebpf")
        .ok_or_else(|| anyhow!("lab-ebpf package not found"))?;
    let root = package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", package.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: package.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
