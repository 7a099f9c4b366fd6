//! A closed-loop HTTP load generator for `otstream serve`: N keep-alive
//! connections, each POSTing OwnTracks locations back to back for a fixed
//! time, every device with its own strictly increasing `tst` so that no
//! message collapses into another. Reports acknowledged messages per second
//! and latency percentiles from an HDR histogram.
//!
//! Used by benches/serve_load.sh and benches/pipeline_load.sh, whose
//! figures it produced; `otstream replay` (crates/loadgen) is the general
//! tool: recordings, open-loop pacing, MQTT, device copies.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

#[derive(Parser)]
struct Args {
    /// Target, e.g. http://127.0.0.1:5144/pub
    #[arg(long)]
    url: String,
    /// Concurrent keep-alive connections (one device each).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

struct Outcome {
    ok: u64,
    other: u64,
    latency: Histogram<u64>,
}

async fn connection(url: hyper::Uri, device: usize, until: Instant) -> Result<Outcome> {
    let host = url.host().context("url has no host")?.to_owned();
    let port = url.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut out = Outcome {
        ok: 0,
        other: 0,
        latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
    };
    let dev = format!("d{device}");
    let mut tst: u64 = 1_700_000_000;
    while Instant::now() < until {
        tst += 1;
        let body = format!(
            r#"{{"_type":"location","acc":10,"alt":36,"batt":94,"bs":2,"cog":98,"conn":"w","lat":52.225314,"lon":13.332127,"m":1,"p":100.266,"t":"p","tid":"RO","tst":{tst},"vac":4,"vel":5}}"#
        );
        let req = Request::post(url.clone())
            .header("host", host.as_str())
            .header("content-type", "application/json")
            .header("x-limit-u", "load")
            .header("x-limit-d", dev.as_str())
            .body(Full::new(Bytes::from(body)))?;
        let started = Instant::now();
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        resp.into_body().collect().await?;
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        out.latency.saturating_record(micros.max(1));
        if status == 200 {
            out.ok += 1
        } else {
            out.other += 1
        }
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let url: hyper::Uri = args.url.parse().context("invalid --url")?;
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let tasks: Vec<_> = (0..args.connections)
        .map(|d| tokio::spawn(connection(url.clone(), d, until)))
        .collect();
    let mut total = Outcome {
        ok: 0,
        other: 0,
        latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
    };
    for t in tasks {
        let o = t.await??;
        total.ok += o.ok;
        total.other += o.other;
        total.latency.add(&o.latency)?;
    }
    let secs = started.elapsed().as_secs_f64();
    let ms = |q: f64| total.latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "connections={} seconds={secs:.1} acknowledged={} other={} rate={:.0}/s p50={:.2}ms p90={:.2}ms p99={:.2}ms p99.9={:.2}ms max={:.2}ms",
        args.connections,
        total.ok,
        total.other,
        total.ok as f64 / secs,
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        total.latency.max() as f64 / 1000.0,
    );
    Ok(())
}
