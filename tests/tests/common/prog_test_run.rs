//! Running a TC program on a frame with BPF_PROG_TEST_RUN, and the
//! deterministic generator the differential tests draw frames from.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// Runs `prog` on `frame`; returns its verdict and the bytes it let go up.
pub fn test_run(prog: std::os::fd::BorrowedFd<'_>, frame: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 64];
    let mut attr = [0u64; 10];
    attr[0] = u64::from(prog.as_raw_fd() as u32);
    attr[1] = frame.len() as u64 | ((out.len() as u64) << 32);
    attr[2] = frame.as_ptr() as u64;
    attr[3] = out.as_mut_ptr() as u64;
    attr[4] = 1; // repeat
                 // SAFETY: bpf(BPF_PROG_TEST_RUN) with data_in at `frame` and data_out
                 // at `out`, whose length is passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    assert_eq!(rc, 0, "test run: {}", std::io::Error::last_os_error());
    out.truncate((attr[1] >> 32) as usize);
    ((attr[0] >> 32) as u32, out)
}

/// xorshift64*, deterministic.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Loads classifier `name` of `ebpf` (the verifier must accept it) and
/// returns a descriptor of it for [`test_run`].
pub fn load_classifier(ebpf: &mut aya::Ebpf, name: &str) -> OwnedFd {
    let program: &mut aya::programs::SchedClassifier = ebpf
        .program_mut(name)
        .unwrap_or_else(|| panic!("{name} missing"))
        .try_into()
        .expect("a classifier");
    program
        .load()
        .unwrap_or_else(|e| panic!("the verifier refuses {name}: {e}"));
    program
        .fd()
        .expect("fd")
        .as_fd()
        .try_clone_to_owned()
        .expect("fd")
}
