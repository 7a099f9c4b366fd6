//! Parquet (`format=parquet`): the rows as typed columns for notebooks
//! (pandas, polars, DuckDB read it as it is): times as UTC timestamps
//! (milliseconds: Parquet has no seconds, and a second-unit column would
//! reach other readers as a bare integer),
//! numbers as numbers, absent values as nulls, a device's regions as a
//! list. Streamed like the other formats: rows are gathered into row
//! groups of [`ROW_GROUP`] and each is written out (zstd-compressed,
//! names dictionary-encoded) as soon as it is full, so an export of any
//! length holds one row group in memory, not the answer.
//!
//! Each row type says its columns once ([`Columns`]): the schema, and how
//! a row is appended to them.

use std::sync::{Arc, Mutex, PoisonError};

use arrow_array::builder::{
    Float64Builder, Int32Builder, Int64Builder, ListBuilder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use super::Encoder;
use crate::read::rows::{Position, Stop, Trip};

/// Rows a row group holds: big enough for the columns to compress well,
/// small enough that an export holds a few megabytes while it streams.
pub const ROW_GROUP: usize = 65_536;

/// A row type written as Parquet: its columns and how a row fills them.
pub trait Columns {
    /// The column builders of one row group.
    type Builders: Default + Send;
    /// The schema, column for column.
    fn schema() -> SchemaRef;
    /// Appends the row to the builders.
    fn append(&self, b: &mut Self::Builders);
    /// The columns built so far (the builders are left empty).
    fn finish(b: &mut Self::Builders) -> Vec<ArrayRef>;
    /// Columns written in an encoding of their own rather than a
    /// dictionary: times, which grow, as differences; coordinates, whose
    /// bytes compress apart (sign and exponent alike, mantissa not).
    fn encodings() -> &'static [(&'static str, Encoding)] {
        &[]
    }
}

/// Where the writer writes: bytes the encoder hands on as they come.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Shared {
    fn take_into(&self, out: &mut Vec<u8>) {
        let mut buf = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        out.append(&mut buf);
    }
}

impl std::io::Write for Shared {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut buf = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Rows of `T` as one Parquet file.
pub struct ParquetEncoder<T: Columns> {
    schema: SchemaRef,
    writer: Option<ArrowWriter<Shared>>,
    bytes: Shared,
    builders: T::Builders,
    buffered: usize,
    /// A row group could not be written: the file cannot be completed.
    broken: bool,
}

impl<T: Columns> Default for ParquetEncoder<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Columns> ParquetEncoder<T> {
    /// An encoder of `T`'s columns.
    pub fn new() -> Self {
        let schema = T::schema();
        let bytes = Shared::default();
        let mut props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_max_row_group_row_count(Some(ROW_GROUP));
        for (column, encoding) in T::encodings() {
            let path = ColumnPath::from(*column);
            props = props
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_encoding(path, *encoding);
        }
        let props = props.build();
        // Fails only for a schema Parquet cannot hold: ours are flat
        // columns and lists of strings (a unit test writes each).
        let writer = ArrowWriter::try_new(bytes.clone(), Arc::clone(&schema), Some(props))
            .map_err(|e| tracing::error!(error = %e, "parquet writer refused the schema"))
            .ok();
        let broken = writer.is_none();
        Self {
            schema,
            writer,
            bytes,
            builders: T::Builders::default(),
            buffered: 0,
            broken,
        }
    }

    /// Writes the rows gathered as a row group.
    fn row_group(&mut self, out: &mut Vec<u8>) {
        if self.buffered == 0 {
            return;
        }
        self.buffered = 0;
        let columns = T::finish(&mut self.builders);
        let written = RecordBatch::try_new(Arc::clone(&self.schema), columns)
            .map_err(|e| e.to_string())
            .and_then(|batch| match &mut self.writer {
                Some(w) => w
                    .write(&batch)
                    .and_then(|()| w.flush())
                    .map_err(|e| e.to_string()),
                None => Ok(()),
            });
        if let Err(e) = written {
            // The answer is cut off (see `failed`): a reader gets an
            // aborted transfer, never a file missing rows silently.
            tracing::error!(error = %e, "cannot write a parquet row group; cutting the answer off");
            self.writer = None;
            self.broken = true;
        }
        self.bytes.take_into(out);
    }
}

impl<T: Columns + Send> Encoder<T> for ParquetEncoder<T> {
    fn begin(&mut self, out: &mut Vec<u8>) {
        // The file's magic comes with the first row group.
        self.bytes.take_into(out);
    }

