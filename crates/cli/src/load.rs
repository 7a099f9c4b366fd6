//! `otstream record`, `otstream replay` and `otstream fleet`: the flags of
//! the load tooling in `otstream-loadgen`.

use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use otstream_loadgen::{
    Fleet, FleetConfig, Outcome, Pacing, ReplayConfig, Rewrite, Source, Target,
};
use otstream_model::{RawMessage, Transport};
use tokio_util::sync::CancellationToken;

use crate::runtime::{LogFormat, block_on, init_logging, shutdown_signal};
use crate::serve;

/// Flags of `otstream record`.
#[derive(clap::Args, Debug)]
pub struct RecordArgs {
    #[command(subcommand)]
    source: RecordSource,
}

#[derive(clap::Subcommand, Debug)]
enum RecordSource {
    /// Listen for OwnTracks HTTP POSTs (any path), answer 200 `[]`, and keep them.
    Http {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:5145")]
        listen: std::net::SocketAddr,
        #[command(flatten)]
        out: RecordOut,
    },
    /// Subscribe to a broker at QoS 1 and keep every message.
    Mqtt {
        /// Broker, `mqtt://[user:pass@]host:port`.
        #[arg(long)]
        mqtt_url: String,
        /// Topic filters (repeatable).
        #[arg(long = "topic", default_value = "owntracks/#")]
        topics: Vec<String>,
        /// Client id.
        #[arg(long, default_value = "otstream-record")]
        client_id: String,
        #[command(flatten)]
        out: RecordOut,
    },
    /// Export the Kafka `raw` topic's messages received in a time range.
    Kafka {
        /// Start: milliseconds since the UNIX epoch, or `-30m`, `-2h`, `-1d`
        /// before now [default: the topic's start].
        #[arg(long, allow_hyphen_values = true)]
        from: Option<String>,
        /// End (exclusive), as `--from` [default: now].
        #[arg(long, allow_hyphen_values = true)]
        to: Option<String>,
        #[command(flatten)]
        out: RecordOut,
        #[command(flatten)]
        common: Box<serve::Args>,
    },
}

#[derive(clap::Args, Debug)]
struct RecordOut {
    /// The recording to write (`-` for stdout).
    #[arg(long, short)]
    out: PathBuf,
    /// Stop after this many messages.
    #[arg(long)]
    limit: Option<u64>,
}

fn create(path: &Path) -> Result<Box<dyn Write + Send>> {
    if path == Path::new("-") {
        return Ok(Box::new(std::io::stdout()));
    }
    let f = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    Ok(Box::new(f))
}

/// A time flag: milliseconds since the epoch, or a span before now
/// (`-30m`, `-2h`, `-1d`, `-1h30m`: humantime's units).
fn parse_time(s: &str, now_ms: i64) -> Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let span = s
        .strip_prefix('-')
        .with_context(|| format!("time {s:?}: milliseconds since the epoch, or -30m, -2h, -1d"))?;
    let back = humantime::parse_duration(span).with_context(|| format!("time {s:?}"))?;
    i64::try_from(back.as_millis())
        .ok()
        .and_then(|back| now_ms.checked_sub(back))
        .with_context(|| format!("time {s:?}: too far back"))
}

/// A token cancelled by SIGINT or SIGTERM (Ctrl-C stops a recorder or a
/// replay cleanly), and the task that watches for them, to abort when done.
fn cancel_on_signal() -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let cancel = stop.clone();
    let task = tokio::spawn(async move {
        shutdown_signal().await;
        cancel.cancel();
    });
    (stop, task)
}

