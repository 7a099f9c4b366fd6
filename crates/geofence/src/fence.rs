//! Fences and their shapes.

use geo::orient::{Direction, Orient};
use geo::{
    BoundingRect, CoordinatePosition, Distance, Geodesic, GeodesicArea, Haversine,
    HaversineClosestPoint, MultiPolygon, Point, Polygon,
};
use geojson::GeometryValue;
use otstream_model::Text;
use rstar::{AABB, RTree, primitives::GeomWithData, primitives::Rectangle};
use serde_json::Value;

/// Metres per degree of latitude (WGS84 mean).
const M_PER_DEG: f64 = 111_320.0;

/// A fence's geometry.
#[derive(Debug, Clone)]
pub enum Shape {
    /// A circle: centre (degrees) and radius (metres).
    Circle {
        /// Centre latitude.
        lat: f64,
        /// Centre longitude.
        lon: f64,
        /// Radius, metres.
        radius_m: f64,
    },
    /// Polygons with holes, coordinates (lon, lat) in degrees. Fences that
    /// cross the antimeridian are given split in two, as RFC 7946 requires.
    Polygon(MultiPolygon<f64>),
}

/// A fence.
#[derive(Debug, Clone)]
pub struct Fence {
    /// Stable identifier (GeoJSON `id`, or `wp:<tst>:<desc>` for a waypoint).
    pub id: Text,
    /// Name, written as the transition's `desc`.
    pub name: Text,
    /// Geometry.
    pub shape: Shape,
    /// Applies only to this user (all users when `None`).
    pub user: Option<Text>,
    /// Applies only to this device (all devices when `None`).
    pub device: Option<Text>,
    /// For a device's own waypoint: its creation time, the transition's `wtst`.
    pub wtst: Option<i64>,
    /// Stable hash of `id`, what device state remembers.
    pub key: u64,
    /// Size used by the accuracy rule: the radius, or for a polygon the
    /// radius of a circle of the same area, metres.
    pub size_m: f64,
}

/// FNV-1a: stable across processes and releases, unlike std's hasher, so
/// persisted device state keeps meaning.
pub fn fence_key(id: &str) -> u64 {
    otstream_model::identity::stable_hash(id)
}

impl Fence {
    /// A fence from its parts.
    pub fn new(id: impl Into<Text>, name: impl Into<Text>, shape: Shape) -> Self {
        let id = id.into();
        // RFC 7946 winds exteriors counterclockwise and holes clockwise, but
        // files in the wild do not always; the area (and so the size the
        // accuracy rule uses) is only right once rings are oriented.
        let shape = match shape {
            Shape::Polygon(p) => Shape::Polygon(p.orient(Direction::Default)),
            circle => circle,
        };
        let size_m = match &shape {
            Shape::Circle { radius_m, .. } => *radius_m,
            Shape::Polygon(p) => (p.geodesic_area_unsigned() / std::f64::consts::PI).sqrt(),
        };
        Self {
            key: fence_key(&id),
            id,
            name: name.into(),
            shape,
            user: None,
            device: None,
            wtst: None,
            size_m,
        }
    }

    /// Whether the fence applies to `user/device`.
    pub fn applies_to(&self, user: &str, device: &str) -> bool {
        self.user.as_deref().is_none_or(|u| u == user)
            && self.device.as_deref().is_none_or(|d| d == device)
    }

    /// Whether the point is inside: the cheap test every candidate gets.
    pub fn contains(&self, lat: f64, lon: f64) -> bool {
        match &self.shape {
            Shape::Circle { .. } => self.outside_m(lat, lon) <= 0.0,
            // A winding test on the rings; geo's generic `Contains` goes
            // through a full topological relate and costs ~40x more.
            Shape::Polygon(mp) => {
                mp.coordinate_position(&geo::coord! { x: lon, y: lat })
                    != geo::coordinate_position::CoordPos::Outside
            }
        }
    }

