//! `mlxfs mount --metrics-addr 127.0.0.1:PORT`: the status as Prometheus text exposition
//! (format 0.0.4) at `GET /metrics`, over a deliberately tiny HTTP/1.x server (one request per
//! connection, bounded request size and time). Loopback only unless the user allows more.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::report::StatusReport;
use crate::reporter::Reporter;

const MAX_REQUEST: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 64;

/// Refuses a non-loopback address unless `allow_remote`.
pub fn check_addr(addr: SocketAddr, allow_remote: bool) -> Result<(), String> {
    if addr.ip().is_loopback() || allow_remote {
        Ok(())
    } else {
        Err(format!(
            "--metrics-addr {addr} is not a loopback address; add --metrics-allow-remote to \
             expose metrics beyond this machine"
        ))
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The exposition text of a report.
pub fn render(r: &StatusReport) -> String {
    let mut o = String::new();
    let gauge = |o: &mut String, name: &str, help: &str, v: f64| {
        family(o, name, "gauge", help);
        let _ = writeln!(o, "{name} {v}");
    };
    let counter = |o: &mut String, name: &str, help: &str, v: u64| {
        family(o, name, "counter", help);
        let _ = writeln!(o, "{name} {v}");
    };
    counter(
        &mut o,
        "mlxfs_read_bytes_total",
        "Bytes read through the mount.",
        r.read_bytes,
    );
    counter(
        &mut o,
        "mlxfs_written_bytes_total",
        "Bytes written through the mount.",
        r.written_bytes,
    );
    family(
        &mut o,
        "mlxfs_throughput_bytes_per_second",
        "gauge",
        "Moving throughput over a window.",
    );
    for (window, rate) in [
        ("1s", r.throughput.s1),
        ("10s", r.throughput.s10),
        ("60s", r.throughput.s60),
    ] {
        let _ = writeln!(
            o,
            "mlxfs_throughput_bytes_per_second{{direction=\"read\",window=\"{window}\"}} {}",
            rate.read_bytes_per_sec
        );
        let _ = writeln!(
            o,
            "mlxfs_throughput_bytes_per_second{{direction=\"write\",window=\"{window}\"}} {}",
            rate.write_bytes_per_sec
        );
    }
    gauge(
        &mut o,
        "mlxfs_logical_bytes",
        "Sum of file sizes in the tree.",
        r.logical_bytes as f64,
    );
    gauge(
        &mut o,
        "mlxfs_physical_bytes",
        "Bytes of distinct chunks stored.",
        r.physical_bytes as f64,
    );
    gauge(
        &mut o,
        "mlxfs_saved_bytes",
        "Logical minus physical bytes.",
        r.saved_bytes as f64,
    );
    gauge(
        &mut o,
        "mlxfs_pack_bytes",
        "Bytes of pack files on disk.",
        r.pack_bytes as f64,
    );
    gauge(
        &mut o,
        "mlxfs_catalog_bytes",
        "Bytes of the catalog and its WAL.",
        r.catalog_bytes as f64,
    );
    gauge(
        &mut o,
        "mlxfs_files",
        "Regular files in the tree.",
        r.files as f64,
    );
    gauge(
        &mut o,
        "mlxfs_chunks",
        "Distinct chunks stored.",
        r.chunks as f64,
    );
    gauge(
        &mut o,
        "mlxfs_uptime_seconds",
        "Seconds since the mount.",
        r.uptime_secs,
    );
    family(
        &mut o,
        "mlxfs_models",
        "gauge",
        "Models in the tree per layout.",
    );
    let _ = writeln!(o, "mlxfs_models{{layout=\"hf\"}} {}", r.models_by_layout.hf);
    let _ = writeln!(
        o,
        "mlxfs_models{{layout=\"ollama\"}} {}",
        r.models_by_layout.ollama
    );

    family(
        &mut o,
        "mlxfs_view_read_bytes_total",
        "counter",
        "Bytes read per view.",
    );
    for (view, v) in &r.per_view {
        let _ = writeln!(
            o,
            "mlxfs_view_read_bytes_total{{view=\"{}\"}} {}",
            escape(view),
            v.read_bytes
        );
    }
    family(
        &mut o,
        "mlxfs_view_written_bytes_total",
        "counter",
        "Bytes written per view.",
    );
    for (view, v) in &r.per_view {
        let _ = writeln!(
            o,
            "mlxfs_view_written_bytes_total{{view=\"{}\"}} {}",
            escape(view),
            v.written_bytes
        );
    }
    family(
        &mut o,
        "mlxfs_model_read_bytes_total",
        "counter",
        "Bytes read per model.",
    );
    for m in &r.per_model {
        let _ = writeln!(
            o,
            "mlxfs_model_read_bytes_total{{layout=\"{}\",model=\"{}\",revision=\"{}\"}} {}",
            escape(&m.layout),
            escape(&m.name),
            escape(&m.revision),
            m.read_bytes
        );
    }

    family(
        &mut o,
        "mlxfs_op_latency_seconds",
        "histogram",
        "Latency of filesystem operations.",
    );
    for (op, s) in &r.ops {
        let mut cumulative = 0u64;
        for b in &s.latency_us {
            cumulative += b.count;
            let le = match b.le_us {
                Some(us) => format!("{}", us as f64 / 1e6),
                None => "+Inf".into(),
            };
            let _ = writeln!(
                o,
                "mlxfs_op_latency_seconds_bucket{{op=\"{op}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            o,
            "mlxfs_op_latency_seconds_sum{{op=\"{op}\"}} {}",
            s.total_us as f64 / 1e6
        );
        let _ = writeln!(
            o,
            "mlxfs_op_latency_seconds_count{{op=\"{op}\"}} {}",
            s.count
        );
    }
    family(
        &mut o,
        "mlxfs_op_errors_total",
        "counter",
        "Filesystem operations that failed.",
    );
    for (op, s) in &r.ops {
        let _ = writeln!(o, "mlxfs_op_errors_total{{op=\"{op}\"}} {}", s.errors);
    }
    o
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The answer to one raw request (everything up to the blank line).
pub fn answer(request: &[u8], report: impl FnOnce() -> StatusReport) -> String {
    let text = String::from_utf8_lossy(request);
    let mut first = text.lines().next().unwrap_or("").split(' ');
    let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => response(
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            &render(&report()),
        ),
        ("GET", _) => response("404 Not Found", "text/plain", "only /metrics is here\n"),
        _ => response("405 Method Not Allowed", "text/plain", "GET only\n"),
    }
}

async fn handle(mut stream: TcpStream, reporter: Arc<Reporter>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let complete = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
                return Ok(true);
            }
            if buf.len() > MAX_REQUEST {
                return Ok(false);
            }
        }
    })
    .await;
    let reply = match complete {
        Ok(Ok(true)) => answer(&buf, || reporter.status()),
        Ok(Ok(false)) => response("400 Bad Request", "text/plain", "bad request\n"),
        _ => return Ok(()),
    };
    tokio::time::timeout(REQUEST_TIMEOUT, stream.write_all(reply.as_bytes()))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let _ = stream.shutdown().await;
    Ok(())
}