/// Runs `otstream record ...`.
pub fn record(args: RecordArgs) -> Result<()> {
    let now = otstream_model::raw::now_ms();
    let (source, out) = match args.source {
        RecordSource::Http { listen, out } => (Source::Http { listen }, out),
        RecordSource::Mqtt {
            mqtt_url,
            topics,
            client_id,
            out,
        } => (
            Source::Mqtt {
                url: mqtt_url,
                filters: topics,
                client_id,
            },
            out,
        ),
        RecordSource::Kafka {
            from,
            to,
            out,
            common,
        } => {
            let config = common.config()?;
            let kafka = config.kafka()?.clone();
            (
                Source::Kafka {
                    config: Box::new(kafka),
                    from_ms: from.map(|f| parse_time(&f, now)).transpose()?,
                    to_ms: to.map(|t| parse_time(&t, now)).transpose()?,
                },
                out,
            )
        }
    };
    let _ = init_logging("warn", LogFormat::Text);
    let writer = create(&out.out)?;
    let written = block_on(async move {
        let (stop, signal) = cancel_on_signal();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            if let Ok(what) = ready_rx.await {
                eprintln!("recording {what}");
            }
        });
        let n = otstream_loadgen::record(source, writer, out.limit, Some(ready_tx), stop)
            .await
            .context("recording failed")?;
        signal.abort();
        Ok(n)
    })?;
    eprintln!("recorded {written} messages to {}", out.out.display());
    Ok(())
}

/// How fast, and where the report goes: shared by `replay` and `fleet`.
#[derive(clap::Args, Debug)]
struct SendArgs {
    /// Send to this OwnTracks HTTP endpoint, e.g. http://127.0.0.1:5144/pub.
    #[arg(long, conflicts_with = "mqtt")]
    http: Option<String>,
    /// Publish (QoS 1) to this broker, mqtt://[user:pass@]host:port.
    #[arg(long)]
    mqtt: Option<String>,
    /// Open loop at this many messages per second.
    #[arg(long, conflicts_with_all = ["speed", "max"])]
    rate: Option<f64>,
    /// Open loop at the recorded pacing, this many times faster.
    #[arg(long, conflicts_with = "max")]
    speed: Option<f64>,
    /// Closed loop: each connection sends its next message when the last
    /// is answered (the default for `replay`).
    #[arg(long)]
    max: bool,
    /// Connections (HTTP keep-alive connections or MQTT clients).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Resend messages answered 503 (after Retry-After) or lost with their
    /// connection, as the apps do, until acknowledged.
    #[arg(long)]
    retry: bool,
    /// HTTP Basic credentials, user:password.
    #[arg(long, value_name = "USER:PASSWORD")]
    basic_auth: Option<String>,
    /// MQTT client id prefix.
    #[arg(long, default_value = "otstream-replay")]
    client_id: String,
    /// Topic prefix for messages published over MQTT.
    #[arg(long, default_value = "owntracks")]
    prefix: String,
    /// Write the report as JSON here too.
    #[arg(long, value_name = "FILE")]
    report_json: Option<PathBuf>,
    /// Write every latency sample (microseconds, one per line) here.
    #[arg(long, value_name = "FILE")]
    samples: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

impl SendArgs {
    fn target(&self) -> Result<Target> {
        match (&self.http, &self.mqtt) {
            (Some(url), None) => Ok(Target::Http {
                url: url.clone(),
                basic_auth: self.basic_auth.clone(),
            }),
            (None, Some(url)) => Ok(Target::Mqtt {
                url: url.clone(),
                client_id: format!("{}-{}", self.client_id, std::process::id()),
            }),
            _ => bail!("say where to send: --http URL or --mqtt URL"),
        }
    }

    fn pacing(&self, default: Pacing) -> Pacing {
        match (self.rate, self.speed, self.max) {
            (Some(r), _, _) => Pacing::Rate(r),
            (_, Some(s), _) => Pacing::Recorded(s),
            (_, _, true) => Pacing::Max,
            _ => default,
        }
    }

