//! `otstream import`: location history into the store, through the same
//! decode, filters, geofence, trips and sink as live data.
//!
//! ```text
//! files --(reader thread: otstream-import)--> decode --> geofence --> sink
//! ```
//!
//! It is a selection of the one topology ([`crate::topology`]): the
//! reader in place of the ingress, no side job, run to its end.
//!
//! A thread reads the files (one record in memory at a time for the
//! streaming formats) and hands each point to the decode stage over a
//! bounded link, the stages pass it on over bounded links (the summary's
//! tally counts what the sink takes as it takes it), so
//! memory stays flat on multi-GB files and the store sets the pace. At the
//! end the links close in order, every stage drains, and the sink commits
//! what is left before the summary is printed: what was imported, what the
//! filters set aside and why, what was skipped and why. History is not
//! news: no event is delivered (it is stored in `events`), and silence is
//! not evaluated. Natural keys make a second import of the same files add
//! no row.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use otstream_bus::{Ack, Message, Sender, Stage};
use otstream_import::{Context, Format, Identity, Item};
use otstream_model::{RawMessage, Record};
use tokio_util::sync::CancellationToken;

use crate::config::ServeConfig;
use crate::links::InProcess;
use crate::runtime::block_on;
use crate::supervisor::Supervisor;
use crate::topology::{self, Selection};

/// Flags of `otstream import`.
#[derive(clap::Args)]
pub struct ImportArgs {
    /// Files, or directories read whole (a Recorder `rec/` tree).
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
    /// What the files are: auto, rec, gpx, geojson, takeout or recording.
    #[arg(long, default_value = "auto", value_parser = parse_format)]
    format: Format,
    /// File every point under this user (with --device); a `.rec` file
    /// otherwise takes it from its path.
    #[arg(long, requires = "device")]
    user: Option<String>,
    /// File every point under this device (with --user).
    #[arg(long, requires = "user")]
    device: Option<String>,
    /// No progress bar (it is drawn only on a terminal anyway).
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    common: crate::serve::Args,
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse()
}

/// Runs `otstream import`.
pub fn run(args: ImportArgs) -> Result<()> {
    let ImportArgs {
        paths,
        format,
        user,
        device,
        quiet,
        common,
    } = args;
    let mut config = common.config()?;
    // History is not news: stored, not delivered; and a device whose
    // history ended a year ago is not silent now.
    config.events.webhooks.clear();
    config.events.mqtt.enabled = false;
    config.events.silent_after_s = 0;
    // Larger commits: nobody waits on one.
    config.sink.max_batch_rows = config.sink.max_batch_rows.max(20_000);
    let identity = user
        .zip(device)
        .map(|(user, device)| Identity { user, device });
    let mut files = Vec::new();
    for p in &paths {
        files.extend(
            otstream_import::files(p).with_context(|| format!("cannot read {}", p.display()))?,
        );
    }
    if files.is_empty() {
        bail!("no files under {paths:?}");
    }
    let summary = block_on(import(config, files, format, identity, quiet))?;
    println!("{summary}");
    Ok(())
}

/// What one import did.
#[derive(Default)]
struct Tally {
    files: usize,
    points: u64,
    skipped: BTreeMap<String, u64>,
    positions: u64,
    filtered: BTreeMap<String, u64>,
    dead: BTreeMap<String, u64>,
    derived: BTreeMap<&'static str, u64>,
    seconds: f64,
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |m: &BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let sum = |m: &BTreeMap<String, u64>| m.values().sum::<u64>();
        // " (why: n, ...)", or nothing when there is none.
        let detail = |m: &BTreeMap<String, u64>| {
            if m.is_empty() {
                String::new()
            } else {
                format!(" ({})", list(m))
            }
        };
        writeln!(
            f,
            "imported {} points from {} files in {:.1} s ({:.0} points/s)",
            self.points,
            self.files,
            self.seconds,
            self.points as f64 / self.seconds.max(1e-9)
        )?;
        writeln!(
            f,
            "  positions: {} stored, {} of them set aside by the filters{}",
            self.positions,
            sum(&self.filtered),
            detail(&self.filtered)
        )?;
        let derived: Vec<String> = self
            .derived
            .iter()
            .map(|(k, v)| format!("{v} {k}s"))
            .collect();
        writeln!(
            f,
            "  derived: {}",
            if derived.is_empty() {
                "nothing".to_owned()
            } else {
                derived.join(", ")
            }
        )?;
        writeln!(
            f,
            "  dead letters: {}{}",
            sum(&self.dead),
            detail(&self.dead)
        )?;
        write!(
            f,
            "  skipped: {}{}",
            sum(&self.skipped),
            detail(&self.skipped)
        )
    }
}