/// Serves `/metrics` on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener, reporter: Arc<Reporter>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let reporter = reporter.clone();
        tokio::spawn(async move {
            let _ = handle(stream, reporter).await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Bucket, OpReport};

    #[test]
    fn exposition_and_routing() {
        let mut r = StatusReport::empty("/s".into());
        r.read_bytes = 5;
        r.ops.insert(
            "read".into(),
            OpReport {
                count: 3,
                errors: 1,
                total_us: 30,
                mean_us: 10.0,
                latency_us: vec![
                    Bucket {
                        le_us: Some(10),
                        count: 2,
                    },
                    Bucket {
                        le_us: None,
                        count: 1,
                    },
                ],
            },
        );
        r.per_model.push(crate::report::ModelUsage {
            layout: "hf".into(),
            name: "a\"b".into(),
            ..Default::default()
        });
        let text = render(&r);
        assert!(text.contains("mlxfs_read_bytes_total 5\n"));
        assert!(text.contains("mlxfs_op_latency_seconds_bucket{op=\"read\",le=\"0.00001\"} 2\n"));
        assert!(text.contains("mlxfs_op_latency_seconds_bucket{op=\"read\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("model=\"a\\\"b\""));
        assert!(text.contains("mlxfs_view_read_bytes_total{view=\"hf\"} 0\n"));

        let ok = answer(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", || r.clone());
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(ok.contains("text/plain; version=0.0.4"));
        assert!(answer(b"GET / HTTP/1.1\r\n\r\n", || r.clone()).starts_with("HTTP/1.1 404"));
        assert!(answer(b"POST /metrics HTTP/1.1\r\n\r\n", || r.clone()).starts_with("HTTP/1.1 405"));
        assert!(answer(b"\xff\xff", || r.clone()).starts_with("HTTP/1.1 405"));
    }

    #[test]
    fn loopback_only_unless_allowed() {
        assert!(check_addr("127.0.0.1:9100".parse().unwrap(), false).is_ok());
        assert!(check_addr("[::1]:9100".parse().unwrap(), false).is_ok());
        assert!(check_addr("0.0.0.0:9100".parse().unwrap(), false).is_err());
        assert!(check_addr("0.0.0.0:9100".parse().unwrap(), true).is_ok());
    }
}