    /// Sends `input`, prints the report, and writes the JSON and samples.
    fn run<I>(&self, config: ReplayConfig, input: I) -> Result<()>
    where
        I: Iterator<Item = Result<RawMessage, String>> + Send + 'static,
    {
        let _ = init_logging("warn", LogFormat::Text);
        let Outcome { report, samples } = block_on(async move {
            let (stop, signal) = cancel_on_signal();
            let outcome = otstream_loadgen::replay(config, input, stop).await;
            signal.abort();
            outcome.context("replay failed")
        })?;
        println!("{report}");
        if let Some(path) = &self.report_json {
            std::fs::write(path, report.to_json() + "\n")
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        if let Some(path) = &self.samples {
            let mut out = std::io::BufWriter::new(
                File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
            );
            for s in samples {
                writeln!(out, "{s}")?;
            }
            out.flush()?;
        }
        Ok(())
    }
}

/// Flags of `otstream replay`.
#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// The recording (or bare payloads, one per line); `-` for stdin.
    file: PathBuf,
    #[command(flatten)]
    send: SendArgs,
    /// Send each message once per device copy: copy k of user/device is
    /// user/device-k, so one recording simulates N devices.
    #[arg(long, default_value_t = 1)]
    devices: u32,
    /// Shift every tst so the recording's first message is stamped now.
    #[arg(long, conflicts_with = "tst_offset")]
    retime: bool,
    /// Add this many seconds to every tst.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    tst_offset: i64,
}

/// The first `tst` in a recording, for `--retime`.
fn first_tst(path: &Path) -> Result<Option<i64>> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    for m in otstream_loadgen::read_recording(BufReader::new(f)).flatten() {
        if let Ok(serde_json::Value::Object(o)) = serde_json::from_slice(&m.payload) {
            if let Some(t) = o.get("tst").and_then(serde_json::Value::as_i64) {
                return Ok(Some(t));
            }
        }
    }
    Ok(None)
}

/// Lines in a file, for the progress bar's length.
fn count_lines(path: &Path) -> Option<u64> {
    use std::io::BufRead;
    let f = File::open(path).ok()?;
    Some(BufReader::new(f).split(b'\n').count() as u64)
}

/// Runs `otstream replay`.
pub fn replay(args: ReplayArgs) -> Result<()> {
    let stdin = args.file == Path::new("-");
    let tst_offset = match (args.retime, stdin) {
        (true, true) => bail!("--retime reads the recording twice: give a file, not stdin"),
        (true, false) => {
            first_tst(&args.file)?.map_or(0, |t| otstream_model::raw::now_ms() / 1000 - t)
        }
        (false, _) => args.tst_offset,
    };
    let progress = if args.send.quiet || stdin {
        None
    } else {
        count_lines(&args.file)
    };
    let config = ReplayConfig {
        target: args.send.target()?,
        pacing: args.send.pacing(Pacing::Max),
        connections: args.send.connections,
        rewrite: Rewrite {
            devices: args.devices.max(1),
            tst_offset,
            prefix: args.send.prefix.clone(),
        },
        retry: args.send.retry,
        keep_samples: args.send.samples.is_some(),
        progress,
    };
    if stdin {
        let input = otstream_loadgen::read_recording(BufReader::new(std::io::stdin()));
        args.send.run(config, input)
    } else {
        let f = File::open(&args.file)
            .with_context(|| format!("cannot open {}", args.file.display()))?;
        let input = otstream_loadgen::read_recording(BufReader::with_capacity(1 << 20, f));
        args.send.run(config, input)
    }
}

/// Flags of `otstream fleet`.
#[derive(clap::Args, Debug)]
pub struct FleetArgs {
    /// Devices in the fleet.
    #[arg(long, default_value_t = 100)]
    devices: u32,
    /// Messages in all, then stop.
    #[arg(long, default_value_t = 10_000)]
    messages: u64,
    /// Seconds between reports of a moving device.
    #[arg(long, default_value_t = 10)]
    interval: u32,
    /// Seed of every random choice: the same seed, the same fleet.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The user every device belongs to.
    #[arg(long, default_value = "fleet")]
    user: String,
    /// Start the simulated clock now instead of at 2026-01-01T00:00:00Z.
    #[arg(long)]
    now: bool,
    /// Send what real phones send: GPS noise, Wi-Fi and cell outliers while
    /// parked, traffic lights, bus stops, tunnels, errands; walking,
    /// cycling, driving and transit.
    #[arg(long)]
    phones: bool,
    /// Stop after this many simulated hours (or --messages, if sooner).
    #[arg(long)]
    hours: Option<f64>,
    /// With --phones and --out: write the trips as they really happened
    /// here, one JSON object a line (user, device, kind, start, end,
    /// distance_m), to measure trip detection against.
    #[arg(long, requires_all = ["phones", "out"])]
    truth: Option<PathBuf>,
    /// Write a recording here instead of sending (`-` for stdout).
    #[arg(long, short, conflicts_with_all = ["http", "mqtt"])]
    out: Option<PathBuf>,
    /// With --out: record the messages as `http` (X-Limit headers) or
    /// `mqtt` (topics) [default: mqtt when sending to --mqtt, else http].
    #[arg(long, value_parser = ["http", "mqtt"])]
    transport: Option<String>,
    #[command(flatten)]
    send: SendArgs,
}

