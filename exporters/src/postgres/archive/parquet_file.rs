//! The Parquet data file of an archive (`retention.archive.format: parquet`).
//!
//! One typed column per column of the table, in the table's order, then (for
//! `activity_events`) the row's chain link. The types follow PostgreSQL's:
//! `bigint` INT64, `integer` INT32, `smallint` INT32 (INTEGER(16)), `boolean`
//! BOOLEAN, `double precision` DOUBLE, `timestamptz` INT64 TIMESTAMP(MICROS,
//! UTC), `uuid` FIXED_LEN_BYTE_ARRAY(16) UUID, `bytea` BYTE_ARRAY, text types
//! BYTE_ARRAY STRING, `jsonb` BYTE_ARRAY STRING holding the value's text as
//! PostgreSQL prints it (the text the chain hashed), and any other type (the
//! `numeric` cost, the `text[]` personal keys) BYTE_ARRAY STRING holding
//! `to_json` of the value. A column is REQUIRED when it is `NOT NULL`, else
//! OPTIONAL. The link columns: `_chain_prev_hash`, `_chain_row_hash` (BYTE_ARRAY,
//! null for a row not chained yet) and, for a row of canonical form v3,
//! `_chain_attributes` and `_chain_personal` (STRING: the two attribute parts the
//! chain hashed), as in an NDJSON line's `_chain` object.
//!
//! Rows are streamed from PostgreSQL and written in row groups of at most
//! [`ROW_GROUP_ROWS`] rows or about [`ROW_GROUP_BYTES`] of values, so memory
//! stays bounded whatever the partition's size; the columns are compressed with
//! zstd. Encoding a row group runs on the blocking pool.
//!
//! Over 600 lines: the Parquet form of an archive both ways (written here, read
//! back for verification and erasure) over one column model (`Kind`, `Column`).

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::{pin_mut, TryStreamExt};
use parquet::basic::{
    Compression, LogicalType, Repetition, TimeUnit, Type as PhysicalType, ZstdLevel,
};
use parquet::data_type::{
    BoolType, ByteArray, ByteArrayType, DoubleType, FixedLenByteArray, FixedLenByteArrayType,
    Int32Type, Int64Type,
};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::FileReader;
use parquet::file::serialized_reader::SerializedFileReader;
use parquet::file::writer::SerializedFileWriter;
use parquet::record::Field;
use parquet::schema::types::Type;
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::{
    io, linked, select_rows, ArchiveError, ArchivedLinkParts, LineProblem, Link, RowChecks, Scan,
    READ_BUFFER,
};
use crate::postgres::chain::ChainRow;
use crate::postgres::PgError;

/// Rows per row group at most.
pub const ROW_GROUP_ROWS: usize = 65_536;
/// Bytes of buffered values after which a row group is written, whatever its rows.
pub const ROW_GROUP_BYTES: usize = 64 * 1024 * 1024;
/// The zstd level of the columns.
const ZSTD_LEVEL: i32 = 3;
/// Write buffer of the data file.
const WRITE_BUFFER: usize = 256 * 1024;

/// Names of the link columns.
const PREV_HASH: &str = "_chain_prev_hash";
const ROW_HASH: &str = "_chain_row_hash";
const CHAIN_ATTRIBUTES: &str = "_chain_attributes";
const CHAIN_PERSONAL: &str = "_chain_personal";

/// How a column is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int64,
    Int32,
    Int16,
    Bool,
    Double,
    Timestamp,
    Uuid,
    Bytea,
    /// Text, or a value's text (`jsonb`, `to_json` of other types).
    Text,
}

/// One column of the file.
struct Column {
    name: String,
    kind: Kind,
    required: bool,
    /// Its expression in the SELECT list.
    select: String,
}

impl Column {
    fn parquet_type(&self) -> Result<Type, parquet::errors::ParquetError> {
        let (physical, logical) = match self.kind {
            Kind::Int64 => (PhysicalType::INT64, None),
            Kind::Int32 => (PhysicalType::INT32, None),
            Kind::Int16 => (PhysicalType::INT32, Some(LogicalType::integer(16, true))),
            Kind::Bool => (PhysicalType::BOOLEAN, None),
            Kind::Double => (PhysicalType::DOUBLE, None),
            Kind::Timestamp => (
                PhysicalType::INT64,
                Some(LogicalType::timestamp(true, TimeUnit::MICROS)),
            ),
            Kind::Uuid => (PhysicalType::FIXED_LEN_BYTE_ARRAY, Some(LogicalType::Uuid)),
            Kind::Bytea => (PhysicalType::BYTE_ARRAY, None),
            Kind::Text => (PhysicalType::BYTE_ARRAY, Some(LogicalType::String)),
        };
        let mut builder = Type::primitive_type_builder(&self.name, physical)
            .with_repetition(if self.required {
                Repetition::REQUIRED
            } else {
                Repetition::OPTIONAL
            })
            .with_logical_type(logical);
        if self.kind == Kind::Uuid {
            builder = builder.with_length(16);
        }
        builder.build()
    }
}

