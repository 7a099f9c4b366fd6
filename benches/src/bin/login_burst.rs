//! What a password-guessing burst costs the phones: N keep-alive phones
//! POST locations with valid Basic credentials (checked once, then a
//! lookup of the verified header) from 127.0.0.3, and in the middle of
//! the run `--guesses` connections at once POST with a wrong password for
//! a known user from 127.0.0.2. Reports the guesses' statuses and, for the
//! phones, latency percentiles before, during (until the last guess is
//! answered) and after the burst, from HDR histograms.
//!
//! `--htpasswd-out FILE` writes the users file the server needs (bcrypt
//! at cost 10, as `htpasswd -B` makes it) and exits. Used by
//! benches/login_burst.sh, whose figures are in BENCHMARKS.md.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
struct Args {
    /// The server's ingest address, e.g. 127.0.0.1:5144.
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Keep-alive phones posting back to back.
    #[arg(long, default_value_t = 16)]
    phones: usize,
    /// Wrong passwords sent at once.
    #[arg(long, default_value_t = 400)]
    guesses: usize,
    /// Seconds of phones before the burst, and again after it.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Write the users file (fleet and jane, password s3cret) and exit.
    #[arg(long)]
    htpasswd_out: Option<std::path::PathBuf>,
}

const PHONE: [u8; 4] = [127, 0, 0, 3];
const ATTACKER: [u8; 4] = [127, 0, 0, 2];

fn basic(cred: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(cred)
    )
}

async fn connect_from(source: [u8; 4], server: SocketAddr) -> Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::from(source), 0))?;
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One phone: (when each answer came, its latency in µs).
async fn phone(server: SocketAddr, n: usize, stop: Arc<AtomicBool>) -> Result<Vec<(Instant, u64)>> {
    let stream = connect_from(PHONE, server).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let auth = basic("fleet:s3cret");
    let device = format!("p{n}");
    let mut tst: u64 = 1_700_000_000;
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        tst += 1;
        let body = format!(
            r#"{{"_type":"location","lat":52.5,"lon":13.4,"acc":10,"tid":"ph","tst":{tst}}}"#
        );
        let req = Request::post("/pub")
            .header("host", server.to_string())
            .header("authorization", auth.as_str())
            .header("x-limit-u", "fleet")
            .header("x-limit-d", device.as_str())
            .body(Full::new(Bytes::from(body)))?;
        let started = Instant::now();
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        resp.into_body().collect().await?;
        // Sixteen first logins at once from one address meet the limit on
        // password checks per address (429, Retry-After: 1), as phones
        // behind one NAT would; they come back, as the apps do.
        if status == 429 && out.is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        anyhow::ensure!(status == 200, "a phone got {status}");
        out.push((Instant::now(), started.elapsed().as_micros() as u64));
    }
    Ok(out)
}

/// One guess on a connection of its own: the answer's status.
async fn guess(server: SocketAddr) -> Result<u16> {
    let mut stream = connect_from(ATTACKER, server).await?;
    let req = format!(
        "POST /pub HTTP/1.1\r\nHost: {server}\r\nAuthorization: {}\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{{}}",
        basic("jane:guess")
    );
    stream.write_all(req.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status line")
}

fn report(name: &str, samples: &[u64], span: Duration) -> Result<()> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for s in samples {
        h.saturating_record((*s).max(1));
    }
    println!(
        "phones {name:>7}: {:>6} fixes in {:>6.2} s ({:>6.0}/s)  p50 {:>6} µs  p99 {:>6} µs  max {:>7} µs",
        samples.len(),
        span.as_secs_f64(),
        samples.len() as f64 / span.as_secs_f64().max(1e-9),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(path) = &args.htpasswd_out {
        let hash = bcrypt::hash("s3cret", 10)?;
        std::fs::write(path, format!("fleet:{hash}\njane:{hash}\n"))?;
        return Ok(());
    }
    let server = args.addr.context("--addr is required")?;
    let stop = Arc::new(AtomicBool::new(false));
    let phones: Vec<_> = (0..args.phones)
        .map(|n| tokio::spawn(phone(server, n, stop.clone())))
        .collect();
    let begun = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let burst = Instant::now();
    let guesses: Vec<_> = (0..args.guesses)
        .map(|_| tokio::spawn(guess(server)))
        .collect();
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for g in guesses {
        let s = match g.await? {
            Ok(s) => s.to_string(),
            Err(e) => format!("error ({e})"),
        };
        *statuses.entry(s).or_default() += 1;
    }
    let burst_end = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let end = Instant::now();
    let (mut before, mut during, mut after) = (Vec::new(), Vec::new(), Vec::new());
    for p in phones {
        for (at, micros) in p.await?? {
            if at < burst {
                before.push(micros);
            } else if at <= burst_end {
                during.push(micros);
            } else {
                after.push(micros);
            }
        }
    }
    println!(
        "guesses: {} at once, all answered in {:.3} s: {statuses:?}",
        args.guesses,
        (burst_end - burst).as_secs_f64()
    );
    report("before", &before, burst - begun)?;
    report("during", &during, burst_end - burst)?;
    report("after", &after, end - burst_end)?;
    Ok(())
}
