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

/// One of the lab object's foreign test programs, attached; detached on drop.
pub struct Foreign {
    _ebpf: Ebpf,
}

impl Foreign {
    /// The bench's TC floor: `empty_tc` on the ingress of `iface` in
    /// network namespace `netns`, as a tcx link (Linux 6.6+) this value
    /// holds; detached on drop, wherever it is dropped.
    pub fn tc_floor(netns: &str, iface: &str) -> Result<(Foreign, std::os::fd::OwnedFd)> {
        use std::os::fd::AsFd;
        let mut ebpf = Ebpf::load(OBJECT).context("loading the lab object")?;
        let program: &mut aya::programs::SchedClassifier = ebpf
            .program_mut("empty_tc")
            .context("empty_tc missing")?
            .try_into()?;
        program.load().context("loading empty_tc")?;
        let prog = program.fd()?.as_fd().try_clone_to_owned()?;
        let (netns, iface) = (netns.to_string(), iface.to_string());
        // The interface index and the link belong to the namespace of the
        // thread that makes them: a thread of their own, in `netns`.
        let link = std::thread::spawn(move || -> Result<std::os::fd::OwnedFd> {
            let ns = File::open(format!("/run/netns/{netns}"))?;
            // SAFETY: a namespace descriptor; changes only this thread.
            if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) } != 0
            {
                return Err(std::io::Error::last_os_error()).context("entering the namespace");
            }
            let index = ttm::tc::ifindex(&iface)?;
            Ok(ttm::links::create_tcx(prog.as_fd(), index, false)?)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("attaching the TC floor panicked"))??;
        Ok((Foreign { _ebpf: ebpf }, link))
    }

    /// Attaches sock_addr program `name` (e.g. `rewrite_bind4`) to `cgroup`.
    pub fn on_cgroup(name: &str, cgroup: &Path) -> Result<Foreign> {
        let mut ebpf = Ebpf::load(OBJECT).context("loading the lab object")?;
        let program: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .with_context(|| format!("{name} missing"))?
            .try_into()?;
        program.load().with_context(|| format!("loading {name}"))?;
        let cg = File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
        program
            .attach(&cg, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name}"))?;
        Ok(Foreign { _ebpf: ebpf })
    }

    /// The bench's sockhash floor: passive connections to `port` under
    /// `cgroup` kept in a sockhash whose stream verdict passes every segment
    /// (`floor_sockhash`, `pass_verdict`): what the kernel's sockmap receive
    /// path costs with no work in the program.
    pub fn sockhash_floor(cgroup: &Path, port: u16) -> Result<Foreign> {
        use aya::maps::{Array, SockHash};
        use aya::programs::{SkSkb, SockOps};
        let mut ebpf = Ebpf::load(OBJECT).context("loading the lab object")?;
        let mut ports: Array<_, u32> =
            Array::try_from(ebpf.map_mut("FLOOR_PORT").context("FLOOR_PORT missing")?)?;
        ports.set(0, u32::from(port), 0)?;
        let socks: SockHash<_, u64> =
            SockHash::try_from(ebpf.map("FLOOR_SOCKS").context("FLOOR_SOCKS missing")?)?;
        let map_fd = socks.fd().try_clone()?;
        let verdict: &mut SkSkb = ebpf
            .program_mut("pass_verdict")
            .context("pass_verdict missing")?
            .try_into()?;
        verdict.load().context("loading pass_verdict")?;
        verdict.attach(&map_fd).context("attaching pass_verdict")?;
        let sockops: &mut SockOps = ebpf
            .program_mut("floor_sockhash")
            .context("floor_sockhash missing")?
            .try_into()?;
        sockops.load().context("loading floor_sockhash")?;
        let cg = File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
        sockops
            // Through a link (aya's default here), which never excludes ttm's.
            .attach(&cg, CgroupAttachMode::Single)
            .context("attaching floor_sockhash")?;
        Ok(Foreign { _ebpf: ebpf })
    }

    /// Attaches TC classifier `name` to the ingress of `iface` (in this
    /// process's network namespace).
    pub fn on_tc(name: &str, iface: &str) -> Result<Foreign> {
        use aya::programs::{tc, SchedClassifier, TcAttachType};
        let _ = tc::qdisc_add_clsact(iface);
        let mut ebpf = Ebpf::load(OBJECT).context("loading the lab object")?;
        let program: &mut SchedClassifier = ebpf
            .program_mut(name)
            .with_context(|| format!("{name} missing"))?
            .try_into()?;
        program.load().with_context(|| format!("loading {name}"))?;
        program
            .attach(iface, TcAttachType::Ingress)
            .with_context(|| format!("attaching {name} to {iface}"))?;
        Ok(Foreign { _ebpf: ebpf })
    }
}

/// A veth pair in this process's network namespace with no address (no
/// traffic), for attaching TC programs in tests; removed on drop.
pub struct TestVeth(pub String);

impl TestVeth {
    /// Creates `name` and its peer `name`-p.
    pub fn create(name: &str) -> Result<TestVeth> {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", name])
            .status();
        crate::lab::run(std::process::Command::new("ip").args([
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{name}-p"),
        ]))?;
        Ok(TestVeth(name.to_string()))
    }
}

impl Drop for TestVeth {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .status();
    }
}
