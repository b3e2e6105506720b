//! Checking an archive back: the manifest's signature and digests, every data line's
//! row hash and chain link, in both formats (NDJSON and Parquet), against the
//! database's links where the rows are still there.
//!
//! Over 600 lines: one job (checking one archive), whose line, link and signature
//! checks ([`RowChecks`]) both formats share.

use super::*;

/// The check of one archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveCheck {
    /// The manifest's path.
    pub manifest: PathBuf,
    /// Rows read from the data file.
    pub rows: i64,
    /// Chained rows whose hash was recomputed from the archived row.
    pub rows_rehashed: i64,
    /// Links compared with the chain in the database.
    pub links_matched_in_database: i64,
    /// What does not match (empty: intact).
    pub problems: Vec<String>,
}

impl ArchiveCheck {
    /// Whether the archive matches its manifest (and the chain).
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// An `activity_events` data line, as far as the chain's canonical form needs it.
#[derive(Deserialize)]
pub(super) struct ArchivedActivity<'a> {
    pub(super) id: uuid::Uuid,
    seq: i64,
    ts: String,
    received_at: String,
    tenant_id: Option<String>,
    user_id: Option<String>,
    session_id: Option<String>,
    action: Option<String>,
    outcome: Option<String>,
    resource_type: Option<String>,
    resource_id: Option<String>,
    service: Option<String>,
    trace_id: Option<String>,
    span_id: Option<String>,
    #[serde(borrow)]
    attributes: Option<&'a serde_json::value::RawValue>,
    taxonomy_valid: Option<bool>,
    taxonomy_reason: Option<String>,
    #[serde(default)]
    duration_ms: Option<Double>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    error_type: Option<String>,
    #[serde(default)]
    error_message: Option<String>,
    #[serde(default)]
    chain_form: Option<i16>,
    #[serde(default)]
    chain_salt: Option<String>,
    #[serde(default)]
    erasure_id: Option<uuid::Uuid>,
    #[serde(default)]
    erased_digest: Option<String>,
    #[serde(default)]
    erased_signature: Option<String>,
    #[serde(rename = "_chain")]
    pub(super) chain: Option<ArchivedLink>,
}

