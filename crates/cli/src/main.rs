//! `otstream`: OwnTracks location data into analytics tables.
//!
//! The binary only parses flags and configuration and calls into the stage
//! crates; every behaviour lives in a library where it can be tested.

mod api;
mod config;
mod decode;
mod fault;
mod import;
mod links;
mod load;
mod metrics_server;
mod migrate;
mod push;
mod rules;
mod runtime;
mod serve;
mod stages;
mod supervisor;
mod token;
mod topics;
mod topology;

use clap::{Parser, Subcommand};

/// OwnTracks location data from phones and trackers into analytics tables.
#[derive(Parser)]
#[command(name = "otstream", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole pipeline in one process: OwnTracks HTTP in, embedded store out.
    Serve(serve::Args),
    /// Run one stage over Kafka (ingress, decode, geofence or sink), or the read API alone (api).
    Run(RunArgs),
    /// Manage the Kafka topics.
    Topics(topics::Args),
    /// Check a configuration (file, environment, flags) without starting anything.
    CheckConfig(serve::Args),
    /// Create or upgrade the ClickHouse schema (idempotent).
    Migrate(migrate::Args),
    /// Decode payloads or a recording and print the normalized records.
    Decode(decode::Args),
    /// Capture traffic into a recording: an HTTP endpoint, an MQTT
    /// subscription, or a time range of the Kafka raw topic.
    Record(load::RecordArgs),
    /// Send a recording over HTTP or MQTT at a target rate, the recorded
    /// pacing, or as fast as possible, and report throughput and latency.
    Replay(load::ReplayArgs),
    /// A synthetic fleet (driving, walking, parked) to a recording, HTTP or MQTT.
    Fleet(load::FleetArgs),
    /// Import location history (Recorder .rec, GPX, GeoJSON, Google
    /// Takeout, recordings) through the whole pipeline into the store.
    Import(import::ImportArgs),
    /// Make signed tokens (bearer credentials scoped to devices or groups,
    /// reading and/or publishing, with an expiry), or a key to sign them.
    Token(token::TokenArgs),
    /// Rules over history: `rules test` runs a rule set over the store, ClickHouse
    /// or a recording and prints what it would have emitted.
    Rules(rules::RulesArgs),
    /// Make a share link: a device or group, its last position or its
    /// track from now on, for a while, opened without a password.
    Share(token::ShareArgs),
}

/// Flags of `otstream run`: the stage, then the flags `serve` takes
/// (each stage uses its own).
#[derive(clap::Args)]
struct RunArgs {
    /// The stage.
    #[arg(value_enum)]
    stage: topology::Part,
    #[command(flatten)]
    common: serve::Args,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Run(args) => args.common.config().and_then(|mut config| {
            if args.stage == topology::Part::Api {
                api::alone(&mut config);
            } else {
                config.bus.kind = config::BusKind::Kafka;
            }
            runtime::block_on(serve::pipeline(config, &[args.stage]))
        }),
        Command::Topics(args) => topics::run(args),
        Command::CheckConfig(args) => serve::check(args),
        Command::Migrate(args) => migrate::run(args),
        Command::Decode(args) => decode::run(args),
        Command::Record(args) => load::record(args),
        Command::Replay(args) => load::replay(args),
        Command::Fleet(args) => load::fleet(args),
        Command::Import(args) => import::run(args),
        Command::Token(args) => token::token(args),
        Command::Share(args) => token::share(args),
        Command::Rules(args) => rules::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("otstream: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
