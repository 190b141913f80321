//! UDP behind a marking LB (`--udp-interface`): what unmarked datagrams pay
//! for the decoder at the interface, kernel bytes per flow, and lookups as
//! the flow table grows.

use super::*;

use ttm_common::udp::{UdpFlow, UdpFlowKey};
use ttm_lab::uoa_marker::{flood_until_filed, SECOND_LB};

const UDP_PORT: u16 = 53;

pub(super) fn udp(lab: &Lab, sizes: &Sizes) -> Result<Section> {
    let mut figures = throughput(lab, sizes)?;
    figures.extend(flows(lab, sizes)?);
    Ok(Section {
        title: "UDP flows (--udp-interface)".into(),
        method: format!(
            "Throughput: a sender in the LB's namespace sends 64-byte unmarked datagrams as fast \
             as it can for {} ms to a counting sink in the real server's, {} rounds rotating \
             three set-ups of the real server's interface: no program, one empty TC program \
             (tcx), and ttm's decoder (a daemon with --udp-interface, trusting the sender); a \
             daemon runs in every round, settled half a second before the send; the sink's \
             count per second, medians and the median of the rounds' ratios. Flows: {} flows marked by the test-only marker from two LB \
             addresses (one marking-only datagram each), the flow table's fdinfo memlock and \
             the unreclaimable slab before and after; then lookups over the Unix socket at \
             {} flows filed by the bench straight into the pinned table, {} requests per level.",
            sizes.udp_blast_ms,
            sizes.rounds.max(3),
            sizes.udp_flows,
            sizes
                .udp_levels
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            sizes.scale_lookups
        ),
        figures,
    })
}

/// How the real server's interface is set up in a throughput round.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ingress {
    /// No program on it.
    Bare,
    /// One TC program that returns at once: the floor of any decoder.
    EmptyProgram,
    /// ttm's UDP decoder (`--udp-interface`).
    Decoder,
}

/// Datagrams per second through the interface, bare, with an empty
/// program and with the decoder.
fn throughput(lab: &Lab, sizes: &Sizes) -> Result<Vec<Figure>> {
    use Ingress::*;
    let sink_at = format!("{}:{}", lab::RS_IP, UDP_PORT + 1);
    let listen = format!("0.0.0.0:{}", UDP_PORT + 1);
    let millis = sizes.udp_blast_ms.to_string();
    let setups = [Bare, EmptyProgram, Decoder];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    let mut ratios: [Vec<f64>; 3] = Default::default();
    for round in 0..sizes.rounds.max(3) {
        let mut order = setups;
        order.rotate_left(round % setups.len());
        let mut rate = [0.0f64; 3];
        for setup in order {
            // A daemon in every round: they differ only in the program on
            // the interface, not in a daemon's own CPU beside them.
            let _daemon = if setup == Decoder {
                daemon(
                    lab,
                    &["--udp-interface", lab::RS_IF, "--audit-interval", "0"],
                )?
            } else {
                daemon(lab, &["--audit-interval", "0"])?
            };
            let _floor = if setup == EmptyProgram {
                Some(Foreign::tc_floor(lab::RS_NS, lab::RS_IF)?)
            } else {
                None
            };
            // Past its start-up work (the index walk, the first stats).
            std::thread::sleep(Duration::from_millis(500));
            let mut sink = in_rs(lab, &["udp-sink", "--listen", &listen])?;
            listening(&sink)?;
            let started = Instant::now();
            let blast = in_lb(lab, &["udp-blast", "--to", &sink_at, "--millis", &millis])?;
            blast.line(Duration::from_secs(60))?;
            let elapsed = started.elapsed().as_secs_f64();
            // Let the last datagrams land before the count.
            std::thread::sleep(Duration::from_millis(100));
            sink.close_stdin();
            let got: f64 = sink.line(Duration::from_secs(10))?.trim().parse()?;
            rate[setup as usize] = got / elapsed;
        }
        for (i, r) in rate.iter().enumerate() {
            rates[i].push(*r);
        }
        ratios[0].push(rate[Decoder as usize] / rate[Bare as usize].max(1.0));
        ratios[1].push(rate[EmptyProgram as usize] / rate[Bare as usize].max(1.0));
        ratios[2].push(rate[Decoder as usize] / rate[EmptyProgram as usize].max(1.0));
    }
    let med = |v: &[f64]| min_median(v).1;
    let (bare, floor, decoder) = (med(&rates[0]), med(&rates[1]), med(&rates[2]));
    let [vs_bare, floor_vs_bare, vs_floor] = [0, 1, 2].map(|i| med(&ratios[i]));
    Ok(vec![
        Figure::judged(
            "unmarked datagrams/s through the interface: with the decoder ÷ no program",
            format!("{decoder:.0}/s vs {bare:.0}/s, ratio {vs_bare:.3}"),
            "≥ 0.97×",
            vs_bare >= 0.97,
            "per datagram the decoder parses the headers and makes one hash lookup for a flow \
             to keep fresh (a write at most once a second per flow)",
        ),
        Figure::info(
            "unmarked datagrams/s: one empty TC program on the same hook ÷ no program",
            format!("{floor:.0}/s vs {bare:.0}/s, ratio {floor_vs_bare:.3}"),
            "the floor of any program on the interface: the kernel's tcx dispatch and one \
             program call per packet, before the program does anything",
        ),
        Figure::judged(
            "unmarked datagrams/s: with the decoder ÷ the empty-program floor",
            format!("{decoder:.0}/s vs {floor:.0}/s, ratio {vs_floor:.3}"),
            "≥ 0.97×",
            vs_floor >= 0.97,
            "the decoder's own work, the hook's cost set aside",
        ),
    ])
}

