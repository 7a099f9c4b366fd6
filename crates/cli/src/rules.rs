//! `otstream rules test`: a rule set run over history, through the same
//! evaluation as the geofence stage (`otstream_geofence::stage::Tracker`,
//! with its filters, fences, trips and stops), and what it would have
//! emitted: each rule's count, then per device and per day, the first
//! examples, and with `--against` the difference from the rules in use.
//!
//! History is the embedded store (`--data-dir`), ClickHouse
//! (`--clickhouse-url`), or a file `otstream import` reads (a recording,
//! Recorder `.rec`, GPX, ...). Positions are read by device and time,
//! streamed: memory holds the devices' states and what fired (an id per
//! event), not the history. Devices are split between worker threads
//! (one less than the cores), each with its own trackers, beside the
//! thread that reads and decodes.
//!
//! Where it may differ from what ran live, by design:
//! - the time is each fix's `received_at`, as the stage's clock read it
//!   live (the filters' `future`/`past` judge history as they judged it);
//! - a window (`--from`) starts `--warm-up-s` earlier, so that a device
//!   inside a fence or a stop at its start is not counted as entering it;
//!   only what fires inside the window is counted;
//! - from a store, fixes come in time order and the devices' own regions
//!   (their current versions) are known from the start; live, a late fix
//!   no newer than its device's last was ignored, and a region counted
//!   from when it arrived. A recording replays arrival order exactly;
//! - time-driven events (`silent`, and so `back`) are not evaluated:
//!   nothing passes in a back-test but the fixes;
//! - proximity compares devices: the fixes the shards send on to
//!   proximity rules are gathered, put in the order they were received
//!   (`received_at`, as the live `near` link had them) and evaluated once
//!   the shards are done.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use otstream_api::read::{Query, Reader};
use otstream_bus::{Ack, Message};
use otstream_decode::{Decoder, KeyRing};
use otstream_geofence::rules::{NearState, Rules};
use otstream_geofence::stage::{Clock, Tracker, load_fences, load_rules};
use otstream_model::{Event, Meta, Position, Record, Transport, Waypoint};
use otstream_schema::clickhouse::ClickHouseConfig;

use crate::config::ServeConfig;
use crate::runtime::block_on;

/// Flags of `otstream rules`.
#[derive(clap::Args)]
pub struct RulesArgs {
    #[command(subcommand)]
    command: RulesCommand,
}

#[derive(clap::Subcommand)]
enum RulesCommand {
    /// Run a rule set over stored history or a recording and print what it
    /// would have emitted.
    Test(TestArgs),
}

#[derive(clap::Args)]
struct TestArgs {
    /// The rules to test (a TOML file of [[rules]]).
    #[arg(long, value_name = "FILE")]
    rules: PathBuf,
    /// Operator fences [default: the configuration's].
    #[arg(long, value_name = "FILE")]
    fences: Option<PathBuf>,
    /// Configuration file: trip rules, filters, [access] groups, [clickhouse].
    #[arg(long, env = "OTSTREAM_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Read the embedded store in this data directory.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["clickhouse_url", "recording"])]
    data_dir: Option<PathBuf>,
    /// Read this ClickHouse (the database of [clickhouse], default otstream).
    #[arg(long, value_name = "URL", conflicts_with = "recording")]
    clickhouse_url: Option<String>,
    /// A recording, or any file `otstream import` reads.
    #[arg(value_name = "RECORDING")]
    recording: Option<PathBuf>,
    /// Fixes from this time (UNIX s or ISO 8601).
    #[arg(long)]
    from: Option<String>,
    /// Fixes up to this time (UNIX s or ISO 8601).
    #[arg(long)]
    to: Option<String>,
    /// With --from: fixes this long before it are evaluated but what they
    /// fire is not counted (devices start where they were).
    #[arg(long, default_value_t = 86_400, value_name = "SECONDS")]
    warm_up_s: i64,
    /// Compare with these rules (the ones in use).
    #[arg(long, value_name = "CURRENT")]
    against: Option<PathBuf>,
    /// Examples to print.
    #[arg(long, default_value_t = 10)]
    examples: usize,
    /// Print every event the rules fire, one JSON object a line, instead of
    /// the report.
    #[arg(long)]
    ndjson: bool,
}