/// Runs `otstream fleet`.
pub fn fleet(args: FleetArgs) -> Result<()> {
    let transport = match args.transport.as_deref() {
        Some("mqtt") => Transport::Mqtt,
        Some(_) => Transport::Http,
        None if args.send.mqtt.is_some() => Transport::Mqtt,
        None => Transport::Http,
    };
    let mut config = FleetConfig {
        devices: args.devices.max(1),
        messages: args.messages,
        interval_s: args.interval.max(1),
        seed: args.seed,
        transport,
        prefix: args.send.prefix.clone(),
        user: args.user.clone(),
        phones: args.phones,
        duration_s: args.hours.map(|h| (h * 3600.0).round() as i64),
        ..Default::default()
    };
    if args.now {
        config.start_ms = otstream_model::raw::now_ms();
    }
    let mut fleet = Fleet::new(config);
    if let Some(path) = &args.out {
        let mut out = std::io::BufWriter::new(create(path)?);
        let mut n = 0u64;
        for m in fleet.by_ref() {
            otstream_loadgen::write_recording_line(&mut out, &m)?;
            n += 1;
        }
        out.flush()?;
        if let Some(truth) = &args.truth {
            let mut w = std::io::BufWriter::new(create(truth)?);
            for t in fleet.truth() {
                serde_json::to_writer(&mut w, t)?;
                w.write_all(b"\n")?;
            }
            w.flush()?;
            eprintln!(
                "wrote {} true trips to {}",
                fleet.truth().len(),
                truth.display()
            );
        }
        eprintln!(
            "wrote {n} messages of {} devices to {}",
            args.devices,
            path.display()
        );
        return Ok(());
    }
    let config = ReplayConfig {
        target: args.send.target()?,
        // Live: the fleet's own clock, in real time unless told otherwise.
        pacing: args.send.pacing(Pacing::Recorded(1.0)),
        connections: args.send.connections,
        rewrite: Rewrite {
            prefix: args.send.prefix.clone(),
            ..Default::default()
        },
        retry: args.send.retry,
        keep_samples: args.send.samples.is_some(),
        progress: (!args.send.quiet).then_some(args.messages),
    };
    args.send.run(config, fleet.map(Ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_epoch_milliseconds_or_spans_before_now() {
        let now = 1_000_000_000;
        assert_eq!(parse_time("1700000000000", now).unwrap(), 1_700_000_000_000);
        assert_eq!(parse_time("-30m", now).unwrap(), now - 1_800_000);
        assert_eq!(parse_time("-2h", now).unwrap(), now - 7_200_000);
        assert_eq!(parse_time("-1h30m", now).unwrap(), now - 5_400_000);
        assert_eq!(parse_time("-1w", now).unwrap(), now - 604_800_000);
        assert!(parse_time("-5x", now).is_err());
        // Not one byte, and too large: errors, no panic.
        assert!(parse_time("-5é", now).is_err());
        assert!(parse_time("-é", now).is_err());
        assert!(parse_time("-", now).is_err());
        assert!(parse_time("-9223372036854775807d", now).is_err());
        assert!(parse_time("yesterday", now).is_err());
    }
}
