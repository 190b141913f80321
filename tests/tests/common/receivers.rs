//! Real receivers the lab tests run on the real server: Go net/http built
//! from the module's example, and the Python virtualenv with the package.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `go` with its caches under target/ (nothing written to $HOME).
pub fn go(dir: &Path, args: &[&str]) -> Output {
    let target = repo().join("target");
    Command::new("go")
        .args(args)
        .current_dir(dir)
        .env("GOCACHE", target.join("go-cache"))
        .env("GOPATH", target.join("go-path"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .output()
        .expect("run go (the bootstrap installs golang-go)")
}

/// [`go`], failing the test with go's output if it fails.
pub fn go_ok(dir: &Path, args: &[&str]) {
    let out = go(dir, args);
    assert!(
        out.status.success(),
        "go {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the Go module's example net/http server (`ADDR [plain]`: prints
/// "listening", then each request's `RemoteAddr` on a line).
pub fn go_example_server() -> PathBuf {
    let out = repo()
        .join("target")
        .join("go-bin")
        .join("ttm-example-server");
    go_ok(
        &repo().join("go/ttm"),
        &[
            "build",
            "-o",
            out.to_str().expect("path"),
            "./example/server",
        ],
    );
    out
}

/// The virtualenv the bootstrap prepares (fastapi, uvicorn, websockets),
/// with the Python package installed into it from the path.
pub fn venv_python() -> PathBuf {
    let venv = repo().join("target/pyenv");
    let pip = venv.join("bin/pip");
    assert!(
        pip.exists(),
        "{} missing: `cargo xtask bootstrap` prepares it",
        venv.display()
    );
    let out = Command::new(&pip)
        .args(["install", "-q", "--no-deps", "--force-reinstall"])
        .arg(repo().join("python"))
        .output()
        .expect("pip");
    assert!(
        out.status.success(),
        "pip install ./python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    venv.join("bin/python")
}