/// Kernel bytes per flow, and lookups as the table grows.
fn flows(lab: &Lab, sizes: &Sizes) -> Result<Vec<Figure>> {
    let top = *sizes.udp_levels.last().unwrap_or(&1_000);
    // Room for the marker's flows and every synthetic level beside them.
    let capacity = (top + u64::from(sizes.udp_flows)).to_string();
    let daemon = daemon(
        lab,
        &[
            "--udp-interface",
            lab::RS_IF,
            "--max-udp-flows",
            &capacity,
            "--udp-idle",
            "3600",
        ],
    )?;
    let pins = PinDir::new(PIN_DIR);
    let empty = pinned_memlock(&pins, maps::UDP_FLOWS)?;
    let slab_before = super::proxy_protocol::slab_unreclaimable()?;
    let stats =
        || -> Result<ttm::stats::Stats> { Ok(ttm::stats::read(&ttm::stats::open(&pins)?)?) };
    flood_until_filed(
        lab,
        &me()?.with_file_name("ttm-lab"),
        format!("{}:{UDP_PORT}", lab::RS_IP).parse()?,
        sizes.udp_flows,
        || Ok(stats()?.get(ttm_common::Counter::UdpDecoded)),
    )?;
    let filed = stats()?.get(ttm_common::Counter::UdpDecoded);
    if filed != u64::from(sizes.udp_flows) {
        bail!("{filed} of {} flows filed", sizes.udp_flows);
    }
    let full = pinned_memlock(&pins, maps::UDP_FLOWS)?;
    let slab_after = super::proxy_protocol::slab_unreclaimable()?;
    let n = f64::from(sizes.udp_flows);
    let memlock_per = full.saturating_sub(empty) as f64 / n;
    let slab_per = slab_after.saturating_sub(slab_before) as f64 / n;
    let element = kernel_struct_size("htab_elem").map(|header| {
        let round8 = |v: u64| v.div_ceil(8) * 8;
        header + round8(size_of::<UdpFlowKey>() as u64) + round8(size_of::<UdpFlow>() as u64)
    });
    let mut figures = vec![
        Figure::info(
            &format!("kernel bytes per UDP flow at {} flows", sizes.udp_flows),
            format!(
                "{}fdinfo memlock growth / {}: {memlock_per:.0} B; unreclaimable slab growth: \
                 {slab_per:.0} B",
                element.map_or(String::new(), |e| format!(
                    "one flow-table element ({e} B: the kernel's hash element header, a 20 B \
                     key and a 48 B flow); "
                )),
                sizes.udp_flows
            ),
            "no socket, no per-flow state elsewhere; the slab figure also counts whatever else \
             the host allocated meanwhile",
        ),
        Figure::info(
            "the flow table with no flow",
            format!(
                "{:.1} MiB for a capacity of {capacity} flows",
                empty as f64 / f64::from(1u32 << 20)
            ),
            "its bucket array (16 B per slot); one entry without --udp-interface",
        ),
    ];
    // Lookups as the table grows: flows filed straight into the map.
    let mut table: aya::maps::HashMap<MapData, UdpFlowKey, UdpFlow> = aya::maps::HashMap::try_from(
        Map::from_map_data(MapData::from_pin(pins.map(maps::UDP_FLOWS))?)?,
    )?;
    let synthetic = |i: u64| {
        let lb = std::net::Ipv6Addr::new(
            0xfd00,
            9,
            (i >> 32) as u16,
            0,
            0,
            0,
            (i >> 16) as u16,
            i as u16,
        );
        let key = UdpFlowKey {
            lb_addr: lb.octets(),
            lb_port: 40_000,
            local_port: UDP_PORT,
        };
        let flow = UdpFlow {
            local_addr: std::net::Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 2).octets(),
            client_addr: std::net::Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8)
                .to_ipv6_mapped()
                .octets(),
            client_port: 5_000,
            client_family: 4,
            seen_ns: ttm::host::monotonic_ns(),
            ..UdpFlow::default()
        };
        (key, flow, SocketAddr::new(lb.into(), 40_000))
    };
    let mut client = ttm_client::Client::connect(&daemon.socket)?;
    let local: SocketAddr = format!("[::]:{UDP_PORT}").parse()?;
    let mut at = Vec::new();
    let mut filled = 0u64;
    for &level in sizes.udp_levels {
        while filled < level {
            let (key, flow, _) = synthetic(filled);
            table.insert(key, flow, 0)?;
            filled += 1;
        }
        let pick = |k: u64| (k * 7919) % level;
        let (p50, p99) = latencies(sizes.scale_lookups, |k| {
            let (_, _, lb) = synthetic(pick(k));
            match client.lookup_udp(local, lb)? {
                Some(_) => Ok(()),
                None => bail!("synthetic flow {} not found", pick(k)),
            }
        })?;
        at.push((level, p50, p99));
    }
    let (first, last) = (at[0].1, at[at.len() - 1].1);
    let growth = last / first.max(0.001);
    figures.push(Figure::judged(
        "UDP lookup by flow: latency by live flows",
        format!(
            "{}; growth ×{growth:.2}",
            at.iter()
                .map(|(l, p50, p99)| format!("{l}: p50 {p50:.1} / p99 {p99:.1} µs"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        "growth smallest → largest ≤ 1.5×",
        growth <= 1.5,
        "one hash get in the flow table per request, whatever its size",
    ));
    drop(client);
    drop(daemon);
    let _ = lab::in_ns(
        lab::LB_NS,
        &[
            "ip",
            "addr",
            "del",
            &format!("{SECOND_LB}/24"),
            "dev",
            "ttm-l1",
        ],
    );
    Ok(figures)
}
