//! `otstream topics create`: the Kafka topics the stages use, with the
//! partitions and retention of the `[kafka]` configuration.

use anyhow::{Context, Result};

use crate::serve;

/// Flags of `otstream topics`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Create the topics that do not exist yet (idempotent).
    Create {
        /// Partitions of each topic: the most members of one stage that
        /// can share the work [default: kafka.partitions, 6].
        #[arg(long, value_name = "N")]
        partitions: Option<i32>,
        /// Replication factor [default: kafka.replication, 1].
        #[arg(long, value_name = "N")]
        replication: Option<i32>,
        #[command(flatten)]
        common: serve::Args,
    },
}

/// Runs `otstream topics ...`.
pub fn run(args: Args) -> Result<()> {
    match args.action {
        Action::Create {
            partitions,
            replication,
            common,
        } => {
            let config = common.config()?;
            let mut kafka = config.kafka()?.clone();
            if let Some(p) = partitions {
                kafka.partitions = p;
            }
            if let Some(r) = replication {
                kafka.replication = r;
            }
            kafka.validate()?;
            let created = crate::runtime::block_on(async {
                otstream_bus::kafka::create_topics(&kafka)
                    .await
                    .with_context(|| format!("cannot create topics on {}", kafka.brokers))
            })?;
            for (name, new) in created {
                let what = if new { "created" } else { "exists" };
                println!("{name}\t{what}");
            }
            Ok(())
        }
    }
}
