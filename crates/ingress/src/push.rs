//! The operator's fences, pushed to the phones: a device is sent the
//! circular fences that apply to it as an OwnTracks `cmd` `setWaypoints`
//! after its next location once they changed (over HTTP in the answer,
//! over MQTT on its command topic), so that the app's own region
//! monitoring (and what it shows) agrees with the server's.
//!
//! In: the fences as regions ([`Regions`], from a `watch` channel the
//! fences file feeds, each with a version). Out: at most one command per
//! device per version. Each region's `rid` starts with
//! [`PUSHED_RID_PREFIX`]: the server never learns the phone's copy as a
//! region of the device's own, nor raises an event for the phone's
//! transitions of it (the server's own evaluation of the fence does).
//! Bounds: at most [`MAX_PUSHED`] regions a device (the apps monitor 20
//! on iOS), and the memory of who was sent what holds at most
//! [`MAX_DEVICES`] devices (past it, it starts over: a device is sent its
//! fences once more, which changes nothing on the phone).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use otstream_model::{PUSHED_RID_PREFIX, Text};
use serde_json::{Value, json};
use tokio::sync::watch;

/// Regions one device is sent at most: iOS monitors 20 per app.
pub const MAX_PUSHED: usize = 20;

/// Devices remembered as sent the current version.
pub const MAX_DEVICES: usize = 100_000;

/// A device is sent its fences again after this long, even unchanged: an
/// answer can be lost on its way, and a broker may drop what its access
/// rules do not allow without saying so.
pub const RESEND_S: i64 = 86_400;

/// One fence as a phone's region.
#[derive(Debug, Clone, PartialEq)]
pub struct Region {
    /// Only this user's devices, if set.
    pub user: Option<Text>,
    /// Only this device (of any user named), if set.
    pub device: Option<Text>,
    /// The fence's id: the region's `rid` after the prefix.
    pub id: Text,
    /// Its name, the region's `desc`.
    pub name: Text,
    /// Centre, degrees.
    pub lat: f64,
    /// Centre, degrees.
    pub lon: f64,
    /// Radius, m.
    pub radius_m: f64,
}

impl Region {
    /// The region as an OwnTracks `waypoint`. Its `tst` (what names a
    /// region on the phone) comes from the fence's id, so that the same
    /// fence pushed again replaces itself rather than adding a copy.
    fn waypoint(&self) -> Value {
        let tst = otstream_model::pushed_tst(&self.id);
        json!({
            "_type": "waypoint",
            "desc": self.name.as_str(),
            "lat": self.lat,
            "lon": self.lon,
            "rad": self.radius_m.round() as i64,
            "tst": tst,
            "rid": format!("{PUSHED_RID_PREFIX}{}", self.id),
        })
    }

    fn applies(&self, user: &str, device: &str) -> bool {
        self.user.as_deref().is_none_or(|u| u == user)
            && self.device.as_deref().is_none_or(|d| d == device)
    }
}

/// The fences as regions, and which version of the fences file they are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Regions {
    /// Changes whenever the fences do.
    pub version: u64,
    /// Every circular fence.
    pub regions: Vec<Region>,
}

/// Who is sent which regions, and who was sent them already.
pub struct Push {
    regions: watch::Receiver<Arc<Regions>>,
    /// Device → the version it was sent and when (UNIX s).
    sent: Mutex<HashMap<String, (u64, i64)>>,
}

impl Push {
    /// Pushes what `regions` holds, as it changes.
    pub fn new(regions: watch::Receiver<Arc<Regions>>) -> Self {
        Push {
            regions,
            sent: Mutex::new(HashMap::new()),
        }
    }

    /// The `setWaypoints` command for `user/device`, unless it was sent
    /// this version already (within [`RESEND_S`]) or no fence applies to it.
    pub fn command(&self, user: &str, device: &str) -> Option<Value> {
        self.command_of(user, device, false)
    }

    /// [`Push::command`] with the fences for everyone only: for a topic
    /// that others than the device may read.
    pub fn command_for_everyone(&self, user: &str, device: &str) -> Option<Value> {
        self.command_of(user, device, true)
    }

    fn command_of(&self, user: &str, device: &str, everyone: bool) -> Option<Value> {
        let regions = Arc::clone(&self.regions.borrow());
        let key = format!("{user}/{device}");
        let now = otstream_model::raw::now_ms() / 1000;
        {
            let mut sent = self.sent.lock().ok()?;
            if sent
                .get(&key)
                .is_some_and(|(v, at)| *v == regions.version && now - at < RESEND_S)
            {
                return None;
            }
            if sent.len() >= MAX_DEVICES && !sent.contains_key(&key) {
                sent.clear();
            }
            sent.insert(key, (regions.version, now));
        }
        let waypoints: Vec<Value> = regions
            .regions
            .iter()
            .filter(|r| r.applies(user, device))
            .filter(|r| !everyone || (r.user.is_none() && r.device.is_none()))
            .take(MAX_PUSHED)
            .map(Region::waypoint)
            .collect();
        if waypoints.is_empty() {
            return None;
        }
        metrics::counter!("otstream_fences_pushed_total").increment(1);
        Some(json!({
            "_type": "cmd",
            "action": "setWaypoints",
            "waypoints": {"_type": "waypoints", "waypoints": waypoints},
        }))
    }

    /// Forgets that `user/device` was sent its fences: the command could
    /// not be sent, the next location tries again.
    pub fn unsent(&self, user: &str, device: &str) {
        if let Ok(mut sent) = self.sent.lock() {
            sent.remove(&format!("{user}/{device}"));
        }
    }

    /// Devices remembered as sent their fences.
    pub fn remembered(&self) -> usize {
        self.sent.lock().map_or(0, |s| s.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(id: &str, user: Option<&str>) -> Region {
        Region {
            user: user.map(Text::from),
            device: None,
            id: id.into(),
            name: format!("{id} name").into(),
            lat: 52.5,
            lon: 13.4,
            radius_m: 150.4,
        }
    }

    #[test]
    fn a_device_is_sent_its_fences_once_a_version_and_memory_is_bounded() {
        let (tx, rx) = watch::channel(Arc::new(Regions {
            version: 1,
            regions: vec![region("depot", None), region("yard", Some("acme"))],
        }));
        let push = Push::new(rx);
        let cmd = push.command("jane", "phone").expect("a command");
        assert_eq!(cmd["action"], "setWaypoints");
        let list = cmd["waypoints"]["waypoints"].as_array().expect("list");
        assert_eq!(list.len(), 1);
        assert_eq!(
            (&list[0]["rid"], &list[0]["desc"], &list[0]["rad"]),
            (&json!("otstream:depot"), &json!("depot name"), &json!(150))
        );
        assert_eq!(push.command("jane", "phone"), None);
        let acme = push.command("acme", "van").expect("a command");
        assert_eq!(
            acme["waypoints"]["waypoints"].as_array().map(Vec::len),
            Some(2)
        );
        // The same fence, the same tst: pushed again, it replaces itself.
        assert_eq!(acme["waypoints"]["waypoints"][0]["tst"], list[0]["tst"]);

        tx.send_replace(Arc::new(Regions {
            version: 2,
            regions: vec![region("depot", None)],
        }));
        assert!(push.command("jane", "phone").is_some());

        for i in 0..MAX_DEVICES + 5 {
            push.command("fleet", &format!("d{i}"));
        }
        assert!(push.remembered() <= MAX_DEVICES);
    }
}