/// The buffered values of one column in the current row group.
enum Values {
    I64(Vec<i64>),
    I32(Vec<i32>),
    Bool(Vec<bool>),
    F64(Vec<f64>),
    Bytes(Vec<ByteArray>),
    Fixed(Vec<FixedLenByteArray>),
}

struct Buffer {
    values: Values,
    /// Definition levels (1: a value, 0: NULL) of an OPTIONAL column.
    defs: Vec<i16>,
    required: bool,
}

impl Buffer {
    fn new(column: &Column) -> Buffer {
        let values = match column.kind {
            Kind::Int64 | Kind::Timestamp => Values::I64(Vec::new()),
            Kind::Int32 | Kind::Int16 => Values::I32(Vec::new()),
            Kind::Bool => Values::Bool(Vec::new()),
            Kind::Double => Values::F64(Vec::new()),
            Kind::Uuid => Values::Fixed(Vec::new()),
            Kind::Bytea | Kind::Text => Values::Bytes(Vec::new()),
        };
        Buffer {
            values,
            defs: Vec::new(),
            required: column.required,
        }
    }

    fn clear(&mut self) {
        self.defs.clear();
        match &mut self.values {
            Values::I64(v) => v.clear(),
            Values::I32(v) => v.clear(),
            Values::Bool(v) => v.clear(),
            Values::F64(v) => v.clear(),
            Values::Bytes(v) => v.clear(),
            Values::Fixed(v) => v.clear(),
        }
    }
}

/// A writer that hashes and counts what goes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hash.update(&buf[..written]);
        self.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

type FileWriter = SerializedFileWriter<Hashing<BufWriter<std::fs::File>>>;

fn parquet_error(path: &Path) -> impl Fn(parquet::errors::ParquetError) -> ArchiveError + '_ {
    move |e| ArchiveError::Io {
        context: format!("cannot write the Parquet archive {}", path.display()),
        source: std::io::Error::other(e),
    }
}

