//! Per-call costs of getpeername() and getsockopt() under each daemon set-up,
//! against the empty-program floor, in alternating rounds.

use super::*;

/// The daemon set-ups the per-call section alternates between.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CallSetup {
    /// No daemon.
    Plain,
    /// The default daemon: the app's cgroup gets the shim and the rewrite.
    Default,
    /// The default daemon with `--witness`.
    Witness,
    /// The app's cgroup is decoded but outside `--compat-cgroup`.
    OutsideCompat,
    /// The default daemon with `--no-getsockopt`: no getsockopt program anywhere.
    NoGetsockopt,
    /// No daemon; one getpeername program that returns at once on the app's
    /// cgroup: the floor of any eBPF rewrite.
    EmptyProgram,
    /// No daemon; one getpeername program that reads the socket's 4-tuple
    /// and looks it up once in a map shaped as the record map: the floor of
    /// a rewrite that finds its record by tuple.
    LookupProgram,
}

pub(super) fn per_call(lab: &Lab, sizes: &Sizes) -> Result<Section> {
    use CallSetup::*;
    let cgroups = ExtraCgroups::create(lab, &["bench-compat"])?;
    let elsewhere = cgroups.0[0].to_string_lossy().into_owned();
    let setups = [
        Plain,
        Default,
        Witness,
        OutsideCompat,
        NoGetsockopt,
        EmptyProgram,
        LookupProgram,
    ];
    let mut runs: Vec<(CallSetup, serde_json::Value)> = Vec::new();
    for round in 0..sizes.rounds {
        // The order rotates each round, so no setup always follows another.
        let mut order = setups;
        order.rotate_left(round % setups.len());
        for setup in order {
            let _empty = match setup {
                EmptyProgram => Some(Foreign::on_cgroup("empty_getpeername4", &lab.rs_cgroup())?),
                LookupProgram => Some(Foreign::on_cgroup("lookup_getpeername4", &lab.rs_cgroup())?),
                _ => None,
            };
            let _daemon = match setup {
                Plain | EmptyProgram | LookupProgram => None,
                Default => Some(daemon(lab, &[])?),
                Witness => Some(daemon(lab, &["--witness"])?),
                OutsideCompat => Some(daemon(lab, &["--compat-cgroup", &elsewhere])?),
                NoGetsockopt => Some(daemon(lab, &["--no-getsockopt"])?),
            };
            let (listen, iterations) = (listen_all(), sizes.call_iterations.to_string());
            let server = in_rs(
                lab,
                &["calls", "--listen", &listen, "--iterations", &iterations],
            )?;
            listening(&server)?;
            let to = vip();
            let mut client = in_client(lab, &["line-client", "--to", &to])?;
            let v = json_line(&server, Duration::from_secs(120))?;
            let _ = client.wait(Duration::from_secs(30));
            runs.push((setup, v));
        }
    }
    let med = |setup: CallSetup, key: &str| {
        min_median(
            &runs
                .iter()
                .filter(|(s, _)| *s == setup)
                .map(|(_, v)| v[key].as_f64().unwrap_or(0.0))
                .collect::<Vec<_>>(),
        )
        .1
    };
    // Ratios are the median of each round's own ratio (the setups of one
    // round run back to back), so the host's drift between rounds cancels.
    let ratio = |setup: CallSetup, key: &str, base: CallSetup, base_key: &str| {
        let value = |round: &[(CallSetup, serde_json::Value)], s: CallSetup, k: &str| {
            round
                .iter()
                .find(|(x, _)| *x == s)
                .and_then(|(_, v)| v[k].as_f64())
                .unwrap_or(0.0)
        };
        min_median(
            &runs
                .chunks(setups.len())
                .map(|round| value(round, setup, key) / value(round, base, base_key).max(1e-9))
                .collect::<Vec<_>>(),
        )
        .1
    };
    let mut figures = Vec::new();
    let gp0 = med(Plain, "getpeername");
    let gp1 = med(Default, "getpeername");
    let gp1_ratio = ratio(Default, "getpeername", Plain, "getpeername");
    figures.push(Figure::judged(
        "getpeername(): default daemon (the rewrite) vs no decoder",
        format!("{gp1:.0} ns vs {gp0:.0} ns, ratio {gp1_ratio:.3}"),
        "≤ 1.15×",
        gp1_ratio <= 1.15,
        "one program per call: the socket's 4-tuple read off it and one hash lookup, and for a socket with a record its cookie checked, the \
         address written back and one per-CPU counter",
    ));
    let gpe = med(EmptyProgram, "getpeername");
    figures.push(Figure::info(
        "getpeername(): one empty cgroup program (returns at once, no ttm) vs no decoder",
        format!(
            "{gpe:.0} ns vs {gp0:.0} ns, ratio {:.3}",
            ratio(EmptyProgram, "getpeername", Plain, "getpeername")
        ),
        "the floor of any eBPF rewrite: the kernel's cgroup-BPF dispatch and one program \
         call, before the program does anything; the rewrite's own work is the difference \
         between this row and the one above",
    ));
    let floor_ratio = ratio(Default, "getpeername", EmptyProgram, "getpeername");
    figures.push(Figure::judged(
        "getpeername(): the rewrite vs the empty-program floor",
        format!("{gp1:.0} ns vs {gpe:.0} ns, ratio {floor_ratio:.3}"),
        "≤ 1.10×",
        floor_ratio <= 1.10,
        "the rewrite's own work over the dispatch every program pays: the 4-tuple read, one \
         hash lookup, the cookie check, the address written back, a counter",
    ));
    let gpl = med(LookupProgram, "getpeername");
    let lookup_ratio = ratio(Default, "getpeername", LookupProgram, "getpeername");
    figures.push(Figure::judged(
        "getpeername(): the rewrite vs a program doing only its lookup (the lookup floor)",
        format!(
            "{gp1:.0} ns vs {gpl:.0} ns, ratio {lookup_ratio:.3}; the lookup floor vs the \
             empty one {:.3}",
            ratio(LookupProgram, "getpeername", EmptyProgram, "getpeername")
        ),
        "≤ 1.10×",
        lookup_ratio <= 1.10,
        "the lookup floor reads the socket's 4-tuple and looks it up once in a map of the \
         record map's shape (it misses): what any design that finds the record by tuple pays; \
         the rest is the cookie check, the write-back and the counter",
    ));
    let gpw = med(Witness, "getpeername");
    figures.push(Figure::info(
        "getpeername(): with --witness vs no decoder",
        format!(
            "{gpw:.0} ns vs {gp0:.0} ns, ratio {:.3}",
            ratio(Witness, "getpeername", Plain, "getpeername")
        ),
        "a second program per call (the live check behind `ttm verify --live`); opt-in",
    ));
    let gpo = med(OutsideCompat, "getpeername");
    figures.push(Figure::info(
        "getpeername(): app outside --compat-cgroup vs no decoder",
        format!(
            "{gpo:.0} ns vs {gp0:.0} ns, ratio {:.3}",
            ratio(OutsideCompat, "getpeername", Plain, "getpeername")
        ),
        "no ttm program on its hooks: the kernel's own answer (the LB)",
    ));
    let (cookie, toa) = (med(Default, "so_cookie"), med(Default, "sockopt_1345"));
    let toa_ratio = ratio(Default, "sockopt_1345", Default, "so_cookie");
    figures.push(Figure::judged(
        "getsockopt(SOL_IP, 1345) vs native getsockopt(SO_COOKIE)",
        format!("{toa:.0} ns vs {cookie:.0} ns, ratio {toa_ratio:.3}"),
        "≤ 1.2×",
        toa_ratio <= 1.2,
        "both with the default daemon; 1345 goes through the kernel's ENOPROTOOPT path, then \
         the shim",
    ));
    let rb0 = med(Plain, "so_rcvbuf");
    let rbo = med(OutsideCompat, "so_rcvbuf");
    let rbo_ratio = ratio(OutsideCompat, "so_rcvbuf", Plain, "so_rcvbuf");
    figures.push(Figure::judged(
        "unrelated getsockopt(SO_RCVBUF), app outside --compat-cgroup, daemon running, vs no decoder",
        format!("{rbo:.0} ns vs {rb0:.0} ns, ratio {rbo_ratio:.3}"),
        "≤ 1.05×",
        rbo_ratio <= 1.05,
        "no ttm program runs for these calls; what remains is the kernel's: once any cgroup \
         getsockopt program exists on the host, every getsockopt of every process reads its \
         optlen from user memory and checks its cgroup's programs before the option is served",
    ));
    let rbn = med(NoGetsockopt, "so_rcvbuf");
    figures.push(Figure::info(
        "unrelated getsockopt(SO_RCVBUF), daemon with --no-getsockopt, vs no decoder",
        format!(
            "{rbn:.0} ns vs {rb0:.0} ns, ratio {:.3}",
            ratio(NoGetsockopt, "so_rcvbuf", Plain, "so_rcvbuf")
        ),
        "no getsockopt program anywhere: the kernel's own path, for hosts whose apps never \
         call 1345",
    ));
    let rb1 = med(Default, "so_rcvbuf");
    figures.push(Figure::info(
        "unrelated getsockopt(SO_RCVBUF), app inside the compat cgroups, vs no decoder",
        format!(
            "{rb1:.0} ns vs {rb0:.0} ns, ratio {:.3}",
            ratio(Default, "so_rcvbuf", Plain, "so_rcvbuf")
        ),
        "any cgroup getsockopt program makes the kernel copy optval/optlen in and out around \
         every getsockopt of that cgroup; the shim itself returns after comparing the level. \
         Hence: scope the shim to the services that call 1345 (--compat-cgroup), or turn it \
         off (--no-getsockopt)",
    ));
    drop(cgroups);
    Ok(Section {
        title: "Per-call cost".into(),
        method: format!(
            "{} calls per measure on one accepted lab connection (with a record), from a \
             server in the real server's cgroup; {} rounds alternating no daemon, the default \
             daemon, the daemon with --witness, the daemon with --compat-cgroup naming \
             another cgroup (the server decoded but outside it), the daemon with \
             --no-getsockopt, and no daemon but one getpeername program on the server's cgroup \
             that returns at once (the empty floor) or that only looks the socket's 4-tuple up \
             once in a map of the record map's shape (the lookup floor), the order rotating \
             each round; times are \
             medians, ratios the median of each round's own ratio.",
            sizes.call_iterations, sizes.rounds
        ),
        figures,
    })
}
