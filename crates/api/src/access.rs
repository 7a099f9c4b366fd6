//! Who reads what, applied to the read API: the facts of a request for
//! [`otstream_auth::Authenticator::reader`], and what its [`Grant`] allows
//! of each endpoint.
//!
//! - A user, token or loopback client with history reads every endpoint,
//!   for the devices its grant names.
//! - A token of last positions only reads `/api/v1/devices`, the live
//!   feed and Recorder's `/api/0/last`.
//! - A share link reads `/api/v1/devices` and the live feed, and, when it
//!   shares a track, `/api/v1/positions`, `/trips` and `/stops` from the
//!   time it was made; nothing else.
//! - The operator's fences are shown only where they apply: a fence
//!   scoped to a user or device (its `user`, `device` properties) to those
//!   who may read that device; a fence for everyone to everyone but share
//!   links.
//! - A stream (the live feed, `/ws/last`) checks its credentials again
//!   every [`RECHECK`] ([`Recheck`]): a revoked or expired token ends it.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::Request;
use hyper::header::{self, HeaderMap};
use otstream_auth::{Authenticator, Facts, Grant, Refusal};
use otstream_model::Visible;
use serde_json::Value;

use crate::Params;
use crate::endpoint::Endpoint;

/// The facts of `req` from `remote`; the token may be the `access_token`
/// parameter (an `EventSource` cannot set a header).
pub fn facts<'a, B>(req: &'a Request<B>, remote: SocketAddr, params: &'a Params) -> Facts<'a> {
    let headers = req.headers();
    Facts {
        remote,
        authorization: text(headers, header::AUTHORIZATION.as_str()),
        query_token: params.get("access_token"),
        host: text(headers, header::HOST.as_str()),
        forwarded: ["forwarded", "x-forwarded-for", "x-real-ip"]
            .iter()
            .any(|h| headers.contains_key(*h)),
    }
}

/// A request's credentials, kept by a stream that outlives the request
/// (a live feed, a socket) to check them again while it lasts: a revoked
/// or expired token, a removed user, ends it.
#[derive(Clone)]
pub struct Recheck {
    auth: Arc<Authenticator>,
    remote: SocketAddr,
    authorization: Option<String>,
    query_token: Option<String>,
    host: Option<String>,
    forwarded: bool,
}

impl Recheck {
    /// The credentials of `facts`, checked by `auth`.
    pub fn new(auth: Arc<Authenticator>, facts: &Facts<'_>) -> Self {
        Recheck {
            auth,
            remote: facts.remote,
            authorization: facts.authorization.map(str::to_owned),
            query_token: facts.query_token.map(str::to_owned),
            host: facts.host.map(str::to_owned),
            forwarded: facts.forwarded,
        }
    }

    /// Whether they still let the stream read. A passing overload (too
    /// many password checks at once) is not an answer: the stream goes on.
    pub async fn holds(&self) -> bool {
        let facts = Facts {
            remote: self.remote,
            authorization: self.authorization.as_deref(),
            query_token: self.query_token.as_deref(),
            host: self.host.as_deref(),
            forwarded: self.forwarded,
        };
        match self.auth.reader(&facts).await {
            Ok(_) | Err(Refusal::Limited | Refusal::Busy) => true,
            Err(Refusal::Unauthorized(_) | Refusal::Forbidden(_)) => false,
        }
    }
}

/// How often a stream checks its credentials again.
pub const RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

fn text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Whether `grant` may call `endpoint` at all.
pub fn admits(grant: &Grant, endpoint: Endpoint) -> Result<(), Refusal> {
    use Endpoint::*;
    let history = grant.history_since.is_some();
    let shared = match endpoint {
        Page | Share | Report | Devices | Live | OpenApi => true,
        Positions | Trips | Stops => history,
        _ => false,
    };
    if grant.share && !shared {
        return Err(Refusal::Forbidden(
            "a share link reads its devices' last positions (and, when it shares a track, their positions, trips and stops) and nothing else",
        ));
    }
    let last_only = matches!(
        endpoint,
        Page | Share | Report | Devices | Live | OpenApi | Fences | RecorderLast | RecorderWs
    );
    if !history && !last_only {
        return Err(Refusal::Forbidden("this token reads last positions only"));
    }
    Ok(())
}

