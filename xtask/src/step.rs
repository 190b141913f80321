//! One printed line per setup step. What a step's command prints (apt,
//! dpkg, rustup, cargo install, pip) goes to a log file under `target/`; when
//! the step fails, the error names that file and quotes its last lines.

use std::fs::{self, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

/// How many of the log's last lines a failed step quotes.
const TAIL_LINES: usize = 20;

/// The log of every setup step's output: `target/xtask-setup.log`.
pub fn log_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/xtask-setup.log")
}

/// Prints `line`, then runs `cmd` with its output in the log.
pub fn run(line: &str, cmd: &mut Command) -> Result<()> {
    println!("{line}");
    quiet(cmd)
}

/// Runs `cmd` with its output appended to the log; on failure the error
/// carries the log's path and the command's last lines.
pub fn quiet(cmd: &mut Command) -> Result<()> {
    let path = log_path();
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(log, "\n$ {cmd:?}")?;
    let start = log.metadata()?.len();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?)
        .status()
        .with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!(
            "{cmd:?} failed ({status}); its output is in {}, ending:\n{}",
            path.display(),
            tail(&path, start)
        );
    }
    Ok(())
}

/// The last lines written to `path` after byte `start`.
fn tail(path: &std::path::Path, start: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.seek(SeekFrom::Start(start));
        let mut bytes = Vec::new();
        let _ = f.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_step_names_the_log_and_quotes_its_last_lines() {
        let err = quiet(Command::new("sh").args([
            "-c",
            "echo first; for i in $(seq 1 30); do echo line$i; done; exit 3",
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("xtask-setup.log"), "{err}");
        let quoted = err.split_once("ending:\n").expect("the quoted tail").1;
        let expected: Vec<String> = (11..=30).map(|i| format!("line{i}")).collect();
        assert_eq!(quoted, expected.join("\n"), "{err}");
    }

    #[test]
    fn a_step_that_succeeds_leaves_its_output_in_the_log() {
        quiet(Command::new("sh").args(["-c", "echo quiet-step-output"])).unwrap();
        let log = fs::read_to_string(log_path()).unwrap();
        assert!(log.contains("quiet-step-output"));
    }
}
