//! `otstream token` and `otstream share`: signed tokens for scripts and
//! integrations, and share links for a customer, made offline from the
//! configuration's key (`access.token_secret_file`). Every process with
//! the same key accepts them; revoke one by adding its id to
//! `access.revoked_file`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use otstream_auth::{Claims, Pattern, Secret};

use crate::config::ServeConfig;

/// `otstream token`.
#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(clap::Subcommand, Debug)]
enum TokenCommand {
    /// Print a new random key for access.token_secret_file.
    Secret,
    /// Print a token: bearer credentials for scripts, Home Assistant, the apps.
    Create(CreateArgs),
}

/// What a token is for.
#[derive(clap::Args, Debug)]
struct CreateArgs {
    /// Its name, for logs and for the revocation list.
    #[arg(long)]
    id: String,
    /// Devices it reads: user/device, user/* or * (comma-separated).
    #[arg(long, value_delimiter = ',')]
    devices: Vec<String>,
    /// Groups (of access.groups) whose devices it reads.
    #[arg(long, value_delimiter = ',')]
    groups: Vec<String>,
    /// Publish as this user (as that user's password would).
    #[arg(long, value_name = "USER")]
    publish: Option<String>,
    /// Read only the last position of each device, no history.
    #[arg(long)]
    last_only: bool,
    /// How long it is valid, e.g. 30d, 12h.
    #[arg(long, value_parser = humantime::parse_duration)]
    expires: Duration,
    #[command(flatten)]
    config: ConfigArgs,
}

/// `otstream share`.
#[derive(clap::Args, Debug)]
pub struct ShareArgs {
    /// The device shared, user/device.
    #[arg(long, conflicts_with = "group", required_unless_present = "group")]
    device: Option<String>,
    /// Or a group of access.groups.
    #[arg(long)]
    group: Option<String>,
    /// Share the track from now on (positions, trips, stops), not only
    /// the last position.
    #[arg(long)]
    track: bool,
    /// How long the link works, e.g. 4h.
    #[arg(long, value_parser = humantime::parse_duration)]
    expires: Duration,
    /// The link's name, for the revocation list [default: share-<random>].
    #[arg(long)]
    id: Option<String>,
    /// Where the server is reached, e.g. https://fleet.example.com.
    #[arg(long, default_value = "http://127.0.0.1:5144")]
    url: String,
    #[command(flatten)]
    config: ConfigArgs,
}

/// Where the key comes from: the configuration `serve` reads.
#[derive(clap::Args, Debug)]
struct ConfigArgs {
    /// TOML config file (its access.token_secret_file is the key).
    #[arg(long, env = "OTSTREAM_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

impl ConfigArgs {
    fn key(&self) -> Result<(Secret, ServeConfig)> {
        let config = ServeConfig::load(self.config.as_deref())?;
        let path = config.access.token_secret_file.clone().context(
            "no access.token_secret_file in the configuration: `otstream token secret > FILE` makes a key",
        )?;
        let bytes = std::fs::read(&path)
            .with_context(|| format!("cannot read access.token_secret_file {}", path.display()))?;
        let secret = Secret::new(&bytes).with_context(|| {
            format!(
                "access.token_secret_file {} holds fewer than {} bytes",
                path.display(),
                otstream_auth::token::MIN_SECRET_BYTES
            )
        })?;
        Ok((secret, config))
    }
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn expiry(d: Duration) -> Result<i64> {
    let s = i64::try_from(d.as_secs()).context("--expires is too long")?;
    if s == 0 {
        bail!("--expires must be at least a second");
    }
    Ok(now_s().saturating_add(s))
}

fn check_groups(config: &ServeConfig, groups: &[String]) -> Result<()> {
    let access = config.access();
    for g in groups {
        if !access.groups.contains_key(g) {
            bail!("the group {g:?} is not in access.groups");
        }
    }
    Ok(())
}

/// Runs `otstream token`.
pub fn token(args: TokenArgs) -> Result<()> {
    match args.command {
        TokenCommand::Secret => {
            println!(
                "{}",
                Secret::generate().map_err(|_| anyhow::anyhow!("no random numbers"))?
            );
        }
        TokenCommand::Create(a) => {
            let (secret, config) = a.config.key()?;
            check_groups(&config, &a.groups)?;
            for d in &a.devices {
                if d != "*" && Pattern::parse(d).is_none() {
                    bail!("--devices {d:?} is not user/device, user/* or *");
                }
            }
            let read = !a.devices.is_empty() || !a.groups.is_empty();
            if !read && a.publish.is_none() {
                bail!("a token must read (--devices, --groups) or publish (--publish USER)");
            }
            let claims = Claims {
                id: a.id,
                devices: a.devices,
                groups: a.groups,
                read,
                publish: a.publish,
                last_only: a.last_only,
                since: None,
                share: false,
                exp: expiry(a.expires)?,
            };
            println!("{}", secret.sign(&claims));
        }
    }
    Ok(())
}

/// Runs `otstream share`: prints the link.
pub fn share(a: ShareArgs) -> Result<()> {
    let (secret, config) = a.config.key()?;
    let (devices, groups) = match (a.device, a.group) {
        (Some(d), None) => {
            if !matches!(Pattern::parse(&d), Some(Pattern::Device(..))) {
                bail!("--device {d:?} is not user/device");
            }
            (vec![d], vec![])
        }
        (None, Some(g)) => {
            check_groups(&config, std::slice::from_ref(&g))?;
            (vec![], vec![g])
        }
        _ => bail!("share one --device or one --group"),
    };
    let id = match a.id {
        Some(id) => id,
        None => {
            let random = Secret::generate().map_err(|_| anyhow::anyhow!("no random numbers"))?;
            format!("share-{}", &random[..8])
        }
    };
    let now = now_s();
    let claims = Claims {
        id,
        devices,
        groups,
        read: true,
        publish: None,
        last_only: !a.track,
        since: a.track.then_some(now),
        share: true,
        exp: expiry(a.expires)?,
    };
    // The token rides in the fragment: browsers never send it to a
    // server, so it stays out of access logs and of any Referer.
    println!(
        "{}/share#{}",
        a.url.trim_end_matches('/'),
        secret.sign(&claims)
    );
    Ok(())
}
