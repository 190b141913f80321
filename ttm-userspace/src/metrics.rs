//! `--metrics ADDR`: Prometheus text exposition of every counter, the map
//! fill level and build info, read fresh from the pinned maps on each scrape.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use log::{info, warn};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::pins::PinDir;
use crate::service::{ServiceCounter, ServiceCounters};

/// The exposition text for the current state.
pub fn render(pins: &PinDir, service: Option<&ServiceCounters>, capacity: u32) -> Result<String> {
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
        "connections holding a record in the cookie map",
        ConstGauge::new(live as i64),
    );
    registry.register(
        "records_capacity",
        "capacity of the cookie map (--max-records)",
        ConstGauge::new(i64::from(capacity)),
    );
    registry
        .sub_registry_with_label(("version".into(), env!("CARGO_PKG_VERSION").into()))
        .register("build_info", "ttm build", ConstGauge::new(1i64));
    let mut text = String::new();
    encode(&mut text, &registry).context("encoding metrics")?;
    Ok(text)
}

/// Serves `GET /metrics` on `addr` until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    pins: PinDir,
    service: Option<Arc<ServiceCounters>>,
    capacity: u32,
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
                    match render(&pins, service.as_deref(), capacity) {
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
