//! The process around every command: logging, the async runtime and the
//! stop signal.

use anyhow::{Context, Result};

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum LogFormat {
    /// Human-readable lines with key=value fields.
    Text,
    /// One JSON object per line.
    Json,
}

pub(crate) fn init_logging(filter: &str, format: LogFormat) -> Result<()> {
    let mut filter =
        tracing_subscriber::EnvFilter::try_new(filter).context("invalid --log filter")?;
    // The ClickHouse client enters its query's info span for every row it
    // reads: 7 % of a large export's CPU (perf). Its spans are off unless
    // the filter names the crate.
    if !filter.to_string().contains("clickhouse") {
        filter = filter.add_directive("clickhouse=warn".parse().context("clickhouse directive")?);
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot start logging: {e}"))
}

/// Starts the async runtime and runs `main` on it.
pub fn block_on<T, F: std::future::Future<Output = Result<T>>>(main: F) -> Result<T> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("otstream")
        .build()
        .context("cannot start the async runtime")?
        .block_on(main)
}

/// Completes on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
