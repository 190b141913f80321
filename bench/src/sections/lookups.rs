//! Lookup latency over the Unix socket: by fd, cookie and tuple, one client
//! and sixteen.

use super::*;

pub(super) fn lookups(lab: &Lab, sizes: &Sizes) -> Result<Section> {
    let daemon = daemon(lab, &[])?;
    let socket = daemon.socket.to_string_lossy().into_owned();
    let mut figures = Vec::new();
    for (clients, requests) in [
        (1usize, sizes.lookups_one_client),
        (16, sizes.lookups_per_client_of_16),
    ] {
        let (listen, c, r) = (listen_all(), clients.to_string(), requests.to_string());
        let server = in_rs(
            lab,
            &[
                "lookup-load",
                "--listen",
                &listen,
                "--socket",
                &socket,
                "--clients",
                &c,
                "--requests",
                &r,
            ],
        )?;
        listening(&server)?;
        let to = vip();
        let mut client = in_client(lab, &["line-client", "--to", &to])?;
        let v = json_line(&server, Duration::from_secs(300))?;
        let _ = client.wait(Duration::from_secs(30));
        let pipelined = v["pipelined"]["per_second"].as_f64().unwrap_or(0.0);
        figures.push(Figure::judged(
            &format!(
                "lookups by cookie, {clients} client(s), pipelined 64 per exchange: throughput"
            ),
            format!("{pipelined:.0}/s"),
            "≥ 200,000/s",
            pipelined >= 200_000.0,
            "ttm_client::Client::lookup_cookies: one write, 64 answers; one client keeps one \
             daemon worker busy, so more clients scale it",
        ));
        for by in ["fd", "cookie"] {
            let rate = v[by]["per_second"].as_f64().unwrap_or(0.0);
            let p50 = v[by]["p50_us"].as_f64().unwrap_or(0.0);
            let p99 = v[by]["p99_us"].as_f64().unwrap_or(f64::MAX);
            figures.push(Figure::judged(
                &format!("lookups by {by}, {clients} client(s): throughput"),
                format!("{rate:.0}/s"),
                "≥ 200,000/s",
                rate >= 200_000.0,
                "one request in flight per client: a round trip per lookup, clients and daemon on the \
                 same 2 cores; fix: pipeline (see the pipelined row)",
            ));
            figures.push(Figure::judged(
                &format!("lookups by {by}, {clients} client(s): latency"),
                format!("p50 {p50:.1} µs, p99 {p99:.1} µs"),
                "p99 ≤ 100 µs",
                p99 <= 100.0,
                &(if clients == 1 {
                    "round trip over the Unix socket, measured by the client".to_string()
                } else {
                    "16 client threads and the daemon share 2 cores: the tail is run-queue \
                     waiting, not ttm; fix: pipeline, or fewer client threads"
                        .to_string()
                }),
            ));
        }
    }
    drop(daemon);
    Ok(Section {
        title: "Unix-socket lookups".into(),
        method: "Clients in the real server's netns ask the daemon about one live lab connection, \
                 by passing its fd (SCM_RIGHTS) and by its cookie, each waiting for its answer."
            .into(),
        figures,
    })
}