/// The columns of `table` (the parent's, which its partitions share), then the
/// link columns.
async fn columns(client: &Client, table: &str) -> Result<Vec<Column>, ArchiveError> {
    let rows = client
        .query(
            "SELECT a.attname::text, t.typname::text, t.typcategory::text, a.attnotnull \
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&table],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len() + 4);
    for row in rows {
        let name: String = row.try_get(0)?;
        let type_name: &str = row.try_get(1)?;
        let category: &str = row.try_get(2)?;
        let required: bool = row.try_get(3)?;
        let quoted = format!("t.\"{}\"", name.replace('"', "\"\""));
        let (kind, select) = match (type_name, category) {
            ("int8", _) => (Kind::Int64, quoted),
            ("int4", _) => (Kind::Int32, quoted),
            ("int2", _) => (Kind::Int16, quoted),
            ("bool", _) => (Kind::Bool, quoted),
            ("float8", _) => (Kind::Double, quoted),
            ("timestamptz", _) => (Kind::Timestamp, quoted),
            ("uuid", _) => (Kind::Uuid, quoted),
            ("bytea", _) => (Kind::Bytea, quoted),
            ("jsonb" | "json", _) => (Kind::Text, format!("{quoted}::text")),
            (_, "S") => (Kind::Text, format!("{quoted}::text")),
            _ => (Kind::Text, format!("to_json({quoted})::text")),
        };
        out.push(Column {
            name,
            kind,
            required,
            select,
        });
    }
    if table == "activity_events" {
        for (name, kind, select) in [
            (PREV_HASH, Kind::Bytea, "c.prev_hash"),
            (ROW_HASH, Kind::Bytea, "c.row_hash"),
            (
                CHAIN_ATTRIBUTES,
                Kind::Text,
                "CASE WHEN c.row_hash IS NOT NULL AND t.chain_form IS NOT NULL \
                 THEN (t.attributes - tally_personal_keys(t.attributes, t.personal_keys))::text END",
            ),
            (
                CHAIN_PERSONAL,
                Kind::Text,
                "CASE WHEN c.row_hash IS NOT NULL AND t.chain_form IS NOT NULL \
                 THEN tally_personal_attributes(t.attributes, t.personal_keys)::text END",
            ),
        ] {
            out.push(Column {
                name: name.to_owned(),
                kind,
                required: false,
                select: select.to_owned(),
            });
        }
    }
    Ok(out)
}

/// Appends column `i` of `row` to `buffer`; answers the bytes buffered.
fn push(
    buffer: &mut Buffer,
    kind: Kind,
    row: &tokio_postgres::Row,
    i: usize,
) -> Result<usize, tokio_postgres::Error> {
    let mut size = 8;
    let present = match (&mut buffer.values, kind) {
        (Values::I64(v), Kind::Int64) => row.try_get::<_, Option<i64>>(i)?.map(|x| v.push(x)),
        (Values::I64(v), _) => row
            .try_get::<_, Option<DateTime<Utc>>>(i)?
            .map(|x| v.push(x.timestamp_micros())),
        (Values::I32(v), Kind::Int16) => row
            .try_get::<_, Option<i16>>(i)?
            .map(|x| v.push(i32::from(x))),
        (Values::I32(v), _) => row.try_get::<_, Option<i32>>(i)?.map(|x| v.push(x)),
        (Values::Bool(v), _) => row.try_get::<_, Option<bool>>(i)?.map(|x| v.push(x)),
        (Values::F64(v), _) => row.try_get::<_, Option<f64>>(i)?.map(|x| v.push(x)),
        (Values::Fixed(v), _) => row
            .try_get::<_, Option<uuid::Uuid>>(i)?
            .map(|x| v.push(FixedLenByteArray::from(x.as_bytes().to_vec()))),
        (Values::Bytes(v), Kind::Bytea) => row.try_get::<_, Option<&[u8]>>(i)?.map(|x| {
            size += x.len();
            v.push(ByteArray::from(x.to_vec()))
        }),
        (Values::Bytes(v), _) => row.try_get::<_, Option<&str>>(i)?.map(|x| {
            size += x.len();
            v.push(ByteArray::from(x.as_bytes().to_vec()))
        }),
    };
    if !buffer.required {
        buffer.defs.push(i16::from(present.is_some()));
    }
    Ok(size)
}

/// Writes the buffered values as one row group, then empties the buffers.
fn write_row_group(
    writer: &mut FileWriter,
    buffers: &mut [Buffer],
) -> Result<(), parquet::errors::ParquetError> {
    let mut group = writer.next_row_group()?;
    for buffer in buffers.iter_mut() {
        let Some(mut column) = group.next_column()? else {
            return Err(parquet::errors::ParquetError::General(
                "fewer columns in the schema than buffered".into(),
            ));
        };
        let defs = (!buffer.required).then_some(buffer.defs.as_slice());
        match &buffer.values {
            Values::I64(v) => column.typed::<Int64Type>().write_batch(v, defs, None)?,
            Values::I32(v) => column.typed::<Int32Type>().write_batch(v, defs, None)?,
            Values::Bool(v) => column.typed::<BoolType>().write_batch(v, defs, None)?,
            Values::F64(v) => column.typed::<DoubleType>().write_batch(v, defs, None)?,
            Values::Bytes(v) => column.typed::<ByteArrayType>().write_batch(v, defs, None)?,
            Values::Fixed(v) => column
                .typed::<FixedLenByteArrayType>()
                .write_batch(v, defs, None)?,
        };
        column.close()?;
        buffer.clear();
    }
    group.close()?;
    Ok(())
}

/// Encodes a row group on the blocking pool.
async fn flush(
    path: &Path,
    writer: FileWriter,
    mut buffers: Vec<Buffer>,
) -> Result<(FileWriter, Vec<Buffer>), ArchiveError> {
    let mut writer = writer;
    let done = tokio::task::spawn_blocking(move || {
        let result = write_row_group(&mut writer, &mut buffers);
        result.map(|()| (writer, buffers))
    })
    .await
    .map_err(|e| ArchiveError::Io {
        context: format!("the writer of {} stopped", path.display()),
        source: std::io::Error::other(e),
    })?;
    done.map_err(parquet_error(path))
}

/// Streams the rows into the Parquet file `path` (created), fsynced; answers
/// what was written.
pub(super) async fn write_rows(
    client: &Client,
    path: &Path,
    table: &str,
    partition: &str,
    tenants: Option<&[String]>,
) -> Result<Scan, ArchiveError> {
    let columns = columns(client, table).await?;
    let position = |name: &str| columns.iter().position(|c| c.name == name);
    let (Some(seq_at), Some(tenant_at)) = (position("seq"), position("tenant_id")) else {
        return Err(PgError::Integrity(format!("{table} has no seq or tenant_id column")).into());
    };
    let links_at = position(PREV_HASH).zip(position(ROW_HASH));
    let select: Vec<&str> = columns.iter().map(|c| c.select.as_str()).collect();
    let fields = columns
        .iter()
        .map(|c| c.parquet_type().map(Arc::new))
        .collect::<Result<Vec<_>, _>>()
        .map_err(parquet_error(path))?;
    let schema = Type::group_type_builder(table)
        .with_fields(fields)
        .build()
        .map_err(parquet_error(path))?;
    let level = ZstdLevel::try_new(ZSTD_LEVEL).map_err(parquet_error(path))?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_created_by(format!(
            "tally {} ({})",
            env!("CARGO_PKG_VERSION"),
            super::ARCHIVE_FORMAT
        ))
        .build();
    let file = std::fs::File::create(path)
        .map_err(io(format!("cannot create the archive {}", path.display())))?;
    let sink = Hashing {
        inner: BufWriter::with_capacity(WRITE_BUFFER, file),
        hash: Sha256::new(),
        bytes: 0,
    };
    let mut writer = SerializedFileWriter::new(sink, Arc::new(schema), Arc::new(properties))
        .map_err(parquet_error(path))?;
    let mut buffers: Vec<Buffer> = columns.iter().map(Buffer::new).collect();

    let mut scan = Scan::default();
    let mut links = Sha256::new();
    let (mut group_rows, mut group_bytes) = (0usize, 0usize);
    let rows = select_rows(client, table, partition, tenants, &select.join(", ")).await?;
    pin_mut!(rows);
    while let Some(row) = rows.try_next().await? {
        for (i, (column, buffer)) in columns.iter().zip(buffers.iter_mut()).enumerate() {
            group_bytes += push(buffer, column.kind, &row, i)?;
        }
        let seq: i64 = row.try_get(seq_at)?;
        let tenant: &str = row.try_get(tenant_at)?;
        if let Some((prev_at, hash_at)) = links_at {
            let prev: Option<&[u8]> = row.try_get(prev_at)?;
            let hash: Option<&[u8]> = row.try_get(hash_at)?;
            if let (Some(_), Some(hash)) = (prev, hash) {
                links.update(seq.to_be_bytes());
                links.update(hash);
                scan.chained_rows += 1;
            }
        }
        scan.count(seq, tenant);
        group_rows += 1;
        if group_rows >= ROW_GROUP_ROWS || group_bytes >= ROW_GROUP_BYTES {
            (writer, buffers) = flush(path, writer, buffers).await?;
            (group_rows, group_bytes) = (0, 0);
        }
    }
    if group_rows > 0 {
        (writer, buffers) = flush(path, writer, buffers).await?;
    }
    drop(buffers);
    let finished = tokio::task::spawn_blocking(move || -> Result<_, ArchiveError> {
        let sink = writer.into_inner().map_err(|e| ArchiveError::Io {
            context: "cannot write the Parquet footer".into(),
            source: std::io::Error::other(e),
        })?;
        let Hashing { inner, hash, bytes } = sink;
        let file = inner.into_inner().map_err(|e| ArchiveError::Io {
            context: "cannot write the Parquet archive".into(),
            source: e.into_error(),
        })?;
        file.sync_all()
            .map_err(io("cannot fsync the Parquet archive"))?;
        Ok((hash, bytes))
    })
    .await
    .map_err(|e| ArchiveError::Io {
        context: format!("the writer of {} stopped", path.display()),
        source: std::io::Error::other(e),
    })??;
    scan.sha256 = finished.0.finalize().into();
    scan.bytes = finished.1;
    scan.links_digest = links.finalize().into();
    Ok(scan)
}

/// The file's SHA-256 and size, read in full.
fn digest(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hash = Sha256::new();
    let mut buffer = vec![0u8; READ_BUFFER];
    let mut bytes = 0u64;
    loop {
        let read = std::io::Read::read(&mut file, &mut buffer)?;
        if read == 0 {
            break;
        }
        hash.update(&buffer[..read]);
        bytes += read as u64;
    }
    Ok((crate::postgres::chain::hex(&hash.finalize()), bytes))
}

/// Reads a Parquet data file into `checks`: every row's seq and tenant, and
/// every chained `activity_events` row rebuilt and re-hashed. Answers the file's
/// SHA-256 and size.
pub(super) async fn check_rows(
    data_path: &Path,
    checks: &mut RowChecks<'_>,
) -> Result<Option<(String, u64)>, PgError> {
    let (sha256, bytes) = match digest(data_path) {
        Ok(found) => found,
        Err(e) => {
            checks.problem(format!(
                "cannot read the data file {}: {e}",
                data_path.display()
            ));
            return Ok(None);
        }
    };
    let opened = std::fs::File::open(data_path)
        .map_err(|e| e.to_string())
        .and_then(|file| SerializedFileReader::new(file).map_err(|e| e.to_string()));
    let reader = match opened {
        Ok(reader) => reader,
        Err(e) => {
            checks.problem(format!("the data file is not a readable Parquet file: {e}"));
            return Ok(Some((sha256, bytes)));
        }
    };
    let names: HashMap<String, usize> = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .root_schema()
        .get_fields()
        .iter()
        .enumerate()
        .map(|(i, f)| (f.name().to_owned(), i))
        .collect();
    let (Some(&seq_at), Some(&tenant_at)) = (names.get("seq"), names.get("tenant_id")) else {
        checks.problem("the data file has no seq or tenant_id column".into());
        return Ok(Some((sha256, bytes)));
    };
    let rows = match reader.get_row_iter(None) {
        Ok(rows) => rows,
        Err(e) => {
            checks.problem(format!("the data file's rows cannot be read: {e}"));
            return Ok(Some((sha256, bytes)));
        }
    };
    let mut at = 0usize;
    for row in rows {
        at += 1;
        if checks.full() {
            break;
        }
        let row = match row {
            Ok(row) => row,
            Err(e) => {
                checks.problem(format!("row {at} cannot be read: {e}"));
                break;
            }
        };
        let fields: Vec<&Field> = row.get_column_iter().map(|(_, f)| f).collect();
        let record = Record {
            fields: &fields,
            names: &names,
        };
        let (Some(Field::Long(seq)), tenant) = (fields.get(seq_at).copied(), fields.get(tenant_at))
        else {
            checks.problem(format!("row {at}: seq is not a bigint"));
            continue;
        };
        let tenant = match tenant {
            Some(Field::Str(t)) => Some(t.clone()),
            Some(Field::Null) => None,
            _ => {
                checks.problem(format!("row {at} (seq {seq}): tenant_id is not text"));
                continue;
            }
        };
        let seq = *seq;
        checks.count(seq, tenant);
        if checks.activity() {
            checks
                .chained(&format!("row {at}"), seq, chain_row(&record))
                .await?;
        }
    }
    Ok(Some((sha256, bytes)))
}

/// One row of the file, its fields by column name.
struct Record<'a> {
    fields: &'a [&'a Field],
    names: &'a HashMap<String, usize>,
}