    fn row(&mut self, row: &T, out: &mut Vec<u8>) {
        if self.broken {
            return;
        }
        row.append(&mut self.builders);
        self.buffered += 1;
        if self.buffered >= ROW_GROUP {
            self.row_group(out);
        }
    }

    fn end(&mut self, out: &mut Vec<u8>) {
        self.row_group(out);
        if let Some(w) = self.writer.take()
            && let Err(e) = w.close()
        {
            tracing::error!(error = %e, "cannot finish a parquet file");
            self.broken = true;
        }
        self.bytes.take_into(out);
    }

    fn content_type(&self) -> &'static str {
        "application/vnd.apache.parquet"
    }

    fn failed(&self) -> bool {
        self.broken
    }
}

fn utc(unit: TimeUnit) -> DataType {
    DataType::Timestamp(unit, Some("UTC".into()))
}

fn col(name: &str, t: DataType, nullable: bool) -> Field {
    Field::new(name, t, nullable)
}

fn text() -> DataType {
    DataType::Utf8
}

fn list_of_text() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

fn arc<A: arrow_array::Array + 'static>(a: A) -> ArrayRef {
    Arc::new(a)
}

fn millis() -> TimestampMillisecondBuilder {
    TimestampMillisecondBuilder::new().with_timezone("UTC")
}

/// The builders of positions' columns, in the schema's order.
pub struct PositionColumns {
    user: StringBuilder,
    device: StringBuilder,
    tid: StringBuilder,
    tst: TimestampMillisecondBuilder,
    lat: Float64Builder,
    lon: Float64Builder,
    ints: [Int32Builder; 7],
    t: StringBuilder,
    conn: StringBuilder,
    p: Float64Builder,
    m: Int32Builder,
    ssid: StringBuilder,
    bssid: StringBuilder,
    created_at: TimestampMillisecondBuilder,
    inregions: ListBuilder<StringBuilder>,
    inrids: ListBuilder<StringBuilder>,
    topic: StringBuilder,
    received_at: TimestampMillisecondBuilder,
}

impl Default for PositionColumns {
    fn default() -> Self {
        PositionColumns {
            user: StringBuilder::new(),
            device: StringBuilder::new(),
            tid: StringBuilder::new(),
            tst: millis(),
            lat: Float64Builder::new(),
            lon: Float64Builder::new(),
            ints: std::array::from_fn(|_| Int32Builder::new()),
            t: StringBuilder::new(),
            conn: StringBuilder::new(),
            p: Float64Builder::new(),
            m: Int32Builder::new(),
            ssid: StringBuilder::new(),
            bssid: StringBuilder::new(),
            created_at: millis(),
            inregions: ListBuilder::new(StringBuilder::new()),
            inrids: ListBuilder::new(StringBuilder::new()),
            topic: StringBuilder::new(),
            received_at: millis(),
        }
    }
}

/// `acc`, `alt`, `vac`, `vel`, `cog`, `batt`, `bs`: the whole-number
/// columns, in [`PositionColumns::ints`]' order.
const POSITION_INTS: [&str; 7] = ["acc", "alt", "vac", "vel", "cog", "batt", "bs"];

impl Columns for Position {
    type Builders = PositionColumns;