/// The fences of the operator's file that `visible` may see: those for
/// everyone, and those scoped (`user`, `device` properties) to a device it
/// may read. `None` when the file is not a FeatureCollection.
pub fn fences_for(file: &[u8], visible: &Visible) -> Option<Vec<u8>> {
    let mut doc: Value = serde_json::from_slice(file).ok()?;
    let features = doc.get_mut("features")?.as_array_mut()?;
    features.retain(|f| {
        let prop = |k: &str| {
            f.get("properties")
                .and_then(|p| p.get(k))
                .and_then(Value::as_str)
        };
        match (prop("user"), prop("device")) {
            (None, None) => true,
            (Some(u), Some(d)) => visible.allows(u, d),
            (Some(u), None) => visible.allows_user(u),
            // A fence for a device name of any user.
            (None, Some(_)) => *visible == Visible::All,
        }
    });
    serde_json::to_vec(&doc).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_links_and_last_only_tokens_reach_only_their_endpoints() {
        let full = Grant::all("jane");
        let share = Grant {
            share: true,
            history_since: None,
            ..Grant::all("share:k")
        };
        let track = Grant {
            history_since: Some(100),
            ..share.clone()
        };
        let last = Grant {
            history_since: None,
            ..Grant::all("token:ha")
        };
        for p in [
            "/api/v1/positions",
            "/api/0/locations",
            "/api/v1/fences",
            "/api/v1/waypoints",
        ] {
            assert!(admits(&full, Endpoint::of(p).unwrap()).is_ok(), "{p}");
        }
        assert!(
            admits(&share, Endpoint::of("/api/v1/devices").unwrap()).is_ok()
                && admits(&share, Endpoint::of("/api/v1/live").unwrap()).is_ok()
        );
        assert!(admits(&share, Endpoint::of("/api/v1/positions").unwrap()).is_err());
        // The heatmap is history: not for share links, nor last positions.
        assert!(admits(&share, Endpoint::of("/api/v1/heatmap").unwrap()).is_err());
        assert!(admits(&last, Endpoint::of("/api/v1/heatmap").unwrap()).is_err());
        assert!(admits(&full, Endpoint::of("/api/v1/heatmap").unwrap()).is_ok());
        assert!(
            admits(&track, Endpoint::of("/api/v1/positions").unwrap()).is_ok()
                && admits(&track, Endpoint::of("/api/v1/trips").unwrap()).is_ok()
        );
        for p in [
            "/api/v1/fences",
            "/api/0/last",
            "/api/v1/summary",
            "/api/0/list",
        ] {
            assert!(admits(&track, Endpoint::of(p).unwrap()).is_err(), "{p}");
        }
        assert!(
            admits(&last, Endpoint::of("/api/0/last").unwrap()).is_ok()
                && admits(&last, Endpoint::of("/api/v1/fences").unwrap()).is_ok()
        );
        assert_eq!(
            admits(&last, Endpoint::of("/api/v1/positions").unwrap()),
            Err(Refusal::Forbidden("this token reads last positions only"))
        );
    }

    #[test]
    fn fences_are_shown_where_they_apply() {
        let file = br#"{"type":"FeatureCollection","features":[
            {"type":"Feature","properties":{"id":"all"},"geometry":null},
            {"type":"Feature","properties":{"id":"j","user":"jane"},"geometry":null},
            {"type":"Feature","properties":{"id":"jp","user":"jane","device":"phone"},"geometry":null},
            {"type":"Feature","properties":{"id":"b","user":"bob"},"geometry":null},
            {"type":"Feature","properties":{"id":"d","device":"van"},"geometry":null}]}"#;
        let ids = |v: &Visible| -> Vec<String> {
            let out: Value = serde_json::from_slice(&fences_for(file, v).unwrap()).unwrap();
            out["features"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["properties"]["id"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(ids(&Visible::All), ["all", "j", "jp", "b", "d"]);
        let jane_phone = Visible::Some {
            users: vec![],
            devices: vec![("jane".into(), "phone".into())],
        };
        assert_eq!(ids(&jane_phone), ["all", "j", "jp"]);
        let bob = Visible::Some {
            users: vec!["bob".into()],
            devices: vec![],
        };
        assert_eq!(ids(&bob), ["all", "b"]);
        assert_eq!(fences_for(b"[]", &bob), None);
    }
}