async fn import(
    config: ServeConfig,
    files: Vec<PathBuf>,
    format: Format,
    identity: Option<Identity>,
    quiet: bool,
) -> Result<Tally> {
    let started = Instant::now();
    let tally = Arc::new(std::sync::Mutex::new(Tally {
        files: files.len(),
        ..Tally::default()
    }));
    let total: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let progress = if quiet {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    };
    let points = Arc::new(AtomicU64::new(0));
    let reader = Files {
        files,
        format,
        ctx: Context {
            received_at: otstream_model::raw::now_ms(),
            identity,
            topic_prefix: config.decode.topic_prefix.clone(),
            bytes_read: Some(Arc::new(AtomicU64::new(0))),
        },
        points: points.clone(),
        tally: tally.clone(),
        progress: progress.clone(),
    };
    // Straight to ClickHouse when it is the store (no 200 waits here, so
    // the local buffer would only copy everything twice); the sink's
    // input counted as it takes it; the stages drain in order whatever
    // the reader's end, so what was read is stored before an error is
    // reported.
    let counted = tally.clone();
    let mut links = InProcess::new(&config).observed(Arc::new(move |batch| count(&counted, batch)));
    let mut sup = Supervisor::new(Duration::from_millis(config.shutdown_timeout_ms));
    topology::build(
        &config,
        Selection::import(&config, reader),
        &mut links,
        &mut sup,
    )
    .await?;
    drop(links);
    let ended = sup.finish().await;
    progress.finish_and_clear();
    ended?;
    let mut tally = std::mem::take(&mut *lock(&tally));
    tally.points = points.load(Ordering::Relaxed);
    tally.seconds = started.elapsed().as_secs_f64();
    Ok(tally)
}

/// import's reader: the files, one record in memory at a time for the
/// streaming formats, each point handed to the decode stage (on a thread
/// of its own: the readers are blocking).
pub(crate) struct Files {
    files: Vec<PathBuf>,
    format: Format,
    ctx: Context,
    points: Arc<AtomicU64>,
    tally: Arc<std::sync::Mutex<Tally>>,
    progress: ProgressBar,
}

/// Why the reader stopped.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub(crate) struct ReadError(#[from] anyhow::Error);

impl<S: Sender<RawMessage>> Stage<(), S> for Files {
    type Error = ReadError;

    async fn run(self, _: (), output: S, shutdown: CancellationToken) -> Result<(), ReadError> {
        let Files {
            files,
            format,
            ctx,
            points,
            tally,
            progress,
        } = self;
        let bytes = ctx.bytes_read.clone().unwrap_or_default();
        let read_points = points.clone();
        let prefix = ctx.topic_prefix.clone();
        let handle = tokio::runtime::Handle::current();
        let reader = std::thread::spawn(move || -> Result<()> {
            for f in &files {
                otstream_import::read(f, format, &ctx, &mut |item| match item {
                    Item::Message(m) => {
                        let key = identity_key(&m, &prefix);
                        read_points.fetch_add(1, Ordering::Relaxed);
                        let sent = handle.block_on(output.send(Message::new(key, m, Ack::none())));
                        sent.is_ok() && !shutdown.is_cancelled()
                    }
                    Item::Skipped(why) => {
                        *lock(&tally).skipped.entry(why).or_default() += 1;
                        true
                    }
                })?;
            }
            Ok(())
        });
        while !reader.is_finished() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            progress.set_position(bytes.load(Ordering::Relaxed));
            progress.set_message(format!("{} points", points.load(Ordering::Relaxed)));
        }
        reader
            .join()
            .map_err(|_| anyhow::anyhow!("the file reader panicked"))??;
        Ok(())
    }
}

fn lock(t: &std::sync::Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    t.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The bus key of a message: its device, resolved from the hints as the
/// MQTT ingress resolves them (the decoder decides the identity itself;
/// the key only groups a device's messages).
fn identity_key(m: &RawMessage, prefix: &str) -> String {
    otstream_model::identity::resolve(&m.hints, prefix, None, None)
        .map(|i| i.key())
        .unwrap_or_default()
}

/// Counts what the pipeline made of the points as the sink takes them.
fn count(tally: &std::sync::Mutex<Tally>, batch: &[Message<Record>]) {
    let mut t = lock(tally);
    for m in batch {
        match &m.value {
            Record::Position(p) => {
                t.positions += 1;
                if let Some(why) = &p.filtered {
                    *t.filtered.entry(why.to_string()).or_default() += 1;
                }
            }
            Record::DeadLetter(d) => *t.dead.entry(d.kind.to_string()).or_default() += 1,
            Record::State(_) => {}
            r => *t.derived.entry(r.type_name()).or_default() += 1,
        }
    }
}
