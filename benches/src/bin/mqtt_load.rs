//! MQTT ingress throughput: publishes N OwnTracks locations with QoS 1 as
//! fast as the broker acknowledges them, then (with --metrics) waits until
//! `otstream serve` reports them all stored. Prints the publish rate and the
//! publish-to-stored rate.
//!
//! Used by benches/mqtt_load.sh.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

#[derive(Parser)]
struct Args {
    /// Broker, mqtt://host:port
    #[arg(long)]
    url: String,
    /// Topic prefix (the apps' `owntracks`).
    #[arg(long, default_value = "owntracks")]
    prefix: String,
    /// Messages to publish.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Devices the messages are spread over.
    #[arg(long, default_value_t = 100)]
    devices: u64,
    /// otstream's /metrics URL: wait until every message is stored.
    #[arg(long)]
    metrics: Option<String>,
}

fn stored(metrics: &str) -> Result<u64> {
    let text = ureq::get(metrics).call()?.into_string()?;
    Ok(text
        .lines()
        .find(|l| l.starts_with("otstream_stored_rows_total{table=\"positions\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let rest = args.url.trim_start_matches("mqtt://");
    let (host, port) = rest.rsplit_once(':').context("url needs host:port")?;
    let mut opts = MqttOptions::new(
        format!("otstream-bench-{}", std::process::id()),
        host,
        port.parse()?,
    );
    opts.set_keep_alive(Duration::from_secs(30))
        .set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(opts, 1000);
    let started = Instant::now();
    let (n, devices, prefix) = (args.messages, args.devices, args.prefix.clone());
    let publisher = tokio::spawn(async move {
        for i in 0..n {
            let topic = format!("{prefix}/bench/d{}", i % devices);
            let payload = format!(
                r#"{{"_type":"location","acc":10,"alt":36,"batt":94,"bs":2,"cog":98,"conn":"w","lat":52.225314,"lon":13.332127,"m":1,"p":100.266,"t":"p","tid":"RO","tst":{},"vac":4,"vel":5}}"#,
                1_700_000_000 + i / devices
            );
            if client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut acked = 0;
    while acked < args.messages {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(e) => bail!("publisher: {e}"),
        }
    }
    let published = started.elapsed().as_secs_f64();
    publisher.await?;
    println!(
        "published {} (QoS 1, PUBACKed by the broker) in {published:.2} s: {:.0} msgs/s",
        args.messages,
        args.messages as f64 / published
    );
    if let Some(m) = &args.metrics {
        let deadline = Instant::now() + Duration::from_secs(600);
        while stored(m)? < args.messages {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {} stored after 10 minutes",
                    stored(m)?,
                    args.messages
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "stored {} in {secs:.2} s from the first publish: {:.0} msgs/s publish-to-stored",
            args.messages,
            args.messages as f64 / secs
        );
    }
    Ok(())
}
