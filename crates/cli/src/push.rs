//! The fences the HTTP ingress pushes to the phones (`[geofence] push`):
//! the fences file read as the phones' regions (circles: the apps monitor
//! nothing else), reloaded when it changes, handed to the ingress's
//! [`Push`] on a `watch` channel. A file that does not parse keeps the
//! regions in use, as the geofence stage keeps its fences.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use otstream_bus::Stage;
use otstream_geofence::stage::{Watched, load_fences};
use otstream_geofence::{FenceSet, GeofenceConfig, Shape};
use otstream_ingress::push::{Push, Region, Regions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The unit that keeps the pushed regions current.
pub(crate) struct FencePush {
    file: Option<Watched<FenceSet>>,
    every: Duration,
    tx: watch::Sender<Arc<Regions>>,
}

impl FencePush {
    /// The unit and the ingress's end of it, the fences read now.
    pub(crate) fn new(config: &GeofenceConfig) -> Result<(Self, Arc<Push>)> {
        let path = config.fences.clone();
        let set = load_fences(path.as_deref()).context("fences to push")?;
        let (tx, rx) = watch::channel(Arc::new(regions(&set, 1)));
        let file =
            path.map(|p| Watched::new(p, Arc::new(|p: &std::path::Path| load_fences(Some(p)))));
        let every = Duration::from_millis(config.reload_ms.max(100));
        Ok((FencePush { file, every, tx }, Arc::new(Push::new(rx))))
    }
}

/// The circles of `set` as regions, at `version`.
fn regions(set: &FenceSet, version: u64) -> Regions {
    let regions = set
        .fences()
        .iter()
        .filter_map(|f| match f.shape {
            Shape::Circle { lat, lon, radius_m } => Some(Region {
                user: f.user.clone(),
                device: f.device.clone(),
                id: f.id.clone(),
                name: f.name.clone(),
                lat,
                lon,
                radius_m,
            }),
            Shape::Polygon(_) => None,
        })
        .collect();
    Regions { version, regions }
}

impl Stage<(), ()> for FencePush {
    type Error = std::convert::Infallible;

    async fn run(self, _: (), _: (), shutdown: CancellationToken) -> Result<(), Self::Error> {
        let FencePush { file, every, tx } = self;
        let Some(mut file) = file else {
            shutdown.cancelled().await;
            return Ok(());
        };
        let mut tick = tokio::time::interval(every);
        let mut version = 1;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => match file.reload().await {
                    Some(Ok(set)) => {
                        // A file touched or reformatted, its circles the
                        // same: nothing to send again.
                        let next = regions(&set, version + 1);
                        if next.regions != tx.borrow().regions {
                            version += 1;
                            tx.send_replace(Arc::new(next));
                        }
                    }
                    Some(Err(e)) => {
                        tracing::error!(error = %e, "fences file changed but cannot be used; pushing the fences in use");
                    }
                    None => {}
                },
            }
        }
    }
}