    fn encodings() -> &'static [(&'static str, Encoding)] {
        &[
            ("tst", Encoding::DELTA_BINARY_PACKED),
            ("received_at", Encoding::DELTA_BINARY_PACKED),
            ("created_at", Encoding::DELTA_BINARY_PACKED),
            ("lat", Encoding::BYTE_STREAM_SPLIT),
            ("lon", Encoding::BYTE_STREAM_SPLIT),
        ]
    }

    fn schema() -> SchemaRef {
        let mut fields = vec![
            col("user", text(), false),
            col("device", text(), false),
            col("tid", text(), true),
            col("tst", utc(TimeUnit::Millisecond), false),
            col("lat", DataType::Float64, false),
            col("lon", DataType::Float64, false),
        ];
        fields.extend(POSITION_INTS.map(|n| col(n, DataType::Int32, true)));
        fields.extend([
            col("t", text(), true),
            col("conn", text(), true),
            col("p", DataType::Float64, true),
            col("m", DataType::Int32, true),
            col("ssid", text(), true),
            col("bssid", text(), true),
            col("created_at", utc(TimeUnit::Millisecond), true),
            col("inregions", list_of_text(), true),
            col("inrids", list_of_text(), true),
            col("topic", text(), true),
            col("received_at", utc(TimeUnit::Millisecond), false),
        ]);
        Arc::new(Schema::new(fields))
    }

    fn append(&self, b: &mut PositionColumns) {
        b.user.append_value(&self.user);
        b.device.append_value(&self.device);
        b.tid.append_option(self.tid.as_deref());
        b.tst.append_value(self.tst.saturating_mul(1000));
        b.lat.append_value(self.lat);
        b.lon.append_value(self.lon);
        let ints = [
            self.acc, self.alt, self.vac, self.vel, self.cog, self.batt, self.bs,
        ];
        for (builder, v) in b.ints.iter_mut().zip(ints) {
            builder.append_option(v);
        }
        b.t.append_option(self.t.as_deref());
        b.conn.append_option(self.conn.as_deref());
        b.p.append_option(self.p);
        b.m.append_option(self.m);
        b.ssid.append_option(self.ssid.as_deref());
        b.bssid.append_option(self.bssid.as_deref());
        // A phone may send any `created_at`: one past the range is absent.
        b.created_at
            .append_option(self.created_at.and_then(|t| t.checked_mul(1000)));
        for (list, names) in [
            (&mut b.inregions, &self.inregions),
            (&mut b.inrids, &self.inrids),
        ] {
            for n in names {
                list.values().append_value(n);
            }
            list.append(true);
        }
        b.topic.append_option(self.topic.as_deref());
        b.received_at.append_value(self.received_at);
    }

    fn finish(b: &mut PositionColumns) -> Vec<ArrayRef> {
        let mut cols = vec![
            arc(b.user.finish()),
            arc(b.device.finish()),
            arc(b.tid.finish()),
            arc(b.tst.finish()),
            arc(b.lat.finish()),
            arc(b.lon.finish()),
        ];
        cols.extend(b.ints.iter_mut().map(|i| arc(i.finish())));
        cols.extend([
            arc(b.t.finish()),
            arc(b.conn.finish()),
            arc(b.p.finish()),
            arc(b.m.finish()),
            arc(b.ssid.finish()),
            arc(b.bssid.finish()),
            arc(b.created_at.finish()),
            arc(b.inregions.finish()),
            arc(b.inrids.finish()),
            arc(b.topic.finish()),
            arc(b.received_at.finish()),
        ]);
        cols
    }
}

/// The builders of trips' columns, in the schema's order.
pub struct TripColumns {
    names: [StringBuilder; 2],
    times: [TimestampMillisecondBuilder; 2],
    floats: [Float64Builder; 7],
    ints: [Int64Builder; 2],
    places: [StringBuilder; 6],
}

impl Default for TripColumns {
    fn default() -> Self {
        TripColumns {
            names: std::array::from_fn(|_| StringBuilder::new()),
            times: std::array::from_fn(|_| millis()),
            floats: std::array::from_fn(|_| Float64Builder::new()),
            ints: std::array::from_fn(|_| Int64Builder::new()),
            places: std::array::from_fn(|_| StringBuilder::new()),
        }
    }
}

const TRIP_FLOATS: [&str; 7] = [
    "start_lat",
    "start_lon",
    "end_lat",
    "end_lon",
    "distance",
    "avg_vel",
    "max_vel",
];
const TRIP_PLACES: [&str; 6] = [
    "start_place",
    "start_cc",
    "end_place",
    "end_cc",
    "start_address",
    "end_address",
];

impl Columns for Trip {
    type Builders = TripColumns;