/// Why an archived activity line cannot be hashed again.
#[derive(Debug, thiserror::Error)]
pub(super) enum LineProblem {
    #[error("{0}")]
    Json(serde_json::Error),
    #[error("{0} is not a timestamp")]
    Timestamp(&'static str),
    #[error("duration_ms is not a number")]
    Duration,
    #[error("attributes differ from the parts the chain hashed")]
    Parts,
    #[error("a chain hash is not 32 bytes of hex")]
    Hash,
    #[error("{0} is not a bytea")]
    Bytea(&'static str),
    #[error("{0} does not have the column's type")]
    Column(&'static str),
}

/// A `bytea` as `row_to_json` prints it (`\\x` and hex).
pub(super) fn bytea(
    text: &Option<String>,
    column: &'static str,
) -> Result<Option<Vec<u8>>, LineProblem> {
    match text {
        None => Ok(None),
        Some(text) => text
            .strip_prefix("\\x")
            .and_then(|hex| ::hex::decode(hex).ok())
            .map(Some)
            .ok_or(LineProblem::Bytea(column)),
    }
}

/// Whether `whole` (the archived attributes) is exactly `chained` plus `personal`
/// (a v3 row's two hashed parts), compared as JSON values.
pub(super) fn parts_make_whole(
    whole: Option<&str>,
    chained: Option<&str>,
    personal: Option<&str>,
) -> bool {
    let parse = |text: Option<&str>| -> Option<serde_json::Map<String, serde_json::Value>> {
        match serde_json::from_str(text?).ok()? {
            serde_json::Value::Object(map) => Some(map),
            _ => None,
        }
    };
    let Some(whole) = parse(whole) else {
        return chained.is_none() && personal.is_none();
    };
    let mut joined = parse(chained).unwrap_or_default();
    for (key, value) in parse(personal).unwrap_or_default() {
        if joined.insert(key, value).is_some() {
            return false;
        }
    }
    joined == whole
}

/// A double as `row_to_json` prints it: a number, or `"NaN"` / `"Infinity"`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum Double {
    Number(f64),
    Text(String),
}

impl Double {
    pub(super) fn value(&self) -> Option<f64> {
        match self {
            Double::Number(n) => Some(*n),
            Double::Text(t) => match t.as_str() {
                "NaN" => Some(f64::NAN),
                "Infinity" => Some(f64::INFINITY),
                "-Infinity" => Some(f64::NEG_INFINITY),
                _ => None,
            },
        }
    }
}

#[derive(Deserialize)]
pub(super) struct ArchivedLink {
    pub(super) prev_hash: String,
    row_hash: String,
    /// A v3 row's attributes without their personal keys, as chained.
    #[serde(default)]
    attributes: Option<String>,
    /// A v3 row's personal attributes, as chained.
    #[serde(default)]
    personal: Option<String>,
}

/// A line's seq and tenant (both tables).
#[derive(Deserialize)]
pub(super) struct ArchivedKey {
    seq: i64,
    tenant_id: Option<String>,
}

pub(super) fn timestamp(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A chain link: `prev_hash` and `row_hash`.
pub(super) type Link = ([u8; 32], [u8; 32]);

/// An archived row's chain link and, for a v3 row, the two attribute parts the
/// chain hashed (both formats).
pub(super) struct ArchivedLinkParts {
    pub(super) prev_hash: [u8; 32],
    pub(super) row_hash: [u8; 32],
    pub(super) attributes: Option<String>,
    pub(super) personal: Option<String>,
}

/// Completes an archived activity row read from either format: `row` without
/// its attributes, `whole` the archived attributes' text, `link` the archived
/// link. A v3 row's parts must make up its whole attributes.
pub(super) fn linked(
    mut row: ChainRow,
    whole: Option<&str>,
    link: Option<ArchivedLinkParts>,
) -> Result<(ChainRow, Option<Link>), LineProblem> {
    let Some(link) = link else {
        row.attributes = whole.map(str::to_owned);
        return Ok((row, None));
    };
    if row.chain_form.is_some() {
        if !parts_make_whole(whole, link.attributes.as_deref(), link.personal.as_deref()) {
            return Err(LineProblem::Parts);
        }
        row.attributes = link.attributes;
    } else {
        row.attributes = whole.map(str::to_owned);
    }
    row.personal_attributes = link.personal;
    Ok((row, Some((link.prev_hash, link.row_hash))))
}

/// The chain row of an archived NDJSON activity line, its link, or why not.
pub(super) fn chain_row(line: &str) -> Result<(ChainRow, Option<Link>), LineProblem> {
    let a: ArchivedActivity = serde_json::from_str(line).map_err(LineProblem::Json)?;
    let ts = timestamp(&a.ts).ok_or(LineProblem::Timestamp("ts"))?;
    let received_at = timestamp(&a.received_at).ok_or(LineProblem::Timestamp("received_at"))?;
    let duration_ms = match &a.duration_ms {
        None => None,
        Some(d) => Some(d.value().ok_or(LineProblem::Duration)?),
    };
    let link = match a.chain {
        None => None,
        Some(link) => {
            let decode = |text: &str| -> Result<[u8; 32], LineProblem> {
                ::hex::decode(text)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                    .ok_or(LineProblem::Hash)
            };
            Some(ArchivedLinkParts {
                prev_hash: decode(&link.prev_hash)?,
                row_hash: decode(&link.row_hash)?,
                attributes: link.attributes,
                personal: link.personal,
            })
        }
    };
    let row = ChainRow {
        id: a.id,
        seq: a.seq,
        ts,
        received_at,
        tenant_id: a.tenant_id,
        user_id: a.user_id,
        session_id: a.session_id,
        action: a.action,
        outcome: a.outcome,
        resource_type: a.resource_type,
        resource_id: a.resource_id,
        service: a.service,
        trace_id: a.trace_id,
        span_id: a.span_id,
        attributes: None,
        taxonomy_valid: a.taxonomy_valid,
        taxonomy_reason: a.taxonomy_reason,
        duration_ms,
        name: a.name,
        error_type: a.error_type,
        error_message: a.error_message,
        chain_form: a.chain_form,
        chain_salt: bytea(&a.chain_salt, "chain_salt")?,
        erasure_id: a.erasure_id,
        erased_digest: bytea(&a.erased_digest, "erased_digest")?,
        erased_signature: bytea(&a.erased_signature, "erased_signature")?,
        personal_attributes: None,
    };
    linked(row, a.attributes.map(|raw| raw.get()), link)
}

/// Links checked against the database at once.
pub(super) const LINK_BATCH: usize = 5_000;
/// Problems listed per archive at most.
pub(super) const MAX_PROBLEMS: usize = 20;
/// Read buffer of a data file.
pub(super) const READ_BUFFER: usize = 256 * 1024;

/// The checks of an archive's rows, the same for both formats: each format's
/// reader hands every row's seq and tenant to [`RowChecks::count`] and every
/// `activity_events` row's chain row to [`RowChecks::chained`];
/// [`RowChecks::finish`] compares the totals with the manifest.
pub(super) struct RowChecks<'c> {
    pub(super) check: ArchiveCheck,
    activity: bool,
    database: Option<&'c Client>,
    tenants: BTreeMap<String, i64>,
    min_seq: Option<i64>,
    max_seq: Option<i64>,
    links: Sha256,
    chained: i64,
    pending: Vec<(String, i64, [u8; 32])>,
}

impl<'c> RowChecks<'c> {
    pub(super) fn new(check: ArchiveCheck, table: &str, database: Option<&'c Client>) -> Self {
        RowChecks {
            check,
            activity: table == "activity_events",
            database,
            tenants: BTreeMap::new(),
            min_seq: None,
            max_seq: None,
            links: Sha256::new(),
            chained: 0,
            pending: Vec::new(),
        }
    }

    /// Whether the rows' chain is checked (`activity_events`).
    pub(super) fn activity(&self) -> bool {
        self.activity
    }

    /// Whether enough problems are listed: the reader only counts bytes on.
    pub(super) fn full(&self) -> bool {
        self.check.problems.len() > MAX_PROBLEMS
    }

    /// Lists a problem (up to [`MAX_PROBLEMS`]).
    pub(super) fn problem(&mut self, text: String) {
        if !self.full() {
            self.check.problems.push(text);
        }
    }

    /// Counts a row read.
    pub(super) fn count(&mut self, seq: i64, tenant: Option<String>) {
        self.check.rows += 1;
        self.min_seq = Some(self.min_seq.map_or(seq, |m| m.min(seq)));
        self.max_seq = Some(self.max_seq.map_or(seq, |m| m.max(seq)));
        *self.tenants.entry(tenant.unwrap_or_default()).or_insert(0) += 1;
    }

    /// Checks an activity row (`place`: where it is in the file): re-hashed
    /// against its link, the link digested and, with a database, queued for the
    /// comparison with the chain.
    pub(super) async fn chained(
        &mut self,
        place: &str,
        seq: i64,
        row: Result<(ChainRow, Option<Link>), LineProblem>,
    ) -> Result<(), PgError> {
        match row {
            Err(why) => self.problem(format!("{place} (seq {seq}): {why}")),
            Ok((_, None)) => {}
            Ok((row, Some((prev, hash)))) => {
                self.chained += 1;
                self.links.update(row.seq.to_be_bytes());
                self.links.update(hash);
                if row_hash(&prev, &row.canonical()) == hash {
                    self.check.rows_rehashed += 1;
                } else {
                    self.problem(format!(
                        "{place} (seq {}): the row does not hash to its chain link \
                         (altered in the archive)",
                        row.seq
                    ));
                }
                if let Some(client) = self.database {
                    self.pending
                        .push((row.tenant_id.clone().unwrap_or_default(), row.seq, hash));
                    if self.pending.len() >= LINK_BATCH {
                        compare_links(client, &mut self.pending, &mut self.check).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Compares what was read (the data file's `bytes` and `sha256`) with the
    /// manifest; answers the check.
    pub(super) async fn finish(
        mut self,
        manifest: &Manifest,
        bytes: u64,
        sha256: &str,
    ) -> Result<ArchiveCheck, PgError> {
        let check = &mut self.check;
        if check.problems.len() > MAX_PROBLEMS {
            check.problems.push("(more problems not listed)".into());
        }
        if bytes != manifest.bytes {
            check.problems.push(format!(
                "the data file has {bytes} bytes, the manifest says {}",
                manifest.bytes
            ));
        }
        if sha256 != manifest.sha256 {
            check.problems.push(format!(
                "the data file's SHA-256 is {sha256}, the manifest says {}",
                manifest.sha256
            ));
        }
        if check.rows != manifest.rows {
            check.problems.push(format!(
                "the data file has {} rows, the manifest says {}",
                check.rows, manifest.rows
            ));
        }
        let (min_seq, max_seq) = (self.min_seq, self.max_seq);
        if (min_seq, max_seq) != (manifest.min_seq, manifest.max_seq) {
            check.problems.push(format!(
                "the rows' seq range is {min_seq:?}..={max_seq:?}, the manifest says {:?}..={:?}",
                manifest.min_seq, manifest.max_seq
            ));
        }
        let listed: BTreeMap<String, i64> = manifest
            .tenants
            .iter()
            .map(|t| (t.tenant.clone(), t.rows))
            .collect();
        if listed != self.tenants {
            check
                .problems
                .push("the rows' tenants or their counts differ from the manifest's".into());
        }
        if self.activity {
            if self.chained != manifest.chained_rows {
                check.problems.push(format!(
                    "{} rows carry a chain link, the manifest says {}",
                    self.chained, manifest.chained_rows
                ));
            }
            let digest = hex(&self.links.finalize());
            if manifest.links_digest.as_deref() != Some(digest.as_str()) {
                check.problems.push(
                    "the links digest of the archived rows differs from the manifest's".into(),
                );
            }
        }
        if let Some(client) = self.database {
            compare_links(client, &mut self.pending, check).await?;
        }
        Ok(self.check)
    }
}

/// Checks one archive: the manifest's signature (with `trusted` keys), the data
/// file's size, SHA-256, row count, seq range and tenants, and for
/// `activity_events` every chained row's hash recomputed from the archived row
/// (the chain's canonical form) and the links digest; with `database`, each link
/// is also compared with the chain's (`activity_chain` keeps links after their
/// rows are dropped). The data file is NDJSON or Parquet (the manifest's
/// `data_format`); both are read through the same checks.
pub async fn verify_archive(
    manifest_path: &Path,
    trusted: &[VerifyingKey],
    database: Option<&Client>,
) -> Result<ArchiveCheck, PgError> {
    let mut check = ArchiveCheck {
        manifest: manifest_path.to_owned(),
        rows: 0,
        rows_rehashed: 0,
        links_matched_in_database: 0,
        problems: Vec::new(),
    };
    let text = std::fs::read_to_string(manifest_path).map_err(|e| {
        PgError::io(
            format!("cannot read the manifest {}", manifest_path.display()),
            e,
        )
    })?;
    let manifest: Manifest = match serde_json::from_str(&text) {
        Ok(manifest) => manifest,
        Err(e) => {
            check
                .problems
                .push(format!("the manifest is not valid: {e}"));
            return Ok(check);
        }
    };
    if manifest.format != ARCHIVE_FORMAT {
        check
            .problems
            .push(format!("unknown archive format {:?}", manifest.format));
        return Ok(check);
    }
    check_signature(&manifest, trusted, &mut check.problems);
    let name_ok = !manifest.data_file.is_empty()
        && !manifest.data_file.contains(['/', '\\'])
        && manifest.data_file != ".."
        && manifest.data_file != ".";
    if !name_ok {
        check.problems.push(format!(
            "data_file {:?} is not a file name",
            manifest.data_file
        ));
        return Ok(check);
    }
    let data_path = manifest_path
        .parent()
        .unwrap_or(Path::new("."))
        .join(&manifest.data_file);
    let mut checks = RowChecks::new(check, &manifest.table, database);
    let read = match manifest.data_format.as_str() {
        "ndjson" => check_ndjson_rows(&data_path, &mut checks).await?,
        "parquet" => parquet_file::check_rows(&data_path, &mut checks).await?,
        other => {
            checks.problem(format!("unknown data format {other:?}"));
            None
        }
    };
    match read {
        Some((sha256, bytes)) => checks.finish(&manifest, bytes, &sha256).await,
        None => Ok(checks.check),
    }
}

/// Reads an NDJSON data file into `checks`, line by line (memory stays bounded
/// whatever the archive's size); answers the file's SHA-256 and size, `None`
/// when it cannot be opened.
pub(super) async fn check_ndjson_rows(
    data_path: &Path,
    checks: &mut RowChecks<'_>,
) -> Result<Option<(String, u64)>, PgError> {
    let file = match std::fs::File::open(data_path) {
        Ok(file) => file,
        Err(e) => {
            checks.problem(format!(
                "cannot read the data file {}: {e}",
                data_path.display()
            ));
            return Ok(None);
        }
    };
    let mut reader = std::io::BufReader::with_capacity(READ_BUFFER, file);
    let mut file_hash = Sha256::new();
    let mut bytes = 0u64;
    let mut buffer: Vec<u8> = Vec::with_capacity(4096);
    let mut at = 0usize;
    loop {
        buffer.clear();
        let read = std::io::BufRead::read_until(&mut reader, b'\n', &mut buffer).map_err(|e| {
            PgError::io(
                format!("cannot read the data file {}", data_path.display()),
                e,
            )
        })?;
        if read == 0 {
            break;
        }
        file_hash.update(&buffer);
        bytes += read as u64;
        at += 1;
        if checks.full() {
            continue;
        }
        let Ok(line) = std::str::from_utf8(&buffer) else {
            checks.problem(format!("line {at} is not UTF-8"));
            continue;
        };
        let line = line.strip_suffix('\n').unwrap_or(line);
        let key: ArchivedKey = match serde_json::from_str(line) {
            Ok(key) => key,
            Err(e) => {
                checks.problem(format!("line {at} is not an archived row: {e}"));
                continue;
            }
        };
        checks.count(key.seq, key.tenant_id);
        if checks.activity() {
            checks
                .chained(&format!("line {at}"), key.seq, chain_row(line))
                .await?;
        }
    }
    Ok(Some((hex(&file_hash.finalize()), bytes)))
}

/// Compares the archived links in `pending` with the stored chain (`activity_chain`
/// and `activity_chain_runs`), then empties it.
pub(super) async fn compare_links(
    client: &Client,
    pending: &mut Vec<(String, i64, [u8; 32])>,
    check: &mut ArchiveCheck,
) -> Result<(), PgError> {
    if pending.is_empty() {
        return Ok(());
    }
    let tenants: Vec<&str> = pending.iter().map(|(t, _, _)| t.as_str()).collect();
    let seqs: Vec<i64> = pending.iter().map(|(_, s, _)| *s).collect();
    let hashes: Vec<&[u8]> = pending.iter().map(|(_, _, h)| &h[..]).collect();
    let rows = client
        .query(
            "SELECT a.seq, c.row_hash = a.hash FROM unnest($1::text[], $2::int8[], \
             $3::bytea[]) AS a(tenant, seq, hash) LEFT JOIN LATERAL (SELECT row_hash \
             FROM tally_chain_link(a.tenant, a.seq) LIMIT 1) c ON true",
            &[&tenants, &seqs, &hashes],
        )
        .await?;
    for row in rows {
        let seq: i64 = row.try_get(0)?;
        match row.try_get::<_, Option<bool>>(1)? {
            Some(true) => check.links_matched_in_database += 1,
            Some(false) if check.problems.len() <= MAX_PROBLEMS => check.problems.push(format!(
                "seq {seq}: the archived link differs from the chain in the database"
            )),
            None if check.problems.len() <= MAX_PROBLEMS => check.problems.push(format!(
                "seq {seq}: the chain in the database has no link for this archived row"
            )),
            _ => {}
        }
    }
    pending.clear();
    Ok(())
}

pub(super) fn check_signature(
    manifest: &Manifest,
    trusted: &[VerifyingKey],
    problems: &mut Vec<String>,
) {
    let (Some(id), Some(signature)) = (&manifest.key_id, &manifest.signature) else {
        problems.push("the manifest is not signed".into());
        return;
    };
    let Some(key) = trusted.iter().find(|k| &key_id(k) == id) else {
        problems.push(format!(
            "the manifest is signed by key {id}, which is not the trusted signing key"
        ));
        return;
    };
    let valid = ::hex::decode(signature)
        .ok()
        .and_then(|bytes| ed25519_dalek::Signature::from_slice(&bytes).ok())
        .is_some_and(|s| key.verify(&manifest.message(), &s).is_ok());
    if !valid {
        problems.push("the manifest's signature does not verify (altered manifest)".into());
    }
}

/// The manifests under `dir`: in `dir` itself and in its subdirectories (one
/// level: `<dir>/<table>/`), sorted.
pub fn archive_manifests(dir: &Path) -> Result<Vec<PathBuf>, PgError> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    let read = |d: &Path| {
        std::fs::read_dir(d).map_err(|e| {
            PgError::io(
                format!("cannot read the archive directory {}", d.display()),
                e,
            )
        })
    };
    for entry in read(dir)? {
        let entry = entry.map_err(|e| PgError::io(format!("cannot read {}", dir.display()), e))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            dirs.push(entry.path());
        }
    }
    for d in &dirs {
        for entry in read(d)? {
            let entry =
                entry.map_err(|e| PgError::io(format!("cannot read {}", d.display()), e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(MANIFEST_SUFFIX) && !name.starts_with('.') {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Checks every archive under `dir` (see [`verify_archive`]).
pub async fn verify_archive_dir(
    dir: &Path,
    trusted: &[VerifyingKey],
    database: Option<&Client>,
) -> Result<Vec<ArchiveCheck>, PgError> {
    let mut checks = Vec::new();
    for manifest in archive_manifests(dir)? {
        checks.push(verify_archive(&manifest, trusted, database).await?);
    }
    Ok(checks)
}
