//! Kernel bytes per connection with real held connections through the lab.

use super::*;

pub(super) fn real_connections(lab: &Lab, sizes: &Sizes) -> Result<Section> {
    let n = sizes.real_connections;
    let daemon = daemon(lab, &["--metrics", METRICS_ADDR])?;
    let pins = PinDir::new(PIN_DIR);
    let idle = [maps::RECORDS]
        .map(|m| pinned_memlock(&pins, m))
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let lab_bin = me()?.with_file_name("ttm-lab");
    let held = ttm_lab::scale::hold(lab, &lab_bin, &daemon.socket, n as usize)?;
    for key in [
        "accepted",
        "rewritten",
        "by_cookie",
        "by_fd",
        "by_client_tuple",
        "by_kernel_tuple",
    ] {
        if held.total(key) != n {
            bail!("{key}: {} of {n}: {:?}", held.total(key), held.reports);
        }
    }
    let stats = ttm::stats::read(&ttm::stats::open(&pins)?)?;
    if stats.live_records() != n || stats.get(ttm_common::Counter::MapInsertFailed) != 0 {
        bail!("{n} connections but {} live records", stats.live_records());
    }
    let full = [maps::RECORDS]
        .map(|m| pinned_memlock(&pins, m))
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let nominal = (full[0].saturating_sub(idle[0])) as f64 / n as f64;
    // What the allocator hands out per element: the kernel's hash element
    // header and the key and value, each 8-aligned, plus the 8-byte list
    // node of BPF's allocator, rounded up to a kmalloc size class.
    let element = kernel_struct_size("htab_elem").map(|header| {
        let round8 = |v: u64| v.div_ceil(8) * 8;
        let raw = header
            + round8(std::mem::size_of::<maps::TcKey>() as u64)
            + round8(std::mem::size_of::<PeerRecord>() as u64);
        (raw, kmalloc_class(raw + 8))
    });
    let slab_held = super::proxy_protocol::slab_unreclaimable()?;
    let mut client = ttm_client::Client::connect(&daemon.socket)?;
    let stats_ms = median_ms(21, || client.stats().map(|_| ()).map_err(Into::into))?;
    let scrape_ms = median_ms(21, scrape)?;
    let rss = rss_kib(daemon.pid());
    let lookup_seconds: f64 = held
        .reports
        .iter()
        .filter_map(|r| r["lookup_seconds"].as_f64())
        .fold(0.0, f64::max);
    let setup = held.setup.as_secs_f64();
    held.release();
    let deadline = Instant::now() + Duration::from_secs(120);
    let stats = loop {
        let stats = ttm::stats::read(&ttm::stats::open(&pins)?)?;
        if stats.live_records() == 0 || Instant::now() > deadline {
            break stats;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    std::thread::sleep(Duration::from_secs(2));
    let freed_with_ttm = slab_held.saturating_sub(super::proxy_protocol::slab_unreclaimable()?);
    drop(client);
    drop(daemon);
    // The same connections with a daemon that trusts no one here: every
    // kernel byte the connections cost, but no record.
    let plain = TtmDaemon::start("192.0.2.0/24", &lab.rs_cgroup(), Path::new(PIN_DIR), &[])?;
    let held = ttm_lab::scale::hold(lab, &lab_bin, &plain.socket, n as usize)?;
    if held.total("accepted") != n {
        bail!(
            "without records: {} of {n} accepted",
            held.total("accepted")
        );
    }
    let plain_held = super::proxy_protocol::slab_unreclaimable()?;
    held.release();
    std::thread::sleep(Duration::from_secs(4));
    let freed_plain = plain_held.saturating_sub(super::proxy_protocol::slab_unreclaimable()?);
    drop(plain);
    let slab_per = (freed_with_ttm as f64 - freed_plain as f64) / n as f64;
    let all_in = element.map_or(nominal, |(_, class)| class as f64);
    let figures = vec![
        Figure::judged(
            &format!("{n} live connections through the LB: each decoded and found"),
            format!(
                "{n}/{n} by fd, cookie, (local, client) and (local, LB); accept() returned the \
                 client for all; records_stored {}, map_insert_failed 0, evicted 0",
                n
            ),
            "all, none evicted",
            true,
            "servers and clients spread over processes (20,000 descriptors each at most here)",
        ),
        Figure::info(
            "connection setup rate while the daemon records them",
            format!("{n} in {setup:.1} s: {:.0}/s", n as f64 / setup),
            "several client processes in parallel through the nftables full-NAT",
        ),
        Figure::info(
            "checking every connection (4 lookups each) from the servers",
            format!("{lookup_seconds:.1} s for {} lookups", 4 * n),
            "cookies pipelined 256 per exchange; fd and tuple lookups one at a time",
        ),
        Figure::judged(
            "live count after every connection closed",
            format!("{}", stats.live_records()),
            "exactly 0",
            stats.live_records() == 0,
            "records_removed matches records_stored",
        ),
        Figure::judged(
            &format!("kernel bytes per tracked connection at {n}, all-in"),
            match element {
                Some((raw, class)) => format!(
                    "{class} B: one record-map element ({raw} B = the kernel's hash element \
                     header, a 36 B 4-tuple key and an 80 B record, in the allocator's \
                     {class} B class); fdinfo memlock growth / {n}: {nominal:.0} B; no socket \
                     storage, no other map"
                ),
                None => format!("{nominal:.0} B fdinfo memlock growth / {n} (bpftool missing)"),
            },
            "≤ 256 B",
            all_in <= 256.0,
            "the app-facing hooks find the record by the 4-tuple they read off the socket; \
             lookups by cookie and by the client's tuple go through the daemon's index, kept \
             in its memory from the ring of record events",
        ),
        Figure::info(
            &format!(
                "the same, cross-checked: unreclaimable slab freed when {n} connections close"
            ),
            format!(
                "{slab_per:.0} B per connection = ({:.1} MiB freed with records − {:.1} MiB \
                 freed without, same connections, one run)",
                freed_with_ttm as f64 / 1048576.0,
                freed_plain as f64 / 1048576.0
            ),
            "SUnreclaim counts allocator rounding and per-CPU caches too; noisy on this VM \
             (other slab users run beside the bench)",
        ),
        Figure::judged(
            "kernel memory of the record map with no connection",
            format!(
                "{:.1} MiB for a capacity of {} records",
                idle[0] as f64 / 1048576.0,
                maps::DEFAULT_RECORDS_CAPACITY
            ),
            "≤ 24 MiB",
            idle[0] <= 24 << 20,
            "the hash bucket array (16 B per slot, one slot per record of capacity); the TC \
             path's preallocated maps hold one entry when no interface and no PROXY port is \
             given",
        ),
        Figure::judged(
            &format!("`stats` and a metrics scrape at {n} live connections"),
            format!("median {stats_ms:.2} ms / {scrape_ms:.2} ms"),
            "≤ 5 ms",
            stats_ms <= 5.0 && scrape_ms <= 5.0,
            "counters, not a walk",
        ),
        Figure::info(
            &format!("daemon RSS with {n} live connections"),
            format!("{rss} KiB"),
            "the daemon's cookie and client index: two hash entries per live connection",
        ),
    ];
    Ok(Section {
        title: format!("Scale: {n} real connections"),
        method: format!(
            "{n} connections from the lab's client through the full-NAT LB to hold servers in \
             the real server's namespace ({} per process), all open at once; each server asks \
             the daemon about every connection it accepted by cookie, fd and both tuples. \
             Kernel memory: the record map's fdinfo `memlock` before and after, its element \
             size from vmlinux BTF (`htab_elem`) rounded as the allocator does; then the \
             unreclaimable slab freed at close, against the same connections held again under \
             a daemon that trusts no peer (so no record).",
            ttm_lab::scale::PER_PROCESS
        ),
        figures,
    })
}

/// The kmalloc size class that serves an allocation of `bytes`.
fn kmalloc_class(bytes: u64) -> u64 {
    [8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096]
        .into_iter()
        .find(|&c| c >= bytes)
        .unwrap_or(bytes.next_power_of_two())
}