    fn encodings() -> &'static [(&'static str, Encoding)] {
        &[
            ("start", Encoding::DELTA_BINARY_PACKED),
            ("end", Encoding::DELTA_BINARY_PACKED),
        ]
    }

    fn schema() -> SchemaRef {
        let mut fields = vec![col("user", text(), false), col("device", text(), false)];
        fields.extend(["start", "end"].map(|n| col(n, utc(TimeUnit::Millisecond), false)));
        fields.extend(TRIP_FLOATS.map(|n| col(n, DataType::Float64, false)));
        fields.extend(["duration", "points"].map(|n| col(n, DataType::Int64, false)));
        fields.extend(TRIP_PLACES.map(|n| col(n, text(), true)));
        Arc::new(Schema::new(fields))
    }

    fn append(&self, b: &mut TripColumns) {
        for (builder, v) in b.names.iter_mut().zip([&self.user, &self.device]) {
            builder.append_value(v);
        }
        for (builder, v) in b.times.iter_mut().zip([self.start, self.end]) {
            builder.append_value(v.saturating_mul(1000));
        }
        let floats = [
            self.start_lat,
            self.start_lon,
            self.end_lat,
            self.end_lon,
            self.distance,
            self.avg_vel,
            self.max_vel,
        ];
        for (builder, v) in b.floats.iter_mut().zip(floats) {
            builder.append_value(v);
        }
        for (builder, v) in b.ints.iter_mut().zip([self.duration, self.points]) {
            builder.append_value(v);
        }
        let places = [
            &self.start_place,
            &self.start_cc,
            &self.end_place,
            &self.end_cc,
            &self.start_address,
            &self.end_address,
        ];
        // As the JSON export: an address not found yet is absent.
        for (builder, v) in b.places.iter_mut().zip(places) {
            builder.append_option(v.as_deref().filter(|s| !s.is_empty()));
        }
    }

    fn finish(b: &mut TripColumns) -> Vec<ArrayRef> {
        let mut cols: Vec<ArrayRef> = b.names.iter_mut().map(|x| arc(x.finish())).collect();
        cols.extend(b.times.iter_mut().map(|x| arc(x.finish())));
        cols.extend(b.floats.iter_mut().map(|x| arc(x.finish())));
        cols.extend(b.ints.iter_mut().map(|x| arc(x.finish())));
        cols.extend(b.places.iter_mut().map(|x| arc(x.finish())));
        cols
    }
}

/// The builders of stops' columns, in the schema's order.
pub struct StopColumns {
    names: [StringBuilder; 2],
    times: [TimestampMillisecondBuilder; 2],
    floats: [Float64Builder; 2],
    ints: [Int64Builder; 2],
    places: [StringBuilder; 4],
    place_id: Int64Builder,
}

impl Default for StopColumns {
    fn default() -> Self {
        StopColumns {
            names: std::array::from_fn(|_| StringBuilder::new()),
            times: std::array::from_fn(|_| millis()),
            floats: std::array::from_fn(|_| Float64Builder::new()),
            ints: std::array::from_fn(|_| Int64Builder::new()),
            places: std::array::from_fn(|_| StringBuilder::new()),
            place_id: Int64Builder::new(),
        }
    }
}

impl Columns for Stop {
    type Builders = StopColumns;

    fn encodings() -> &'static [(&'static str, Encoding)] {
        &[
            ("start", Encoding::DELTA_BINARY_PACKED),
            ("end", Encoding::DELTA_BINARY_PACKED),
        ]
    }

    fn schema() -> SchemaRef {
        let mut fields = vec![col("user", text(), false), col("device", text(), false)];
        fields.extend(["start", "end"].map(|n| col(n, utc(TimeUnit::Millisecond), false)));
        fields.extend(["lat", "lon"].map(|n| col(n, DataType::Float64, false)));
        fields.extend(["duration", "points"].map(|n| col(n, DataType::Int64, false)));
        fields.extend(["place", "locality", "cc", "address"].map(|n| col(n, text(), true)));
        // The place's id, as the JSON has it: the start of its first stop, s.
        fields.push(col("place_id", DataType::Int64, true));
        Arc::new(Schema::new(fields))
    }

    fn append(&self, b: &mut StopColumns) {
        for (builder, v) in b.names.iter_mut().zip([&self.user, &self.device]) {
            builder.append_value(v);
        }
        for (builder, v) in b.times.iter_mut().zip([self.start, self.end]) {
            builder.append_value(v.saturating_mul(1000));
        }
        for (builder, v) in b.floats.iter_mut().zip([self.lat, self.lon]) {
            builder.append_value(v);
        }
        for (builder, v) in b.ints.iter_mut().zip([self.duration, self.points]) {
            builder.append_value(v);
        }
        let places = [&self.place, &self.locality, &self.cc, &self.address];
        // As the JSON export: an address not found yet is absent.
        for (builder, v) in b.places.iter_mut().zip(places) {
            builder.append_option(v.as_deref().filter(|s| !s.is_empty()));
        }
        b.place_id.append_option(self.place_id);
    }

    fn finish(b: &mut StopColumns) -> Vec<ArrayRef> {
        let mut cols: Vec<ArrayRef> = b.names.iter_mut().map(|x| arc(x.finish())).collect();
        cols.extend(b.times.iter_mut().map(|x| arc(x.finish())));
        cols.extend(b.floats.iter_mut().map(|x| arc(x.finish())));
        cols.extend(b.ints.iter_mut().map(|x| arc(x.finish())));
        cols.extend(b.places.iter_mut().map(|x| arc(x.finish())));
        cols.push(arc(b.place_id.finish()));
        cols
    }
}
