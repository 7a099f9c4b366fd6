//! `otstream`: OwnTracks location data into analytics tables.
//!
//! The binary only parses flags and configuration and calls into the stage
//! crates; every behaviour lives in a library where it can be tested.

mod config;
mod decode;
mod metrics_server;
mod migrate;
mod serve;

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
    /// Create or upgrade the ClickHouse schema (idempotent).
    Migrate(migrate::Args),
    /// Decode payloads or a recording and print the normalized records.
    Decode(decode::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Migrate(args) => migrate::run(args),
        Command::Decode(args) => decode::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("otstream: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
