//! The analyst's endpoints: the heatmap (`/api/v1/heatmap`), places
//! (`/api/v1/places`), their visits (`/api/v1/visits`) and statistics
//! (`/api/v1/stats`).

use hyper::Response;
use otstream_auth::{Grant, Refusal};
use otstream_http::FallbackBody;

use crate::read::format::parquet::ParquetEncoder;
use crate::read::format::{EventFormat, FeatureEncoder, encode_all, heatmap_json, stats_json};
use crate::read::places::{MAX_PLACES_ANSWER, by_user};
use crate::read::rows::Stop;
use crate::read::stats::Period;
use crate::read::{Query, QueryError, RowStream, Visits};
use crate::reply::{ApiError, event_format, ok_json, query, streamed};
use crate::{Api, BadParam, Params};

/// Default window of statistics: thirty days.
const STATS_SPAN_S: i64 = 30 * 86_400;

/// Default window of the heatmap: a week, as the map shows it.
const HEATMAP_SPAN_S: i64 = 7 * 86_400;
/// Longest window of a heatmap: a quarter.
const MAX_HEATMAP_SPAN_S: i64 = 92 * 86_400;
/// Most cells a heatmap answers with (about 20 MB of GeoJSON): past it
/// the client is told to ask for a coarser resolution.
const MAX_HEAT_CELLS: usize = 50_000;

impl Api {
    /// `/api/v1/heatmap?res=5|7|9`: positions counted per H3 cell.
    pub(crate) async fn heatmap(
        &self,
        params: &Params,
        grant: &Grant,
        now: i64,
    ) -> Result<Response<FallbackBody>, ApiError> {
        let q = query(params, grant, now, HEATMAP_SPAN_S)?;
        // A window bounds the scan: ten million positions take a second of
        // either store.
        if q.to.saturating_sub(q.from) > MAX_HEATMAP_SPAN_S {
            return Err(BadParam::new(
                "from",
                format!(
                    "a heatmap covers at most {} days",
                    MAX_HEATMAP_SPAN_S / 86_400
                ),
            )
            .into());
        }
        let res = match params.get("res") {
            None => 7,
            Some(r) => r
                .parse::<u8>()
                .ok()
                .filter(|r| otstream_schema::h3::column(*r).is_some())
                .ok_or_else(|| BadParam::new("res", format!("{r:?} is not one of 5, 7, 9")))?,
        };
        let geojson = event_format(params)? == EventFormat::GeoJson;
        let cells = self
            .0
            .reader
            .heatmap(&q, res, MAX_HEAT_CELLS + 1)
            .await?
            .unwrap_or_default();
        if cells.len() > MAX_HEAT_CELLS {
            return Err(BadParam::new(
                "res",
                format!(
                    "more than {MAX_HEAT_CELLS} cells: ask for a coarser res or a narrower window"
                ),
            )
            .into());
        }
        Ok(ok_json(heatmap_json(&cells, res, geojson)))
    }

    /// `/api/v1/stats?per=day|week|month|all&by=device|user`: distance,
    /// moving time, trips, stops, countries and cities with days present,
    /// the places most dwelt at; from the rollups, never the positions.
    pub(crate) async fn stats(
        &self,
        params: &Params,
        grant: &Grant,
        now: i64,
    ) -> Result<Response<FallbackBody>, ApiError> {
        whole_history(grant)?;
        let q = query(params, grant, now, STATS_SPAN_S)?;
        let period = match params.get("per") {
            None => Period::Day,
            Some(p) => Period::parse(p).ok_or_else(|| {
                BadParam::new("per", format!("{p:?} is not one of day, week, month, all"))
            })?,
        };
        let by_user = per_user(params)?;
        let stats = self.0.reader.stats(&q, period, by_user, true).await?;
        Ok(ok_json(stats_json(&stats)))
    }