impl Record<'_> {
    fn get(&self, name: &'static str) -> Option<&Field> {
        self.names
            .get(name)
            .and_then(|&i| self.fields.get(i))
            .copied()
            .filter(|f| !matches!(f, Field::Null))
    }

    fn text(&self, name: &'static str) -> Result<Option<String>, LineProblem> {
        match self.get(name) {
            None => Ok(None),
            Some(Field::Str(s)) => Ok(Some(s.clone())),
            Some(_) => Err(LineProblem::Column(name)),
        }
    }

    fn bytes(&self, name: &'static str) -> Result<Option<Vec<u8>>, LineProblem> {
        match self.get(name) {
            None => Ok(None),
            Some(Field::Bytes(b)) => Ok(Some(b.data().to_vec())),
            Some(_) => Err(LineProblem::Column(name)),
        }
    }

    fn timestamp(&self, name: &'static str) -> Result<DateTime<Utc>, LineProblem> {
        match self.get(name) {
            Some(Field::TimestampMicros(us)) => {
                DateTime::from_timestamp_micros(*us).ok_or(LineProblem::Timestamp(name))
            }
            _ => Err(LineProblem::Timestamp(name)),
        }
    }

    fn uuid(&self, name: &'static str) -> Result<Option<uuid::Uuid>, LineProblem> {
        self.bytes(name)?
            .map(|b| uuid::Uuid::from_slice(&b).map_err(|_| LineProblem::Column(name)))
            .transpose()
    }

    fn hash(&self, name: &'static str) -> Result<Option<[u8; 32]>, LineProblem> {
        self.bytes(name)?
            .map(|b| <[u8; 32]>::try_from(b.as_slice()).map_err(|_| LineProblem::Hash))
            .transpose()
    }
}

