//! The connection rate through the LB: no ttm, ttm decoding only, ttm with
//! shim and rewrite, side by side on their own ports.

use super::*;

/// One way of running the real server, all up at once on their own ports:
/// no ttm, ttm decoding only, ttm with shim and rewrite.
struct Arrangement {
    label: &'static str,
    port: u16,
}

pub(super) fn connection_rate(lab: &Lab, sizes: &Sizes) -> Result<Section> {
    // Everything runs side by side for the whole section, so rounds compare
    // like with like: no daemon restarts between measurements.
    let cgroups = ExtraCgroups::create(lab, &["bench-bare", "bench-decode"])?;
    let (bare, decode_cg) = (cgroups.0[0].clone(), cgroups.0[1].clone());
    let _decode_daemon = TtmDaemon::start(
        lab::LB_NET,
        &decode_cg,
        Path::new("/sys/fs/bpf/ttm-bench-decode"),
        &["--no-rewrite"],
    )?;
    let _full_daemon = daemon(lab, &[])?;
    let arrangements = [
        Arrangement {
            label: "no ttm",
            port: 8081,
        },
        Arrangement {
            label: "ttm decoding only",
            port: 8082,
        },
        Arrangement {
            label: "ttm decoding + getsockopt shim + rewrite",
            port: 8083,
        },
    ];
    let mut servers = Vec::new();
    for (arrangement, cgroup) in arrangements
        .iter()
        .zip([&bare, &decode_cg, &lab.rs_cgroup()])
    {
        let listen = format!("0.0.0.0:{}", arrangement.port);
        let mut args = vec!["echo-server", "--listen", &listen];
        if arrangement.port == 8083 {
            args.push("--getsockopt");
        }
        let server = spawn_in(&me()?, cgroup, lab::RS_NS, &args)?;
        listening(&server)?;
        servers.push(server);
    }
    let mut figures = Vec::new();
    for parallel in [1usize, 8] {
        let mut rates = vec![Vec::new(); arrangements.len()];
        for round in 0..sizes.rounds {
            // Rotate the order so no arrangement always runs first.
            for k in 0..arrangements.len() {
                let i = (k + round) % arrangements.len();
                let to = format!("{}:{}", lab::VIP, arrangements[i].port);
                let (count, par) = (sizes.connections.to_string(), parallel.to_string());
                let client = in_client(
                    lab,
                    &[
                        "conn-rate",
                        "--to",
                        &to,
                        "--count",
                        &count,
                        "--parallel",
                        &par,
                    ],
                )?;
                let v = json_line(&client, Duration::from_secs(120))?;
                let ok = v["ok"].as_f64().unwrap_or(0.0);
                let seconds = v["seconds"].as_f64().unwrap_or(f64::MAX);
                if ok < sizes.connections as f64 * 0.99 {
                    bail!("only {ok} of {} connections worked", sizes.connections);
                }
                rates[i].push(ok / seconds);
            }
        }
        let (base_min, base_med) = min_median(&rates[0]);
        let base_max = rates[0].iter().copied().fold(0.0, f64::max);
        let spread = (base_max - base_min) / base_med * 100.0;
        let mode = if parallel == 1 {
            "sequential"
        } else {
            "8 in parallel"
        };
        figures.push(Figure::info(
            &format!("connections/s, {mode}, no ttm"),
            format!("min {base_min:.0}, median {base_med:.0}, max {base_max:.0}"),
            &format!("baseline; its own round-to-round spread is {spread:.0}% of the median"),
        ));
        for i in 1..arrangements.len() {
            let (min, med) = min_median(&rates[i]);
            let ratio = med / base_med;
            figures.push(Figure::judged(
                &format!("connections/s, {mode}, {}", arrangements[i].label),
                format!("min {min:.0}, median {med:.0}, ratio {ratio:.3}"),
                "ratio ≥ 0.98",
                ratio >= 0.98,
                &format!(
                    "ttm works once per connection; a ratio within the baseline's own {spread:.0}% \
                     round-to-round spread cannot be told from the noise of the veth lab on 2 \
                     shared cores"
                ),
            ));
        }
    }
    drop(servers);
    Ok(Section {
        title: "Connection rate through the lab".into(),
        method: format!(
            "Short connections (1 byte each way, server closes) from the client netns through \
             the full-NAT LB to three servers in the real server's netns, each in its own cgroup \
             and port: one without ttm, one under a `--no-rewrite` daemon (decoding only), one \
             under a full daemon that also calls getsockopt(SOL_IP, 1345) per connection. All \
             run at once; {} rounds of {} connections, the order rotating each round; medians.",
            sizes.rounds, sizes.connections
        ),
        figures,
    })
}
