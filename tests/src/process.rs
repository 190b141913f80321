//! Spawning lab processes inside a cgroup and a network namespace.

use std::ffi::CString;
use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

/// Makes `cmd` join `cgroup` and then network namespace `netns` before exec.
/// (cgroup first: the socket's cgroup decides which sockops programs run.)
pub fn place(cmd: &mut Command, cgroup: &Path, netns: &str) {
    let procs = CString::new(
        cgroup
            .join("cgroup.procs")
            .to_string_lossy()
            .as_bytes()
            .to_vec(),
    )
    .expect("cgroup path has no NUL");
    let ns = CString::new(format!("/run/netns/{netns}")).expect("netns name has no NUL");
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let ok = libc::write(fd, b"0\n".as_ptr().cast(), 2) == 2;
            libc::close(fd);
            if !ok {
                return Err(std::io::Error::last_os_error());
            }
            let nsfd = libc::open(ns.as_ptr(), libc::O_RDONLY);
            if nsfd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let rc = libc::setns(nsfd, libc::CLONE_NEWNET);
            libc::close(nsfd);
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Spawns `program args` inside `cgroup` and `netns`.
pub fn spawn_in(program: &Path, cgroup: &Path, netns: &str, args: &[&str]) -> Result<Guarded> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    place(&mut cmd, cgroup, netns);
    Guarded::spawn(cmd)
}

/// Serialises lab tests inside one test binary (they share namespace names).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A child process killed on drop, with its stdout read line by line.
pub struct Guarded {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Guarded {
    /// Spawns `cmd` with piped stdin/stdout.
    pub fn spawn(mut cmd: Command) -> Result<Guarded> {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        let stdout: ChildStdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Guarded { child, lines })
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next stdout line, waiting at most `timeout` (scaled, see
    /// [`scaled`]).
    pub fn line(&self, timeout: Duration) -> Result<String> {
        let timeout = scaled(timeout);
        self.lines
            .recv_timeout(timeout)
            .with_context(|| format!("no output from pid {} within {timeout:?}", self.child.id()))
    }

    /// Reads lines until one satisfies `pred`, within `timeout` overall.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Result<String> {
        let timeout = scaled(timeout);
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("timed out after {timeout:?} waiting for output");
            }
            let line = self.line(left)?;
            if pred(&line) {
                return Ok(line);
            }
        }
    }

    /// Writes `line` and a newline to the child's stdin.
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        use std::io::Write as _;
        let stdin = self
            .child
            .stdin
            .as_mut()
            .context("the child's stdin is closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Closes the child's stdin (the lab helpers treat that as "finish").
    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    /// Sends `signal` to the child.
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits for exit, at most `timeout`; kills it after that.
    pub fn wait(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let timeout = scaled(timeout);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!(
                    "pid {} did not exit within {timeout:?}; killed",
                    self.child.id()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `timeout` times `$TTM_TIMEOUT_SCALE` (default 1): the kernel matrix sets
/// it inside QEMU, where processes start and run many times slower than on
/// the host, so a wait that is ample here is not cut short there.
pub fn scaled(timeout: Duration) -> Duration {
    static SCALE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let scale = *SCALE.get_or_init(|| {
        std::env::var("TTM_TIMEOUT_SCALE")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&s| s >= 1)
            .unwrap_or(1)
    });
    timeout * scale
}