/// The chain row of an archived activity row, its link, or why not.
fn chain_row(record: &Record<'_>) -> Result<(ChainRow, Option<Link>), LineProblem> {
    let Some(Field::Long(seq)) = record.get("seq") else {
        return Err(LineProblem::Column("seq"));
    };
    let id = record.uuid("id")?.ok_or(LineProblem::Column("id"))?;
    let whole = record.text("attributes")?;
    let link = match (record.hash(PREV_HASH)?, record.hash(ROW_HASH)?) {
        (Some(prev_hash), Some(row_hash)) => Some(ArchivedLinkParts {
            prev_hash,
            row_hash,
            attributes: record.text(CHAIN_ATTRIBUTES)?,
            personal: record.text(CHAIN_PERSONAL)?,
        }),
        _ => None,
    };
    let row = ChainRow {
        id,
        seq: *seq,
        ts: record.timestamp("ts")?,
        received_at: record.timestamp("received_at")?,
        tenant_id: record.text("tenant_id")?,
        user_id: record.text("user_id")?,
        session_id: record.text("session_id")?,
        action: record.text("action")?,
        outcome: record.text("outcome")?,
        resource_type: record.text("resource_type")?,
        resource_id: record.text("resource_id")?,
        service: record.text("service")?,
        trace_id: record.text("trace_id")?,
        span_id: record.text("span_id")?,
        attributes: None,
        taxonomy_valid: match record.get("taxonomy_valid") {
            None => None,
            Some(Field::Bool(b)) => Some(*b),
            Some(_) => return Err(LineProblem::Column("taxonomy_valid")),
        },
        taxonomy_reason: record.text("taxonomy_reason")?,
        duration_ms: match record.get("duration_ms") {
            None => None,
            Some(Field::Double(d)) => Some(*d),
            Some(_) => return Err(LineProblem::Duration),
        },
        name: record.text("name")?,
        error_type: record.text("error_type")?,
        error_message: record.text("error_message")?,
        chain_form: match record.get("chain_form") {
            None => None,
            Some(Field::Short(f)) => Some(*f),
            Some(_) => return Err(LineProblem::Column("chain_form")),
        },
        chain_salt: record.bytes("chain_salt")?,
        erasure_id: record.uuid("erasure_id")?,
        erased_digest: record.bytes("erased_digest")?,
        erased_signature: record.bytes("erased_signature")?,
        personal_attributes: None,
    };
    linked(row, whole.as_deref(), link)
}