    /// How far outside the fence the point is, metres; 0 or less inside.
    /// For a polygon this finds the closest point of its outline: only the
    /// leave test of a device already inside needs it.
    pub fn outside_m(&self, lat: f64, lon: f64) -> f64 {
        let p = Point::new(lon, lat);
        match &self.shape {
            Shape::Circle {
                lat: clat,
                lon: clon,
                radius_m,
            } => {
                let c = Point::new(*clon, *clat);
                let mut d = Haversine.distance(c, p);
                // Haversine is within 0.5% of the ellipsoid; decide close
                // calls with the geodesic.
                if (d - radius_m).abs() <= 0.005 * radius_m + 1.0 {
                    d = Geodesic.distance(c, p);
                }
                d - radius_m
            }
            Shape::Polygon(mp) => {
                if mp.coordinate_position(&p.0) != geo::coordinate_position::CoordPos::Outside {
                    return 0.0;
                }
                match mp.haversine_closest_point(&p) {
                    geo::Closest::Intersection(_) => 0.0,
                    geo::Closest::SinglePoint(q) => Haversine.distance(p, q),
                    geo::Closest::Indeterminate => f64::INFINITY,
                }
            }
        }
    }

    /// Bounding boxes `[lon, lat]` covering the fence (two when a circle
    /// wraps the antimeridian).
    pub fn envelopes(&self) -> Vec<AABB<[f64; 2]>> {
        match &self.shape {
            Shape::Circle { lat, lon, radius_m } => {
                let dlat = radius_m / M_PER_DEG;
                let (lo_lat, hi_lat) = ((lat - dlat).max(-90.0), (lat + dlat).min(90.0));
                let cos = lat.to_radians().cos().abs();
                // Near a pole the circle spans every longitude.
                if lat.abs() + dlat >= 90.0 || cos < 1e-6 || radius_m / (M_PER_DEG * cos) >= 180.0 {
                    return vec![AABB::from_corners([-180.0, lo_lat], [180.0, hi_lat])];
                }
                let dlon = radius_m / (M_PER_DEG * cos);
                let (w, e) = (lon - dlon, lon + dlon);
                if w < -180.0 {
                    vec![
                        AABB::from_corners([w + 360.0, lo_lat], [180.0, hi_lat]),
                        AABB::from_corners([-180.0, lo_lat], [e, hi_lat]),
                    ]
                } else if e > 180.0 {
                    vec![
                        AABB::from_corners([w, lo_lat], [180.0, hi_lat]),
                        AABB::from_corners([-180.0, lo_lat], [e - 360.0, hi_lat]),
                    ]
                } else {
                    vec![AABB::from_corners([w, lo_lat], [e, hi_lat])]
                }
            }
            Shape::Polygon(mp) => mp
                .bounding_rect()
                .map(|r| {
                    vec![AABB::from_corners(
                        [r.min().x, r.min().y],
                        [r.max().x, r.max().y],
                    )]
                })
                .unwrap_or_default(),
        }
    }
}

/// A fence file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FenceError {
    /// Not JSON.
    #[error("fences are not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but not a usable FeatureCollection.
    #[error("feature {index}: {message}")]
    Feature {
        /// Position in `features`.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// Not a FeatureCollection at all.
    #[error("fences must be a GeoJSON FeatureCollection")]
    NotACollection,
    /// A FeatureCollection that is not valid GeoJSON.
    #[error("fences are not valid GeoJSON: {0}")]
    GeoJson(String),
}

type Entry = GeomWithData<Rectangle<[f64; 2]>, u32>;

/// A set of fences with their spatial index.
#[derive(Debug)]
pub struct FenceSet {
    fences: Vec<Fence>,
    tree: RTree<Entry>,
    by_key: std::collections::HashMap<u64, u32>,
}

impl FenceSet {
    /// Indexes `fences`.
    pub fn new(fences: Vec<Fence>) -> Self {
        let entries: Vec<Entry> = fences
            .iter()
            .enumerate()
            .flat_map(|(i, f)| {
                f.envelopes().into_iter().map(move |e| {
                    GeomWithData::new(Rectangle::from_corners(e.lower(), e.upper()), i as u32)
                })
            })
            .collect();
        let by_key = fences
            .iter()
            .enumerate()
            .map(|(i, f)| (f.key, i as u32))
            .collect();
        Self {
            fences,
            tree: RTree::bulk_load(entries),
            by_key,
        }
    }

    /// The fence with this key (see [`fence_key`]).
    pub fn by_key(&self, key: u64) -> Option<&Fence> {
        self.by_key
            .get(&key)
            .and_then(|i| self.fences.get(*i as usize))
    }

    /// The fences.
    pub fn fences(&self) -> &[Fence] {
        &self.fences
    }

