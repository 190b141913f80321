//! `--metrics ADDR`: Prometheus text exposition of every counter, the map
//! fill level and build info, read fresh from the pinned maps on each scrape.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use log::{info, warn};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::audit_watch::AuditSummary;
use crate::pins::PinDir;
use crate::service::{ServiceCounter, ServiceCounters};

/// The last periodic audit, shared with the metrics endpoint.
pub type SharedAudit = Arc<Mutex<Option<AuditSummary>>>;

/// The exposition text for the current state.
pub fn render(
    pins: &PinDir,
    service: Option<&ServiceCounters>,
    capacity: u32,
    audit: Option<&AuditSummary>,
) -> Result<String> {
    let mut registry = Registry::with_prefix("ttm");
    let stats = crate::stats::read(&crate::stats::open(pins)?)?;
    for (name, total) in &stats.counters {
        registry.register(
            *name,
            format!("kernel side: {}", name.replace('_', " ")),
            ConstCounter::new(*total),
        );
    }
    if let Some(service) = service {
        for counter in ServiceCounter::ALL {
            registry.register(
                format!("lookup_{}", counter.name()),
                format!("lookup service: {}", counter.name().replace('_', " ")),
                ConstCounter::new(service.get(counter)),
            );
        }
    }
    let live = stats.live_records();
    registry.register(
        "live_records",
        "connections holding a record in the record map",
        ConstGauge::new(live as i64),
    );
    registry.register(
        "records_capacity",
        "capacity of the record map (--max-records)",
        ConstGauge::new(i64::from(capacity)),
    );
    if let Some(audit) = audit {
        register_audit(&mut registry, audit);
    }
    registry
        .sub_registry_with_label(("version".into(), env!("CARGO_PKG_VERSION").into()))
        .register("build_info", "ttm build", ConstGauge::new(1i64));
    let mut text = String::new();
    encode(&mut text, &registry).context("encoding metrics")?;
    Ok(text)
}

/// The periodic audit's gauges.
fn register_audit(registry: &mut Registry, audit: &AuditSummary) {
    let by_hook = Family::<Vec<(String, String)>, Gauge>::default();
    for (hook, n) in &audit.foreign_by_hook {
        by_hook
            .get_or_create(&vec![("hook".to_string(), hook.clone())])
            .set(*n as i64);
    }
    registry.register(
        "audit_foreign_peer_rewriters",
        "foreign BPF programs that can rewrite the peer addresses apps see, by hook (last audit)",
        by_hook,
    );
    registry.register(
        "audit_foreign_peer_rewriters_all",
        "foreign BPF programs that can rewrite peers, all hooks (last audit)",
        ConstGauge::new(audit.foreign_total() as i64),
    );
    registry.register(
        "audit_own_programs",
        "ttm's own programs found attached (last audit)",
        ConstGauge::new(audit.own_present as i64),
    );
    registry.register(
        "audit_own_programs_expected",
        "ttm's own programs this daemon attached",
        ConstGauge::new(audit.own_expected as i64),
    );
    registry.register(
        "audit_last_run_timestamp_seconds",
        "when the last audit finished (seconds since the epoch)",
        ConstGauge::new(audit.finished_at),
    );
    registry.register(
        "audit_duration_seconds",
        "how long the last audit took",
        ConstGauge::new(audit.duration.as_secs_f64()),
    );
    registry.register(
        "audit_failed",
        "1 if the last audit could not run (the log says why)",
        ConstGauge::new(i64::from(audit.error.is_some())),
    );
}

/// Serves `GET /metrics` on `addr` until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    pins: PinDir,
    service: Option<Arc<ServiceCounters>>,
    capacity: u32,
    audit: Option<SharedAudit>,
) -> Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint {addr}"))?;
    info!("metrics on http://{addr}/metrics");
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let pins = pins.clone();
            let service = service.clone();
            let audit = audit.clone();
            tokio::spawn(async move {
                let mut head = vec![0u8; 4096];
                let mut got = 0;
                while got < head.len() {
                    match tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        conn.read(&mut head[got..]),
                    )
                    .await
                    {
                        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
                        Ok(Ok(n)) => got += n,
                    }
                    if head[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let request = String::from_utf8_lossy(&head[..got]);
                let (status, body) = if request.starts_with("GET /metrics ") {
                    let last_audit = audit
                        .as_ref()
                        .and_then(|a| a.lock().ok().and_then(|g| g.clone()));
                    match render(&pins, service.as_deref(), capacity, last_audit.as_ref()) {
                        Ok(text) => ("200 OK", text),
                        Err(e) => {
                            warn!("metrics: {e:#}");
                            ("500 Internal Server Error", format!("{e:#}\n"))
                        }
                    }
                } else {
                    ("404 Not Found", "try /metrics\n".to_string())
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
            });
        }
    }))
}
