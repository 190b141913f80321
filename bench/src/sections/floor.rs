//! The lookup service against a minimal line server doing the same IPC.

use super::*;

/// Concurrent unpipelined clients in the floor comparison.
const FLOOR_CLIENTS: usize = 4;

pub(super) fn service_floor(lab: &Lab, sizes: &Sizes) -> Result<Section> {
    let daemon = daemon(lab, &[])?;
    let pins = PinDir::new(PIN_DIR);
    let mut records: HashMap<MapData, maps::TcKey, PeerRecord> = HashMap::try_from(
        Map::from_map_data(MapData::from_pin(pins.map(maps::RECORDS))?)?,
    )?;
    file_synthetic(&mut records, 0)?;
    mark_events_lost(&pins)?;
    let mut client = ttm_client::Client::connect(&daemon.socket)?;
    let indexed = Instant::now();
    while client.lookup_cookie(SYNTHETIC_COOKIES)?.is_none() {
        if indexed.elapsed() > Duration::from_secs(10) {
            bail!("the daemon did not index the synthetic record");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(client);
    let floor_socket = PathBuf::from("/run/ttm/bench-floor.sock");
    let floor = Guarded::spawn({
        let mut cmd = Command::new(me()?);
        cmd.args(["floor-server", "--socket"]).arg(&floor_socket);
        cmd
    })?;
    listening(&floor)?;
    let request = format!("{{\"op\":\"cookie\",\"cookie\":{SYNTHETIC_COOKIES}}}");
    let (requests, rounds) = (sizes.floor_requests, sizes.floor_rounds);
    let all_cpus: Vec<usize> = (0..std::thread::available_parallelism()?.get()).collect();
    let one_cpu = [*all_cpus.last().unwrap_or(&0)];
    // Two placements: as the scheduler puts the 4 clients and 4 server
    // threads on the machine's CPUs (where a round trip's cost depends on
    // whether a client and its server thread share a CPU), and everything
    // on one CPU (the same work, serialised: each request's CPU cost).
    let mut figures = Vec::new();
    for cpus in [&all_cpus[..], &one_cpu[..]] {
        let pinned = cpus.len() < all_cpus.len();
        crate::helpers::set_process_cpus(daemon.pid(), cpus)?;
        crate::helpers::set_process_cpus(floor.pid(), cpus)?;
        let (mut ttm_runs, mut floor_runs) = (Vec::new(), Vec::new());
        // Many short rounds, alternating, the order flipping each round: the
        // host's own drift moves both sides of a pair alike, and neither
        // side always runs second.
        for round in 0..rounds {
            let load = |socket: &Path| {
                crate::helpers::line_load(
                    socket,
                    &request,
                    FLOOR_CLIENTS,
                    requests,
                    pinned.then_some(cpus),
                )
            };
            if round % 2 == 0 {
                ttm_runs.push(load(&daemon.socket)?);
                floor_runs.push(load(&floor_socket)?);
            } else {
                floor_runs.push(load(&floor_socket)?);
                ttm_runs.push(load(&daemon.socket)?);
            }
        }
        // Each round's pair gives one ratio; the verdict is their median.
        let pair_ratios: Vec<f64> = ttm_runs
            .iter()
            .zip(&floor_runs)
            .map(|(t, f)| t.0 / f.0.max(1.0))
            .collect();
        let (ratio_min, ratio) = min_median(&pair_ratios);
        let ratio_max = pair_ratios.iter().copied().fold(0.0, f64::max);
        let median = |runs: &[(f64, f64, f64)], f: fn(&(f64, f64, f64)) -> f64| {
            min_median(&runs.iter().map(f).collect::<Vec<_>>()).1
        };
        let (t_rate, f_rate) = (median(&ttm_runs, |r| r.0), median(&floor_runs, |r| r.0));
        let (t_p99, f_p99) = (median(&ttm_runs, |r| r.2), median(&floor_runs, |r| r.2));
        let (t_p50, f_p50) = (median(&ttm_runs, |r| r.1), median(&floor_runs, |r| r.1));
        let placement = if pinned {
            format!("clients, daemon and floor all on CPU {}", cpus[0])
        } else {
            format!("as scheduled on {} CPUs", all_cpus.len())
        };
        figures.push(Figure::judged(
            &format!("throughput, daemon vs floor, {placement}"),
            format!(
                "{t_rate:.0}/s vs {f_rate:.0}/s; ratio {ratio:.2} (median of {rounds} rounds' \
                 ratios, min {ratio_min:.2}, max {ratio_max:.2})"
            ),
            "≥ 0.8×",
            ratio >= 0.8,
            if pinned {
                "one CPU does all the work, so the ratio is the floor's CPU cost per request over \
                 the daemon's: one more system call (the map lookup) and a JSON request parsed \
                 and answered"
            } else {
                "same clients, same socket type, same line-per-request exchange; the spread of \
                 single rounds is where the scheduler put each client and its server thread \
                 (a round trip within one CPU is cheaper than across two)"
            },
        ));
        figures.push(Figure::judged(
            &format!("latency, daemon vs floor, {placement}"),
            format!(
                "p50 {t_p50:.1} vs {f_p50:.1} µs, p99 {t_p99:.1} vs {f_p99:.1} µs, p99 ratio {:.2}",
                t_p99 / f_p99.max(0.001)
            ),
            "p99 ≤ 2× the floor's",
            t_p99 <= 2.0 * f_p99,
            "clients, daemon and floor share the CPUs named",
        ));
    }
    crate::helpers::set_process_cpus(daemon.pid(), &all_cpus)?;
    drop(floor);
    let _ = std::fs::remove_file(&floor_socket);
    drop(daemon);
    Ok(Section {
        title: "Lookup service against its floor".into(),
        method: format!(
            "{FLOOR_CLIENTS} concurrent clients, one request in flight each, {requests} \
             requests per client per round, {} rounds alternating the daemon (lookups by \
             cookie of one record) and the floor: a minimal thread-per-client Unix-socket \
             line server answering every line with {} bytes, the order flipping each round; \
             medians. Run twice: as the scheduler places the threads, and with clients, daemon \
             and floor on one CPU.",
            rounds,
            crate::helpers::FLOOR_REPLY_BYTES
        ),
        figures,
    })
}