/// Whether the Parquet data file `path` holds a row of `user` in `tenant`
/// (`tenant_id` and `user_id` as archived; only those two columns are read).
pub fn holds_user(path: &Path, tenant: &str, user: &str) -> Result<bool, PgError> {
    let file = std::fs::File::open(path)
        .map_err(|e| PgError::io(format!("cannot open {}", path.display()), e))?;
    let unreadable = |e: parquet::errors::ParquetError| {
        PgError::Integrity(format!(
            "{} is not a readable Parquet file: {e}",
            path.display()
        ))
    };
    let reader = SerializedFileReader::new(file).map_err(unreadable)?;
    let root = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .root_schema();
    let fields: Vec<_> = root
        .get_fields()
        .iter()
        .filter(|f| matches!(f.name(), "tenant_id" | "user_id"))
        .cloned()
        .collect();
    if fields.len() != 2 {
        return Err(PgError::Integrity(format!(
            "{} has no tenant_id or user_id column",
            path.display()
        )));
    }
    let projection = Type::group_type_builder(root.name())
        .with_fields(fields)
        .build()
        .map_err(unreadable)?;
    for row in reader.get_row_iter(Some(projection)).map_err(unreadable)? {
        let row = row.map_err(unreadable)?;
        let (mut tenant_found, mut user_found) = (false, false);
        for (name, field) in row.get_column_iter() {
            let Field::Str(value) = field else { continue };
            match name.as_str() {
                "tenant_id" => tenant_found = value == tenant,
                "user_id" => user_found = value == user,
                _ => {}
            }
        }
        if tenant_found && user_found {
            return Ok(true);
        }
    }
    Ok(false)
}
