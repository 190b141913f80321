//! The daemon's run loop: kernel logs forwarded, limits watched, TC records
//! swept, the witnesses kept last, until SIGINT/SIGTERM (detach) or SIGUSR2
//! (hand over); and the metrics endpoint beside it.

use anyhow::Result;
use log::{info, warn};

use super::attach::keep_witnesses_last;
use super::Daemon;

impl Daemon {
    /// Serves Prometheus metrics on `addr` while the daemon runs.
    pub async fn serve_metrics(&mut self, addr: std::net::SocketAddr) -> Result<()> {
        self.metrics = Some(
            crate::metrics::serve(
                addr,
                self.pins.clone(),
                self.service_counters.clone(),
                self.capacity,
                self.audit.as_ref().map(|a| a.last.clone()),
            )
            .await?,
        );
        Ok(())
    }

    /// Runs until SIGINT or SIGTERM, forwarding kernel-side logs.
    /// Returns `true` when it handed over (SIGUSR2) instead of detaching.
    pub async fn run_until_signal(mut self) -> Result<bool> {
        use tokio::io::unix::AsyncFd;
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hand_over = signal(SignalKind::user_defined2())?;
        let mut watch = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut sweep_tick = tokio::time::interval(crate::sweep::interval(self.tc_max_age));
        let mut sweeper = crate::sweep::Sweeper::open(&self.pins, self.tc_max_age)
            .inspect_err(|e| warn!("TC record sweep unavailable: {e:#}"))
            .ok();
        let mut logs = match self.logger.take() {
            // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd lives.
            Some(l) => Some(
                unsafe { AsyncFd::register_with_interest(l, tokio::io::Interest::READABLE) }
                    .map_err(|e| e.into_parts().1)?,
            ),
            None => None,
        };
        let service = self.service.take().map(|s| tokio::spawn(s.serve()));
        let stats_map = crate::stats::open(&self.pins)
            .inspect_err(|e| warn!("limit checks unavailable: {e}"))
            .ok();
        let mut last_stats = stats_map.as_ref().and_then(|m| crate::stats::read(m).ok());
        // New listeners on PROXY ports are deferred within a tick of listen().
        let mut listen_tick = tokio::time::interval(std::time::Duration::from_millis(20));
        let mut listens_seen = last_stats
            .as_ref()
            .map_or(0, |s| s.get(ttm_common::Counter::ProxyListening));
        println!("ttm: ready");
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM: detaching"); break }
                _ = int.recv() => { info!("SIGINT: detaching"); break }
                _ = watch.tick() => {
                    if let Err(e) = keep_witnesses_last(&self.witnesses) {
                        warn!("checking the witness order: {e:#}");
                    }
                    if let (Some(map), Some(before)) = (&stats_map, &mut last_stats) {
                        if let Ok(now) = crate::stats::read(map) {
                            for (limit, new) in crate::limits::newly_reached(before, &now) {
                                warn!(
                                    "{new} new connection(s) hit a limit ({} = {}): {}",
                                    limit.counter.name(),
                                    limit.connections,
                                    limit.advice
                                );
                            }
                            *before = now;
                        }
                    }
                }
                _ = listen_tick.tick(), if self.listeners.is_some() && stats_map.is_some() => {
                    let now = stats_map
                        .as_ref()
                        .and_then(|m| crate::stats::read(m).ok())
                        .map_or(listens_seen, |s| s.get(ttm_common::Counter::ProxyListening));
                    if now != listens_seen {
                        listens_seen = now;
                        if let Some(l) = self.listeners.as_mut() {
                            l.scan();
                        }
                    }
                }
                _ = sweep_tick.tick(), if sweeper.is_some() => {
                    if let Some(sweeper) = sweeper.as_mut() {
                        if let Err(e) = sweeper.sweep() {
                            warn!("sweeping TC records: {e:#}");
                        }
                    }
                }
                _ = hand_over.recv() => {
                    info!("SIGUSR2: handing over to a new daemon; programs stay attached");
                    self.keep_attached = true;
                    break
                }
                guard = async { logs.as_mut().expect("guarded").readable_mut().await }, if logs.is_some() => {
                    let mut guard = guard?;
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            }
        }
        if let Some(service) = service {
            service.abort();
            // Dropping the service removes its socket file.
            let _ = service.await;
        }
        if let Some(metrics) = self.metrics.take() {
            metrics.abort();
        }
        drop(logs);
        let handed_over = self.keep_attached;
        drop(self);
        Ok(handed_over)
    }
}