    /// `/api/v1/places[?by=user]`: each device's places with the figures
    /// of their stops in the window (all stored time by default), or a
    /// user's merged across devices.
    pub(crate) async fn places(
        &self,
        params: &Params,
        grant: &Grant,
        now: i64,
    ) -> Result<Response<FallbackBody>, ApiError> {
        whole_history(grant)?;
        let q = query(params, grant, now, now)?;
        let merge = per_user(params)?;
        let format = event_format(params)?;
        let mut places = self.0.reader.places(&q, MAX_PLACES_ANSWER + 1).await?;
        if places.len() > MAX_PLACES_ANSWER {
            return Err(BadParam::new(
                "user",
                format!("more than {MAX_PLACES_ANSWER} places: ask for a user or a device"),
            )
            .into());
        }
        if merge {
            // Pairwise within each user: off the async workers.
            let radius = self.0.place_radius_m;
            places = tokio::task::spawn_blocking(move || by_user(places, radius))
                .await
                .map_err(|e| QueryError::Thread(e.to_string()))?;
        }
        Ok(ok_json(encode_all(&places, FeatureEncoder::new(format))))
    }

    /// `/api/v1/visits[?place=ID]`: the stops that are visits of a place
    /// (of one, with its device), in the window (all stored time by
    /// default), in the stops' shape with their `place_id`.
    pub(crate) async fn visits(
        &self,
        params: &Params,
        grant: &Grant,
        now: i64,
    ) -> Result<Response<FallbackBody>, ApiError> {
        whole_history(grant)?;
        let place = match params.get("place") {
            None => Visits::Any,
            Some(p) => {
                if params.get("device").is_none() {
                    return Err(
                        BadParam::new("place", "a place is given without its device").into(),
                    );
                }
                Visits::Of(p.parse::<i64>().ok().filter(|p| *p > 0).ok_or_else(|| {
                    BadParam::new("place", format!("{p:?} is not a place id (UNIX seconds)"))
                })?)
            }
        };
        let q = Query {
            place: Some(place),
            ..query(params, grant, now, now)?
        };
        if params.get("format") == Some("parquet") {
            return streamed(self.0.reader.stops(&q).await?, ParquetEncoder::new()).await;
        }
        let encoder = FeatureEncoder::new(event_format(params)?);
        streamed(self.0.reader.stops(&q).await?, encoder).await
    }
}

/// `by=device` (the default) or `by=user`: whether a user's devices are
/// taken together.
fn per_user(params: &Params) -> Result<bool, BadParam> {
    match params.get("by") {
        None | Some("device") => Ok(false),
        Some("user") => Ok(true),
        Some(b) => Err(BadParam::new(
            "by",
            format!("{b:?} is not one of device, user"),
        )),
    }
}

/// Whether `grant` reads a device's whole history: places, visits and
/// statistics sum it up (a place's id is when it was first stopped at),
/// so a token that reads only since a time (a shared track, `since`) does
/// not read them.
fn whole_history(grant: &Grant) -> Result<(), ApiError> {
    if grant.history_since.is_some_and(|s| s > i64::MIN) {
        return Err(ApiError::Refused(Refusal::Forbidden(
            "places, visits and statistics sum up a device's whole history; this token reads only part of it",
        )));
    }
    Ok(())
}

/// The stops `grant` reads: without their place for a token that reads
/// only part of the history (a place's id is when it was first stopped
/// at, maybe before).
pub(crate) fn stops_for(grant: &Grant, rows: RowStream<Stop>) -> RowStream<Stop> {
    if whole_history(grant).is_ok() {
        return rows;
    }
    let (tx, out) = tokio::sync::mpsc::channel(crate::read::CHUNKS_IN_FLIGHT);
    let mut rows = rows;
    tokio::spawn(async move {
        while let Some(chunk) = rows.recv().await {
            let chunk = chunk.map(|mut c| {
                for s in &mut c {
                    s.place_id = None;
                }
                c
            });
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
    });
    out
}
