//! Events delivered per second to a local webhook receiver.
//!
//! Appends `--events` events to an outbox (in the sink's batches), then
//! runs one webhook deliverer against a hyper receiver on loopback until
//! every event is taken, and prints the rate. The same-run baseline is the
//! same number of POSTs of the same bodies, one at a time on one kept-alive
//! connection, by the same client without the outbox: what the delivery
//! loop (reading the queue, signing, deleting) costs on top of HTTP.
//!
//! `cargo run --release -p otstream-benches --bin events_delivery -- --events 20000`

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use otstream_bus::{Ack, Message};
use otstream_events::outbox::{Format, Outbox, Route};
use otstream_events::{Webhook, WebhookConfig};
use otstream_model::{Event, EventKind, Meta, Record, Transport};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
struct Args {
    /// Events to deliver.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Rounds (each: baseline, then the deliverer).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

fn event(i: usize) -> Event {
    let meta = Meta {
        user: "fleet".into(),
        device: format!("van{}", i % 100).into(),
        tid: Some("vn".into()),
        received_at: 1_700_000_000_000,
        transport: Transport::Http,
        topic: None,
    };
    Event {
        origin: Some("server".into()),
        ..Event::new(
            if i % 2 == 0 {
                EventKind::Enter
            } else {
                EventKind::Leave
            },
            meta,
            1_700_000_000 + i as i64,
            (52.52, 13.40),
            Some("Depot".into()),
        )
    }
}

/// A receiver answering 200 to every POST, counting them.
async fn receiver(count: Arc<AtomicU64>) -> Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let count = count.clone();
                        async move {
                            let _ = req.into_body().collect().await;
                            count.fetch_add(1, Ordering::Relaxed);
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    Ok(port)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let count = Arc::new(AtomicU64::new(0));
    let port = receiver(count.clone()).await?;
    let url = format!("http://127.0.0.1:{port}/hook");
    let bodies: Vec<String> = (0..args.events).map(|i| event(i).to_json()).collect();
    for round in 1..=args.rounds {
        // Baseline: plain POSTs, one at a time.
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        let started = Instant::now();
        for b in &bodies {
            let req = hyper::Request::post(url.as_str())
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(b.clone())))?;
            let resp = client.request(req).await?;
            let _ = resp.into_body().collect().await;
        }
        let base = args.events as f64 / started.elapsed().as_secs_f64();

        // The deliverer, from a filled outbox.
        let dir = tempfile::tempdir()?;
        let route = Route {
            name: "bench".into(),
            format: Format::Json,
            kinds: Default::default(),
            users: Default::default(),
            fences: Default::default(),
            rules: Default::default(),
        };
        let outbox = Outbox::open(dir.path(), vec![route])?;
        let msgs: Vec<Message<Record>> = (0..args.events)
            .map(|i| Message::new("k", Record::Event(event(i)), Ack::none()))
            .collect();
        for chunk in msgs.chunks(5000) {
            outbox.append(chunk, otstream_model::raw::now_ms())?;
        }
        let hook = Webhook::new(&WebhookConfig {
            name: Some("bench".into()),
            url: url.clone(),
            secret: Some("s3cret".into()),
            kinds: Vec::new(),
            users: Vec::new(),
            fences: Vec::new(),
            rules: Vec::new(),
            timeout_ms: 10_000,
        })?;
        let before = count.load(Ordering::Relaxed);
        let stop = CancellationToken::new();
        let started = Instant::now();
        let run = tokio::spawn(otstream_events::deliver(
            "bench".into(),
            outbox.reader("bench")?,
            hook,
            Duration::from_secs(86_400),
            stop.clone(),
        ));
        while count.load(Ordering::Relaxed) - before < args.events as u64 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let rate = args.events as f64 / started.elapsed().as_secs_f64();
        stop.cancel();
        run.await??;
        println!(
            "round {round}: plain POSTs {base:.0}/s, webhook deliverer {rate:.0} events/s ({:.0}% of plain)",
            100.0 * rate / base
        );
    }
    Ok(())
}