/// Runs `otstream rules`.
pub fn run(args: RulesArgs) -> Result<()> {
    let RulesCommand::Test(args) = args.command;
    crate::runtime::init_logging("warn", crate::runtime::LogFormat::Text)?;
    let mut config = ServeConfig::load(args.config.as_deref())?;
    if let Some(f) = &args.fences {
        config.geofence.fences = Some(f.clone());
    }
    config.events.enabled = true;
    let stage = config.geo_stage();
    let fences =
        Arc::new(load_fences(stage.geofence.fences.as_deref()).context("cannot use the fences")?);
    let load = |path: &PathBuf| {
        load_rules(Some(path), &stage.groups)
            .with_context(|| format!("cannot use the rules in {}", path.display()))
    };
    let mut runs = vec![Run::new(&args.rules, load(&args.rules)?)];
    if let Some(current) = &args.against {
        runs.push(Run::new(current, load(current)?));
    }
    let window = (
        time(args.from.as_deref(), i64::MIN / 2)?,
        time(args.to.as_deref(), i64::MAX / 2)?,
    );
    let read_from = window.0.saturating_sub(args.warm_up_s.max(0));
    let started = Instant::now();
    // Devices are split between workers, each with its own trackers; the
    // reading and decoding go on beside them.
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get().saturating_sub(1))
        .clamp(1, 8);
    let rule_sets: Vec<Rules> = runs.iter().map(|r| r.rules.clone()).collect();
    let shards = (0..workers)
        .map(|_| {
            let clock = Arc::new(Replayed::default());
            let trackers = rule_sets
                .iter()
                .map(|rules| {
                    let mut t = Tracker::with_clock(&stage, Arc::clone(&fences), clock.clone())
                        .without_snapshots();
                    t.set_rules(rules.clone());
                    t
                })
                .collect();
            Shard {
                trackers,
                fired: rule_sets.iter().map(|_| BTreeMap::new()).collect(),
                near: rule_sets.iter().map(|_| Vec::new()).collect(),
                near_overflow: false,
                window,
                clock,
                ndjson: args.ndjson,
                out: Vec::new(),
            }
            .spawn()
        })
        .collect::<Result<Vec<_>>>()?;
    let mut eval = Evaluation {
        shards,
        runs,
        window,
        read_from,
        fixes: 0,
        devices: 0,
        ndjson: args.ndjson,
    };
    match (&args.data_dir, &args.clickhouse_url, &args.recording) {
        (Some(dir), None, None) => {
            let reader = Reader::Sqlite(otstream_api::read::sqlite::SqliteReader::in_data_dir(dir));
            block_on(eval.stored(&reader))?;
        }
        (None, Some(url), None) => {
            let mut ch = config
                .clickhouse
                .clone()
                .unwrap_or_else(|| ClickHouseConfig::new(url.clone()));
            ch.url.clone_from(url);
            let reader =
                Reader::ClickHouse(otstream_api::read::clickhouse::ClickHouseReader::new(&ch));
            block_on(eval.stored(&reader))?;
        }
        (None, None, Some(file)) => eval.recording(file, &config)?,
        _ => bail!("say where the history is: --data-dir DIR, --clickhouse-url URL or a RECORDING"),
    }
    eval.finish()?;
    if !args.ndjson {
        eval.report(args.examples, started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// A time flag as UNIX seconds.
fn time(s: Option<&str>, default: i64) -> Result<i64> {
    match s {
        None => Ok(default),
        Some(s) => otstream_api::params::parse_time(s)
            .with_context(|| format!("{s:?} is not a time (UNIX seconds or ISO 8601)")),
    }
}

/// One rule set's run and what it fired.
struct Run {
    file: PathBuf,
    rules: Rules,
    /// Fired events by id: what a replay, or a live run, would have stored.
    fired: BTreeMap<String, Fired>,
    /// The fixes its proximity rules compare, gathered from the shards.
    near: Vec<otstream_model::Near>,
}

/// What the report keeps of a fired event.
struct Fired {
    rule: String,
    device: String,
    tst: i64,
}

impl Run {
    fn new(file: &std::path::Path, rules: Rules) -> Self {
        Run {
            file: file.to_owned(),
            rules,
            fired: BTreeMap::new(),
            near: Vec::new(),
        }
    }
}

/// Reads the history and hands each device's records to its shard.
struct Evaluation {
    shards: Vec<Worker>,
    runs: Vec<Run>,
    /// What is counted.
    window: (i64, i64),
    /// Where reading starts: the window less the warm-up.
    read_from: i64,
    fixes: u64,
    devices: usize,
    ndjson: bool,
}

/// A shard's thread, and the batch being filled for it.
struct Worker {
    tx: std::sync::mpsc::SyncSender<Vec<Record>>,
    batch: Vec<Record>,
    done: std::thread::JoinHandle<Shard>,
}

/// Most fixes a worker gathers for proximity rules, which are evaluated
/// in arrival order once the history is read (about 300 bytes each).
const MAX_NEAR_A_SHARD: usize = 4_000_000;

/// Records handed to a shard at once: a channel hand-over per record
/// would cost more than the record.
const BATCH: usize = 512;

impl Evaluation {
    /// Hands one record to its device's shard.
    fn record(&mut self, r: Record) {
        let key = match &r {
            Record::Position(p) => {
                if p.tst < self.read_from || p.tst > self.window.1 {
                    return;
                }
                self.fixes += 1;
                p.meta.key()
            }
            other => other.key(),
        };
        let n = self.shards.len() as u64;
        let i = usize::try_from(otstream_model::identity::stable_hash(&key) % n).unwrap_or(0);
        let Some(w) = self.shards.get_mut(i) else {
            return;
        };
        w.batch.push(r);
        if w.batch.len() >= BATCH {
            let batch = std::mem::replace(&mut w.batch, Vec::with_capacity(BATCH));
            // A shard that is gone failed: finish() says so.
            let _ = w.tx.send(batch);
        }
    }

    /// Hands over what is left, waits for the shards and gathers what
    /// fired.
    fn finish(&mut self) -> Result<()> {
        for w in std::mem::take(&mut self.shards) {
            let Worker { tx, batch, done } = w;
            if !batch.is_empty() {
                let _ = tx.send(batch);
            }
            drop(tx);
            let shard = done
                .join()
                .map_err(|_| anyhow::anyhow!("a rules test worker failed"))?;
            if shard.near_overflow {
                bail!(
                    "proximity rules compare more fixes than a back-test holds ({MAX_NEAR_A_SHARD} a worker): narrow --from/--to"
                );
            }
            self.devices += shard.trackers.first().map_or(0, Tracker::devices);
            for ((run, fired), near) in self.runs.iter_mut().zip(shard.fired).zip(shard.near) {
                run.fired.extend(fired);
                run.near.extend(near);
            }
        }
        for (i, run) in self.runs.iter_mut().enumerate() {
            let mut near = std::mem::take(&mut run.near);
            near.sort_by_key(|n| (n.fix.meta.received_at, n.fix.tst));
            let mut states: BTreeMap<otstream_model::Text, NearState> = BTreeMap::new();
            let mut events = Vec::new();
            for n in near {
                let state = states.entry(n.rule.clone()).or_default();
                run.rules.near(&n.rule, state, &n.fix, &mut events);
            }
            for e in events {
                record_fired(&mut run.fired, e, self.window, self.ndjson && i == 0);
            }
        }
        Ok(())
    }

    /// The devices' own regions, then every stored position in the
    /// window, by device and time.
    async fn stored(&mut self, reader: &Reader) -> Result<()> {
        let q = Query::window(self.read_from, self.window.1);
        let mut regions = reader
            .waypoints(&q)
            .await
            .context("cannot read the devices' regions")?;
        regions.sort_by_key(|w| w.received_at);
        for w in regions {
            self.record(Record::Waypoint(waypoint(w)));
        }
        let mut rows = reader
            .positions(&q)
            .await
            .context("cannot read positions")?;
        while let Some(chunk) = rows.recv().await {
            for row in chunk.context("reading positions")? {
                self.record(Record::Position(position(row)));
            }
        }
        Ok(())
    }

    /// Every message of a file, decoded, in file order.
    fn recording(&mut self, file: &std::path::Path, config: &ServeConfig) -> Result<()> {
        let mut head = Vec::with_capacity(4096);
        std::io::Read::read_to_end(
            &mut std::io::Read::take(
                std::fs::File::open(file)
                    .with_context(|| format!("cannot open {}", file.display()))?,
                4096,
            ),
            &mut head,
        )
        .with_context(|| format!("cannot read {}", file.display()))?;
        let format =
            otstream_import::detect(file, &head).unwrap_or(otstream_import::Format::Recording);
        let keys = match &config.keys_file {
            Some(path) => KeyRing::from_file(path)?,
            None => KeyRing::new(),
        };
        let mut decoder = Decoder::new(config.decode.clone(), Arc::new(keys));
        let ctx = otstream_import::Context {
            received_at: otstream_model::raw::now_ms(),
            identity: None,
            topic_prefix: config.decode.topic_prefix.clone(),
            bytes_read: None,
        };
        let mut records = Vec::new();
        otstream_import::read(file, format, &ctx, &mut |item| {
            if let otstream_import::Item::Message(m) = item {
                records.clear();
                // What does not decode is a dead letter live: no rule sees it.
                if decoder.decode(&m, &mut records).is_ok() {
                    for r in records.drain(..) {
                        self.record(r);
                    }
                }
            }
            true
        })
        .with_context(|| format!("cannot read {}", file.display()))
    }

    fn report(&self, examples: usize, secs: f64) {
        let new = &self.runs[0];
        println!(
            "rules test: {} rules of {} over {} fixes of {} devices in {secs:.1} s",
            new.rules.names().count(),
            new.file.display(),
            self.fixes,
            self.devices
        );
        let current = self.runs.get(1);
        let count = |run: &Run, rule: &str| run.fired.values().filter(|f| f.rule == rule).count();
        match current {
            None => println!("\n{:<24} {:<12} {:>8}", "rule", "kind", "events"),
            Some(c) => println!(
                "\n{:<24} {:<12} {:>8} {:>8} {:>8}   (current: {})",
                "rule",
                "kind",
                "events",
                "current",
                "change",
                c.file.display()
            ),
        }
        let mut names: Vec<&str> = new.rules.names().collect();
        if let Some(c) = current {
            names.extend(
                c.rules
                    .names()
                    .filter(|n| !new.rules.names().any(|m| m == *n)),
            );
        }
        for name in names {
            let kind = new
                .rules
                .kind_of(name)
                .or_else(|| current.and_then(|c| c.rules.kind_of(name)))
                .unwrap_or("-");
            // Driven by the clock, not by fixes: never fires here.
            let kind = match kind {
                "silent" | "back" => format!("{kind} (not evaluated)"),
                k => k.to_owned(),
            };
            let n = count(new, name);
            match current {
                None => println!("{name:<24} {kind:<12} {n:>8}"),
                Some(c) => {
                    let was = count(c, name);
                    let change = i64::try_from(n).unwrap_or(i64::MAX)
                        - i64::try_from(was).unwrap_or(i64::MAX);
                    println!("{name:<24} {kind:<12} {n:>8} {was:>8} {change:>+8}");
                }
            }
        }
        let mut by_device: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
        let mut by_day: BTreeMap<String, BTreeMap<&str, usize>> = BTreeMap::new();
        for f in new.fired.values() {
            *by_device
                .entry(&f.device)
                .or_default()
                .entry(&f.rule)
                .or_default() += 1;
            *by_day
                .entry(day(f.tst))
                .or_default()
                .entry(&f.rule)
                .or_default() += 1;
        }
        let line = |m: &BTreeMap<&str, usize>| {
            m.iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!("\nby device");
        for (d, m) in &by_device {
            println!("  {d:<30} {}", line(m));
        }
        println!("\nby day (UTC)");
        for (d, m) in &by_day {
            println!("  {d:<12} {}", line(m));
        }
        let mut first: Vec<(&String, &Fired)> = new.fired.iter().collect();
        first.sort_by_key(|(id, f)| (f.tst, *id));
        println!("\nfirst examples");
        for (id, f) in first.into_iter().take(examples) {
            println!("  {}  {id}", iso(f.tst));
        }
        if let Some(c) = current {
            let only = |a: &Run, b: &Run| -> Vec<String> {
                let mut v: Vec<(i64, &String)> = a
                    .fired
                    .iter()
                    .filter(|(id, _)| !b.fired.contains_key(*id))
                    .map(|(id, f)| (f.tst, id))
                    .collect();
                v.sort();
                v.into_iter()
                    .map(|(t, id)| format!("  {}  {id}", iso(t)))
                    .collect()
            };
            let (added, gone) = (only(new, c), only(c, new));
            println!("\nonly with the new rules: {}", added.len());
            for l in added.iter().take(examples) {
                println!("{l}");
            }
            println!("\nonly with the current rules: {}", gone.len());
            for l in gone.iter().take(examples) {
                println!("{l}");
            }
        }
    }
}

/// Some of the devices, evaluated by every rule set on a thread of its own.
struct Shard {
    /// One per rule set, in the runs' order.
    trackers: Vec<Tracker>,
    /// What each rule set fired, by id.
    fired: Vec<BTreeMap<String, Fired>>,
    /// The fixes each rule set's proximity rules compare.
    near: Vec<Vec<otstream_model::Near>>,
    /// More of them than [`MAX_NEAR_A_SHARD`].
    near_overflow: bool,
    window: (i64, i64),
    clock: Arc<Replayed>,
    ndjson: bool,
    out: Vec<Message<Record>>,
}

impl Shard {
    fn spawn(mut self) -> Result<Worker> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Record>>(4);
        let done = std::thread::Builder::new()
            .name("rules-test".into())
            .spawn(move || {
                for batch in rx {
                    for r in batch {
                        self.evaluate(r);
                    }
                }
                self
            })
            .context("cannot start a rules test worker")?;
        Ok(Worker {
            tx,
            batch: Vec::with_capacity(BATCH),
            done,
        })
    }

    /// Evaluates one record with every rule set.
    fn evaluate(&mut self, r: Record) {
        let key = match &r {
            Record::Position(p) => {
                self.clock.0.store(p.meta.received_at, Ordering::Relaxed);
                p.meta.key()
            }
            other => other.key(),
        };
        let last = self.trackers.len() - 1;
        let mut r = Some(r);
        for (i, tracker) in self.trackers.iter_mut().enumerate() {
            // The last set takes the record, the others a copy.
            let value = match (i == last, &r) {
                (true, _) => r.take(),
                (false, Some(v)) => Some(v.clone()),
                (false, None) => None,
            };
            let Some(value) = value else { break };
            tracker.process(Message::new(key.clone(), value, Ack::none()), &mut self.out);
            for m in self.out.drain(..) {
                let (Some(fired), Some(near)) = (self.fired.get_mut(i), self.near.get_mut(i))
                else {
                    continue;
                };
                match m.value {
                    Record::Event(e) => record_fired(fired, e, self.window, self.ndjson && i == 0),
                    Record::Near(n) if near.len() < MAX_NEAR_A_SHARD => near.push(n),
                    Record::Near(_) => self.near_overflow = true,
                    _ => {}
                }
            }
        }
    }
}

/// Counts a rule's event `e` fired inside `window` (printing it with
/// `print`, the first time).
fn record_fired(fired: &mut BTreeMap<String, Fired>, e: Event, window: (i64, i64), print: bool) {
    let Some(rule) = e.rule.clone() else { return };
    if e.tst < window.0 || e.tst > window.1 {
        return;
    }
    // An event evaluated again (a stop's arrival estimated anew) has the
    // same id: stored once, printed once.
    if print && !fired.contains_key(&e.id) {
        println!("{}", event_json(&e));
    }
    fired.insert(
        e.id.clone(),
        Fired {
            rule: rule.to_string(),
            device: format!("{}/{}", e.meta.user, e.meta.device),
            tst: e.tst,
        },
    );
}

/// The time of the record being evaluated: what the live stage's clock
/// read when it was evaluated (its `received_at`).
#[derive(Debug, Default)]
struct Replayed(AtomicI64);

impl Clock for Replayed {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A stored region as the geofence stage is given it.
fn waypoint(w: otstream_api::read::Waypoint) -> Waypoint {
    let meta = Meta {
        user: w.user.as_str().into(),
        device: w.device.as_str().into(),
        tid: None,
        received_at: w.received_at,
        transport: Transport::Http,
        topic: None,
    };
    Waypoint {
        meta,
        tst: Some(w.tst),
        lat: Some(w.lat),
        lon: Some(w.lon),
        rad: w.rad,
        desc: w.desc.map(Into::into),
        rid: w.rid.map(Into::into),
        uuid: None,
        major: None,
        minor: None,
        extra: None,
    }
}

/// An event as the outboxes deliver it.
fn event_json(e: &Event) -> String {
    serde_json::to_string(e).unwrap_or_default()
}

/// A stored position as the geofence stage is given it.
fn position(r: otstream_api::read::Position) -> Position {
    let meta = Meta {
        user: r.user,
        device: r.device,
        tid: r.tid,
        received_at: r.received_at,
        // Not stored; no rule reads it.
        transport: Transport::Http,
        topic: r.topic,
    };
    Position {
        acc: r.acc,
        alt: r.alt,
        vac: r.vac,
        vel: r.vel,
        cog: r.cog,
        batt: r.batt,
        bs: r.bs,
        t: r.t,
        conn: r.conn,
        p: r.p,
        m: r.m,
        ssid: r.ssid,
        bssid: r.bssid,
        created_at: r.created_at,
        inregions: r.inregions,
        inrids: r.inrids,
        ..Position::at(meta, r.tst, r.lat, r.lon)
    }
}

/// `YYYY-MM-DD` of a UNIX time, UTC.
fn day(tst: i64) -> String {
    otstream_api::read::format::day(tst)
}

/// ISO 8601 of a UNIX time, UTC.
fn iso(tst: i64) -> String {
    otstream_api::read::format::iso8601(tst)
}
