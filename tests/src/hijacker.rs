//! A foreign program that rewrites peer addresses, for `ttm verify` tests:
//! attached to a cgroup, every getpeername() there returns 127.0.0.1.
//! Dropping the value detaches it.

use std::fs::File;
use std::path::Path;

use anyhow::{Context as _, Result};
use aya::programs::{links::CgroupAttachMode, CgroupSockAddr};
use aya::Ebpf;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/toa-writer"));

/// The attached hijacker.
pub struct Hijacker {
    _ebpf: Ebpf,
}

impl Hijacker {
    /// Attaches the hijacker to `cgroup`.
    pub fn attach(cgroup: &Path) -> Result<Hijacker> {
        let mut ebpf = Ebpf::load(OBJECT).context("loading the lab object")?;
        let program: &mut CgroupSockAddr = ebpf
            .program_mut("hijack_getpeername4")
            .context("hijack_getpeername4 missing")?
            .try_into()?;
        program.load().context("loading the hijacker")?;
        let cg = File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
        program
            .attach(&cg, CgroupAttachMode::Single)
            .context("attaching the hijacker")?;
        Ok(Hijacker { _ebpf: ebpf })
    }
}
