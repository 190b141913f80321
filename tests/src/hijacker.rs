//! Foreign programs for `ttm verify` tests: a hijacker (attached to a
//! cgroup, every getpeername() there returns 127.0.0.1:65535) and a harmless
//! sock_create hook. Dropping the value detaches the program.

use std::fs::File;
use std::path::Path;

use anyhow::{Context as _, Result};
use aya::programs::{links::CgroupAttachMode, CgroupSock, CgroupSockAddr};
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

/// The attached harmless program.
pub struct Harmless {
    _ebpf: Ebpf,
}

impl Harmless {
    /// Attaches a sock_create hook that allows everything to `cgroup`.
    pub fn attach(cgroup: &Path) -> Result<Harmless> {
        let mut ebpf = Ebpf::load(OBJECT).context("loading the lab object")?;
        let program: &mut CgroupSock = ebpf
            .program_mut("harmless_sock_create")
            .context("harmless_sock_create missing")?
            .try_into()?;
        program.load().context("loading the harmless program")?;
        let cg = File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
        program
            .attach(&cg, CgroupAttachMode::Single)
            .context("attaching the harmless program")?;
        Ok(Harmless { _ebpf: ebpf })
    }
}
