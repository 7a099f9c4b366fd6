//! Every endpoint of the read API and the map, found by its path through
//! one router (matchit, axum's). Only the API's requests come here: the
//! phones' POSTs are the ingress's before any routing.

use std::sync::LazyLock;

/// An endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// The map page (`/`, `/map`).
    Page,
    /// The page a share link opens (no data in it).
    Share,
    /// The report page of a device's day or week (no data in it).
    Report,
    /// `/api/v1/devices`.
    Devices,
    /// `/api/v1/positions`.
    Positions,
    /// `/api/v1/trips`.
    Trips,
    /// `/api/v1/stops`.
    Stops,
    /// `/api/v1/transitions`.
    Transitions,
    /// `/api/v1/summary`.
    Summary,
    /// `/api/v1/heatmap`.
    Heatmap,
    /// `/api/v1/places`.
    Places,
    /// `/api/v1/visits`.
    Visits,
    /// `/api/v1/stats`.
    Stats,
    /// `/api/v1/openapi.json`.
    OpenApi,
    /// `/api/v1/live`, a stream.
    Live,
    /// `/api/v1/fences`.
    Fences,
    /// `/api/v1/waypoints`.
    Waypoints,
    /// Recorder's `/api/0/last`.
    RecorderLast,
    /// Recorder's `/api/0/locations`.
    RecorderLocations,
    /// Recorder's `/api/0/list`.
    RecorderList,
    /// Recorder's `/api/0/version`.
    RecorderVersion,
    /// Recorder's `/ws/last`, a WebSocket.
    RecorderWs,
}

use Endpoint::*;

/// The routes: every path and its endpoint.
const ROUTES: [(&str, Endpoint); 23] = [
    ("/", Page),
    ("/map", Page),
    ("/share", Share),
    ("/report", Report),
    ("/api/v1/devices", Devices),
    ("/api/v1/positions", Positions),
    ("/api/v1/trips", Trips),
    ("/api/v1/stops", Stops),
    ("/api/v1/transitions", Transitions),
    ("/api/v1/summary", Summary),
    ("/api/v1/heatmap", Heatmap),
    ("/api/v1/places", Places),
    ("/api/v1/visits", Visits),
    ("/api/v1/stats", Stats),
    ("/api/v1/openapi.json", OpenApi),
    ("/api/v1/live", Live),
    ("/api/v1/fences", Fences),
    ("/api/v1/waypoints", Waypoints),
    ("/api/0/last", RecorderLast),
    ("/api/0/locations", RecorderLocations),
    ("/api/0/list", RecorderList),
    ("/api/0/version", RecorderVersion),
    ("/ws/last", RecorderWs),
];

static ROUTER: LazyLock<matchit::Router<Endpoint>> = LazyLock::new(|| {
    let mut router = matchit::Router::new();
    for (path, endpoint) in ROUTES {
        // Static, distinct paths: a conflict is a bug the tests catch.
        let _ = router.insert(path, endpoint);
    }
    router
});

/// Every routed path.
pub fn paths() -> impl Iterator<Item = &'static str> {
    ROUTES.iter().map(|(p, _)| *p)
}

impl Endpoint {
    /// The endpoint at `path`, if any.
    pub fn of(path: &str) -> Option<Endpoint> {
        ROUTER.at(path).ok().map(|m| *m.value)
    }

    /// Its name in metric labels.
    pub fn label(self) -> &'static str {
        match self {
            Page | Share | Report => "page",
            Devices => "devices",
            Positions => "positions",
            Trips => "trips",
            Stops => "stops",
            Transitions => "transitions",
            Summary => "summary",
            Heatmap => "heatmap",
            Places => "places",
            Visits => "visits",
            Stats => "stats",
            OpenApi => "openapi",
            Live => "live",
            Fences => "fences",
            Waypoints => "waypoints",
            RecorderLast => "recorder_last",
            RecorderLocations => "recorder_locations",
            RecorderList => "recorder_list",
            RecorderVersion => "recorder_version",
            RecorderWs => "recorder_ws",
        }
    }

    /// Recorder's `/api/0`: POST (a form) as well as GET, and its
    /// `X-Limit-*` headers.
    pub fn recorder(self) -> bool {
        matches!(
            self,
            RecorderLast | RecorderLocations | RecorderList | RecorderVersion
        )
    }

    /// A stream that outlives its request (and so checks its credentials
    /// again while it runs).
    pub fn streams(self) -> bool {
        matches!(self, Live | RecorderWs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_finds_its_endpoint_and_nothing_else_matches() {
        for (path, endpoint) in ROUTES {
            assert_eq!(Endpoint::of(path), Some(endpoint), "{path}");
        }
        for path in [
            "/api/v1",
            "/api/v1/devices/",
            "/api/0/lastx",
            "/assets/map.js",
            "",
        ] {
            assert_eq!(Endpoint::of(path), None, "{path}");
        }
    }
}
