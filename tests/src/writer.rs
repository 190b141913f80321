//! Loads the test-only option writer and attaches it to a cgroup with a
//! legacy (non-link) attachment, which lasts until the cgroup is removed, so
//! a lab built by `ttm-lab up` keeps working after the process exits.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use anyhow::{bail, Context as _, Result};
use aya::maps::Array;
use aya::programs::SockOps;
use aya::Ebpf;

static WRITER_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/toa-writer"));

pub use lab_ebpf::WriterConfig;

const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_CGROUP_SOCK_OPS: u32 = 3;
const BPF_F_ALLOW_MULTI: u32 = 2;

#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// The attached writer; its configuration can change while it runs.
pub struct Writer {
    ebpf: std::sync::Mutex<Ebpf>,
}

impl Writer {
    /// Makes the writer write `config` on connections from now on.
    pub fn set(&self, config: WriterConfig) -> Result<()> {
        let mut ebpf = self.ebpf.lock().unwrap_or_else(|e| e.into_inner());
        let mut map: Array<_, WriterConfig> = Array::try_from(
            ebpf.map_mut("WRITER_CONFIG")
                .context("WRITER_CONFIG missing")?,
        )?;
        map.set(0, config, 0).context("writing the writer config")?;
        Ok(())
    }

    /// Detaches the writer from `cgroup` (for tests that need the client's
    /// cgroup free of foreign programs).
    pub fn detach(&self, cgroup: &Path) -> Result<()> {
        let mut ebpf = self.ebpf.lock().unwrap_or_else(|e| e.into_inner());
        let program: &mut SockOps = ebpf
            .program_mut("toa_writer")
            .context("toa_writer missing")?
            .try_into()?;
        let prog_fd = program.fd()?.as_fd().as_raw_fd();
        let cg = File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
        let attr = ProgAttachAttr {
            target_fd: cg.as_raw_fd() as u32,
            attach_bpf_fd: prog_fd as u32,
            attach_type: BPF_CGROUP_SOCK_OPS,
            attach_flags: 0,
            replace_bpf_fd: 0,
        };
        // SAFETY: bpf(BPF_PROG_DETACH) with a correctly sized attribute.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_DETACH,
                &attr as *const ProgAttachAttr,
                std::mem::size_of::<ProgAttachAttr>(),
            )
        };
        if rc != 0 {
            bail!("BPF_PROG_DETACH: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Loads the writer with the default config and attaches it to `cgroup`.
pub fn attach(cgroup: &Path) -> Result<Writer> {
    let mut ebpf = Ebpf::load(WRITER_OBJECT).context("loading the option writer")?;
    let mut config: Array<_, WriterConfig> = Array::try_from(
        ebpf.map_mut("WRITER_CONFIG")
            .context("WRITER_CONFIG missing")?,
    )?;
    config.set(0, WriterConfig::TOA_V4, 0)?;
    let program: &mut SockOps = ebpf
        .program_mut("toa_writer")
        .context("toa_writer missing")?
        .try_into()?;
    program
        .load()
        .context("verifier rejected the option writer")?;
    let cg = File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
    let prog_fd = program.fd()?.as_fd().as_raw_fd();
    let attr = ProgAttachAttr {
        target_fd: cg.as_raw_fd() as u32,
        attach_bpf_fd: prog_fd as u32,
        attach_type: BPF_CGROUP_SOCK_OPS,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    // SAFETY: bpf(BPF_PROG_ATTACH) with a correctly sized attribute.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const ProgAttachAttr,
            std::mem::size_of::<ProgAttachAttr>(),
        )
    };
    if rc != 0 {
        bail!(
            "BPF_PROG_ATTACH to {}: {}",
            cgroup.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(Writer {
        ebpf: std::sync::Mutex::new(ebpf),
    })
}