    /// Fences whose bounding box holds the point (then test exactly).
    pub fn candidates(&self, lat: f64, lon: f64) -> impl Iterator<Item = &Fence> + '_ {
        let here = AABB::from_point([lon, lat]);
        self.tree
            .locate_in_envelope_intersecting(&here)
            .filter_map(move |e| self.fences.get(e.data as usize))
    }

    /// Reads a GeoJSON FeatureCollection: Polygon and MultiPolygon
    /// features, and Point features with a `radius` property (metres) for
    /// circles. Properties: `id` (or the feature's `id`), `name`, and
    /// optionally `user` and `device` to limit a fence to them.
    pub fn from_geojson(text: &str) -> Result<Self, FenceError> {
        let v: Value = serde_json::from_str(text)?;
        if v.get("type").and_then(Value::as_str) != Some("FeatureCollection") {
            return Err(FenceError::NotACollection);
        }
        let collection: geojson::FeatureCollection =
            serde_json::from_value(v).map_err(|e| FenceError::GeoJson(e.to_string()))?;
        let mut fences = Vec::with_capacity(collection.features.len());
        for (index, f) in collection.features.into_iter().enumerate() {
            let bad = |message: &str| FenceError::Feature {
                index,
                message: message.to_owned(),
            };
            let text = |key: &str| f.property(key).and_then(Value::as_str).map(str::to_owned);
            let id = text("id")
                .or_else(|| match &f.id {
                    Some(geojson::feature::Id::String(s)) => Some(s.clone()),
                    Some(geojson::feature::Id::Number(n)) => n.as_i64().map(|i| i.to_string()),
                    None => None,
                })
                .ok_or_else(|| bad("no id (properties.id or the feature's id)"))?;
            let name = text("name").unwrap_or_else(|| id.clone());
            let (user, device) = (text("user"), text("device"));
            let radius = f.property("radius").and_then(Value::as_f64);
            let shape = match f.geometry.map(|g| g.value) {
                Some(GeometryValue::Point { coordinates }) => {
                    let radius = radius.ok_or_else(|| {
                        bad("a Point fence needs a numeric `radius` property (metres)")
                    })?;
                    match coordinates.as_slice() {
                        [lon, lat, ..] if radius > 0.0 => Shape::Circle {
                            lat: *lat,
                            lon: *lon,
                            radius_m: radius,
                        },
                        _ => {
                            return Err(bad(
                                "Point needs [lon, lat] coordinates and a positive radius",
                            ));
                        }
                    }
                }
                Some(GeometryValue::Polygon { coordinates }) => Shape::Polygon(MultiPolygon(vec![
                    polygon(&coordinates).ok_or_else(|| bad("invalid Polygon coordinates"))?,
                ])),
                Some(GeometryValue::MultiPolygon { coordinates }) => {
                    let polys: Option<Vec<Polygon<f64>>> =
                        coordinates.iter().map(|p| polygon(p)).collect();
                    Shape::Polygon(MultiPolygon(
                        polys.ok_or_else(|| bad("invalid MultiPolygon coordinates"))?,
                    ))
                }
                other => {
                    return Err(bad(&format!(
                        "unsupported geometry {:?}: use Polygon, MultiPolygon or Point with a radius",
                        other.as_ref().map(GeometryValue::type_name)
                    )));
                }
            };
            let mut fence = Fence::new(id, name, shape);
            fence.user = user.map(Text::from);
            fence.device = device.map(Text::from);
            fences.push(fence);
        }
        Ok(Self::new(fences))
    }
}

/// A ring of at least four positions, each at least `[lon, lat]` (the
/// `geojson` crate checks a Point's position, not a ring's).
fn ring(positions: &[geojson::Position]) -> Option<geo::LineString<f64>> {
    let pts: Option<Vec<(f64, f64)>> = positions
        .iter()
        .map(|p| match p.as_slice() {
            [lon, lat, ..] => Some((*lon, *lat)),
            _ => None,
        })
        .collect();
    let pts = pts?;
    (pts.len() >= 4).then(|| geo::LineString::from(pts))
}

fn polygon(rings: &[Vec<geojson::Position>]) -> Option<Polygon<f64>> {
    let exterior = ring(rings.first()?)?;
    let holes: Option<Vec<_>> = rings[1..].iter().map(|r| ring(r)).collect();
    Some(Polygon::new(exterior, holes?))
}
