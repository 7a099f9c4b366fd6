//! Test-only fault injection: a way for the end-to-end tests to make one
//! stage of a running process fail, to see the process notice it.
//!
//! Built only with the `fault-injection` feature (the tests build the
//! binary with it); without it [`injected`] never completes and costs
//! nothing. With it, the stage named by `OTSTREAM_FAULT_STAGE` fails
//! with an error once the file named by `OTSTREAM_FAULT_FILE` exists.

/// Completes with an error when a fault is injected into `stage`; never
/// otherwise.
#[cfg(feature = "fault-injection")]
pub(crate) async fn injected(stage: &str) -> anyhow::Error {
    let (Ok(target), Ok(file)) = (
        std::env::var("OTSTREAM_FAULT_STAGE"),
        std::env::var("OTSTREAM_FAULT_FILE"),
    ) else {
        return std::future::pending().await;
    };
    if target != stage {
        return std::future::pending().await;
    }
    while !std::path::Path::new(&file).exists() {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    anyhow::anyhow!("injected fault ({file} exists)")
}

/// Completes with an error when a fault is injected into `stage`; never
/// otherwise.
#[cfg(not(feature = "fault-injection"))]
pub(crate) async fn injected(_stage: &str) -> anyhow::Error {
    std::future::pending().await
}
