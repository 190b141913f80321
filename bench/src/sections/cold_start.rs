//! Cold start: how long the daemon takes to be ready, and what it holds.

use super::*;

pub(super) fn cold_start(lab: &Lab, sizes: &Sizes) -> Result<Section> {
    let listen = listen_all();
    let server = in_rs(lab, &["echo-server", "--listen", &listen])?;
    listening(&server)?;
    let mut ready = Vec::new();
    let mut first = Vec::new();
    for _ in 0..sizes.rounds.max(3) {
        let started = Instant::now();
        let daemon = daemon(lab, &[])?;
        ready.push(started.elapsed().as_secs_f64() * 1000.0);
        let to = vip();
        let client = in_client(
            lab,
            &["conn-rate", "--to", &to, "--count", "1", "--parallel", "1"],
        )?;
        json_line(&client, Duration::from_secs(30))?;
        let stats = ttm::stats::read(&ttm::stats::open(&PinDir::new(PIN_DIR))?)?;
        if stats.get(ttm_common::Counter::Decoded) == 0 {
            bail!("the first connection after start was not decoded");
        }
        first.push(started.elapsed().as_secs_f64() * 1000.0);
        drop(daemon);
    }
    let (rmin, rmed) = min_median(&ready);
    let (fmin, fmed) = min_median(&first);
    Ok(Section {
        title: "Cold start".into(),
        method: "From spawning `ttm daemon` to \"ready\" (programs verified, attached, maps \
                 pinned, socket listening), and to the first connection decoded."
            .into(),
        figures: vec![
            Figure::info(
                "start → ready",
                format!("min {rmin:.0} ms, median {rmed:.0} ms"),
                "includes loading and verifying the programs",
            ),
            Figure::info(
                "start → first decoded connection",
                format!("min {fmin:.0} ms, median {fmed:.0} ms"),
                "includes spawning the lab client",
            ),
        ],
    })
}
