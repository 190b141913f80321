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
    let per = |i: usize| (full[i].saturating_sub(idle[i])) as f64 / n as f64;
    let (cookie_map, index) = (per(0), per(1));
    let elem = kernel_struct_size("bpf_local_storage_elem");
    let owner = kernel_struct_size("bpf_local_storage");
    let value = std::mem::size_of::<PeerRecord>() as u64;
    let storage = elem.map(|e| e + value);
    let total = cookie_map + index + storage.unwrap_or(0) as f64;
    // The smallest design with O(1) lookups by cookie and by the client the
    // app saw: cookie → client (8 B key, 24 B value: family, port, address)
    // and a digest of (local, client) → cookie (8 B key, 8 B value); no
    // socket storage, no (local, LB) index.
    let least =
        crate::helpers::hash_entry_bytes(8, 24, n)? + crate::helpers::hash_entry_bytes(8, 8, n)?;
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
            &format!("kernel bytes per tracked connection at {n}"),
            match storage {
                Some(s) => format!(
                    "{total:.0} B = {cookie_map:.0} B cookie map + {index:.0} B tuple index \
                     (fdinfo memlock growth / {n}) + {s} B socket storage element{}",
                    owner
                        .map(|o| format!(
                            " (+ {o} B per socket for the kernel's storage header, shared \
                             with any other sk_storage user)"
                        ))
                        .unwrap_or_default()
                ),
                None => format!(
                    "≥ {:.0} B (socket storage size unknown: bpftool missing)",
                    cookie_map + index
                ),
            },
            "≤ 128 B",
            total <= 128.0,
            "the socket-storage element alone is more than 128 B (a 64-byte-aligned header) and \
             it is what keeps getsockopt and getpeername at one cached pointer lookup per call; \
             the cookie map and the two index entries are hash elements with the kernel's \
             header each. Blocked: the next row measures the smallest design that keeps the \
             lookups O(1), and it is above 128 B too. Memory follows live connections \
             (nothing preallocated but the bucket arrays) and nothing is evicted",
        ),
        Figure::info(
            "kernel bytes per connection of the smallest possible design, same run",
            format!(
                "{least:.0} B: two hash elements (cookie → client, 8 B key + 24 B value; \
                 (local, client) digest → cookie, 8 B key + 8 B value), {n} each, fdinfo \
                 memlock growth / {n}"
            ),
            "the floor of any design that answers by cookie and by the tuple the app saw in \
             O(1) from kernel hash maps: each element carries the kernel's own header, so \
             two of them are already above 128 B before any socket storage (which getsockopt \
             needs: its hook has no socket cookie)",
        ),
        Figure::info(
            "kernel memory of the cookie map and index with no connection",
            format!(
                "{:.1} MiB for a capacity of {} records",
                (idle[0] + idle[1]) as f64 / 1048576.0,
                maps::DEFAULT_RECORDS_CAPACITY
            ),
            "the hash bucket arrays (16 B per slot); entries are allocated per connection",
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
            "the daemon holds no per-connection state",
        ),
    ];
    drop(client);
    drop(daemon);
    Ok(Section {
        title: format!("Scale: {n} real connections"),
        method: format!(
            "{n} connections from the lab's client through the full-NAT LB to hold servers in \
             the real server's namespace ({} per process), all open at once; each server asks \
             the daemon about every connection it accepted by cookie, fd and both tuples. \
             Kernel memory from the maps' fdinfo `memlock` before and after, socket storage \
             from vmlinux BTF.",
            ttm_lab::scale::PER_PROCESS
        ),
        figures,
    })
}
