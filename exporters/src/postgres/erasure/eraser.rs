//! [`Eraser`]: runs an erasure in batches, one transaction each, under the
//! row lock of its `erasures` record, until nothing of the user is left in the
//! raw tables; then [`finish`](super::finish) closes it.

use super::*;

/// What one batch did.
enum Step {
    /// Rows of this table erased.
    Erased(&'static str, i64),
    /// Rows stored before canonical form v3 wait for the chainer.
    WaitForChain,
    /// Nothing of the user is left in the raw tables.
    Finished,
}

/// Runs erasures. Cheap to clone.
#[derive(Clone)]
pub struct Eraser {
    key: Vec<u8>,
    signer: Option<SigningKey>,
    personal: PersonalKeys,
    archive_dir: Option<std::path::PathBuf>,
    batch_rows: i64,
    max_batches: Option<u64>,
}

impl std::fmt::Debug for Eraser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eraser")
            .field(
                "key_id",
                &self.signer.as_ref().map(|k| key_id(&k.verifying_key())),
            )
            .field("batch_rows", &self.batch_rows)
            .field("max_batches", &self.max_batches)
            .finish()
    }
}

impl Eraser {
    /// An eraser deriving pseudonyms with `key` (see [`pseudonym`]) and signing
    /// erased rows stored before canonical form v3 with `signer` (the checkpoint
    /// key; without one, such rows cannot be erased).
    pub fn new(key: Vec<u8>, signer: Option<SigningKey>) -> Eraser {
        Eraser {
            key,
            signer,
            personal: PersonalKeys::default(),
            archive_dir: None,
            batch_rows: DEFAULT_ERASURE_BATCH_ROWS,
            max_batches: None,
        }
    }

    /// The attribute keys the redaction config declares personal: removed from
    /// token attributes and quarantined records at every depth. (An activity
    /// row loses the personal keys it was written with, `personal_keys`: a key
    /// declared personal only later is covered by the chain as a public
    /// attribute of the rows written before, and stays in them.)
    pub fn with_personal_keys(mut self, keys: PersonalKeys) -> Eraser {
        self.personal = keys;
        self
    }

    /// The archive directory (`retention.archive.dir`): before an erasure
    /// completes, its archives are searched for rows of the user, and the data
    /// files found are listed in the record (`archives`).
    pub fn with_archive_dir(mut self, dir: Option<std::path::PathBuf>) -> Eraser {
        self.archive_dir = dir;
        self
    }

    /// The erasure key (for [`ErasedUsers`]).
    pub fn erased_users(&self, window: Duration) -> ErasedUsers {
        ErasedUsers::new(self.key.clone(), window)
    }

    /// Rows changed per batch (at least 1).
    pub fn with_batch_rows(mut self, rows: i64) -> Eraser {
        self.batch_rows = rows.max(1);
        self
    }

    /// Test hook: [`Eraser::run`] stops (as a crash would) after this many
    /// batches, leaving the erasure pending.
    pub fn with_max_batches(mut self, batches: Option<u64>) -> Eraser {
        self.max_batches = batches;
        self
    }

    /// The pseudonym this eraser gives `user` of `tenant`.
    pub fn pseudonym(&self, tenant: &str, user: &str) -> String {
        pseudonym(&self.key, tenant, user)
    }

    /// Records the request, or finds the erasure of the same (tenant, user)
    /// already recorded: answers the record and whether it is new. Idempotent.
    pub async fn request(
        &self,
        client: &Client,
        request: &ErasureRequest,
    ) -> Result<(ErasureRecord, bool), ErasureError> {
        request.check()?;
        let pseudonym = self.pseudonym(&request.tenant, &request.user);
        let key = self.signer.as_ref().map(|k| key_id(&k.verifying_key()));
        let inserted = client
            .execute(
                "INSERT INTO erasures (id, tenant_id, pseudonym, subject, reason, requested_by, \
                     state, key_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7) \
                 ON CONFLICT (tenant_id, pseudonym) DO NOTHING",
                &[
                    &Uuid::now_v7(),
                    &request.tenant,
                    &pseudonym,
                    &request.user,
                    &request.reason,
                    &request.requested_by,
                    &key,
                ],
            )
            .await?;
        if let (1, Some(signer)) = (inserted, &self.signer) {
            let verifying = signer.verifying_key();
            client
                .execute(
                    "INSERT INTO chain_keys (key_id, public_key) VALUES ($1, $2) \
                     ON CONFLICT (key_id) DO NOTHING",
                    &[&key_id(&verifying), &verifying.as_bytes().as_slice()],
                )
                .await?;
        }
        let row = client
            .query_one(
                &format!(
                    "SELECT {RECORD_COLUMNS} FROM erasures WHERE tenant_id = $1 AND pseudonym = $2"
                ),
                &[&request.tenant, &pseudonym],
            )
            .await?;
        Ok((ErasureRecord::from_row(&row)?, inserted == 1))
    }

    /// Requests and runs the erasure to its end (see [`Eraser::run`]).
    pub async fn erase(
        &self,
        client: &mut Client,
        request: &ErasureRequest,
    ) -> Result<ErasureRecord, ErasureError> {
        let (record, _) = self.request(client, request).await?;
        self.run(client, record.id).await
    }

    /// Finishes every pending erasure (after a crash, or one another instance
    /// left): answers the records finished.
    pub async fn resume_pending(
        &self,
        client: &mut Client,
    ) -> Result<Vec<ErasureRecord>, ErasureError> {
        let ids: Vec<Uuid> = client
            .query(
                "SELECT id FROM erasures WHERE state = 'pending' ORDER BY requested_at, id",
                &[],
            )
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        let mut done = Vec::with_capacity(ids.len());
        for id in ids {
            let record = self.run(client, id).await?;
            tracing::info!(erasure = %id, rows = record.total_rows(), "resumed erasure finished");
            done.push(record);
        }
        Ok(done)
    }

    /// Runs erasure `id` batch by batch until it is done (a done erasure is
    /// answered as it is: a no-op). With the test hook
    /// [`Eraser::with_max_batches`], stops after that many batches with
    /// [`ErasureError::Blocked`], the erasure still pending.
    pub async fn run(&self, client: &mut Client, id: Uuid) -> Result<ErasureRecord, ErasureError> {
        let mut batches: u64 = 0;
        let mut polls: u32 = 0;
        let mut rejected_cursor: i64 = i64::MIN;
        loop {
            if self.max_batches.is_some_and(|max| batches >= max) {
                return Err(ErasureError::Blocked {
                    id,
                    why: format!("stopped after {batches} batches (test hook)"),
                });
            }
            let tx = client.transaction().await?;
            let Some(row) = tx
                .query_opt(
                    "SELECT tenant_id, pseudonym, subject, state, reason, requested_by \
                     FROM erasures WHERE id = $1 FOR UPDATE",
                    &[&id],
                )
                .await?
            else {
                return Err(ErasureError::NotFound(id));
            };
            let target = Target {
                id,
                tenant: row.try_get(0)?,
                pseudonym: row.try_get(1)?,
                subject: row.try_get::<_, Option<String>>(2)?.unwrap_or_default(),
                reason: row.try_get(4)?,
                requested_by: row.try_get(5)?,
            };
            let state: String = row.try_get(3)?;
            if state == "done" {
                tx.commit().await?;
                return load(client, id).await;
            }
            if target.subject.is_empty() {
                return Err(ErasureError::Db(PgError::Integrity(format!(
                    "the pending erasure {id} has no subject"
                ))));
            }
            match self.step(&tx, &target, &mut rejected_cursor).await? {
                Step::Erased(table, rows) => {
                    add_count(&tx, id, table, rows).await?;
                    tx.commit().await?;
                    batches += 1;
                    polls = 0;
                }
                Step::WaitForChain => {
                    tx.rollback().await?;
                    polls += 1;
                    if polls > CHAIN_POLLS {
                        return Err(ErasureError::Blocked {
                            id,
                            why: "rows stored before canonical form v3 are not chained yet: \
                                  is the chainer running?"
                                .to_owned(),
                        });
                    }
                    tokio::time::sleep(CHAIN_POLL).await;
                }
                Step::Finished => {
                    let archives = match &self.archive_dir {
                        Some(dir) => {
                            let (dir, tenant, user) =
                                (dir.clone(), target.tenant.clone(), target.subject.clone());
                            tokio::task::spawn_blocking(move || {
                                archives_holding(&dir, &tenant, &user)
                            })
                            .await
                            .map_err(|e| ErasureError::Blocked {
                                id,
                                why: format!("the archive search stopped: {e}"),
                            })?
                            .map_err(|e| ErasureError::Blocked {
                                id,
                                why: format!("cannot search the archives: {e}"),
                            })?
                        }
                        None => Vec::new(),
                    };
                    finish(&tx, &target, &archives).await?;
                    tx.commit().await?;
                    let record = load(client, id).await?;
                    tracing::info!(
                        erasure = %id,
                        tenant = %record.tenant_id,
                        pseudonym = %record.pseudonym,
                        rows = record.total_rows(),
                        "erasure done"
                    );
                    return Ok(record);
                }
            }
        }
    }

    /// Resumes the pending erasures on its own connection to `url` every
    /// `interval` until `shutdown` becomes `true` or its sender is dropped
    /// (failures are logged and retried): what a crashed instance left, another
    /// or the restarted one finishes.
    pub fn spawn(
        self,
        url: String,
        interval: Duration,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let eraser = self;
        crate::postgres::periodic::spawn_periodically(
            "erasure",
            url,
            interval,
            shutdown,
            move |client| {
                let eraser = eraser.clone();
                Box::pin(async move {
                    match eraser.resume_pending(client).await {
                        Ok(_) => Ok(false),
                        Err(ErasureError::Db(error)) => Err(error),
                        Err(other) => {
                            tracing::warn!(error = %other, "a pending erasure cannot go on yet");
                            Ok(false)
                        }
                    }
                })
            },
        )
    }

    /// One batch of the first raw table that still holds the user.
    async fn step(
        &self,
        tx: &Transaction<'_>,
        target: &Target,
        rejected_cursor: &mut i64,
    ) -> Result<Step, ErasureError> {
        let erased = self.activity_batch(tx, target).await?;
        if erased > 0 {
            return Ok(Step::Erased("activity_events", erased));
        }
        let left: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM activity_events WHERE tenant_id = $1 AND user_id = $2)",
                &[&target.tenant, &target.subject],
            )
            .await?
            .try_get(0)?;
        if left {
            return Ok(Step::WaitForChain);
        }
        let erased = tx
            .execute(
                "UPDATE token_usage AS t SET user_id = $3, session_id = NULL, \
                     attributes = tally_erase_json(t.attributes, $2, $3, $5) \
                 WHERE (t.ts, t.id) IN (SELECT ts, id FROM token_usage \
                     WHERE tenant_id = $1 AND user_id = $2 LIMIT $4)",
                &[
                    &target.tenant,
                    &target.subject,
                    &target.pseudonym,
                    &self.batch_rows,
                    &self.personal.patterns(),
                ],
            )
            .await?;
        if erased > 0 {
            return Ok(Step::Erased("token_usage", count(erased)));
        }
        // The id as it appears inside a JSON string (escaped, without quotes).
        let quoted = serde_json::to_string(&target.subject).unwrap_or_default();
        let needle = quoted
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .unwrap_or(&quoted);
        let rows = tx
            .query(
                "WITH picked AS (SELECT tenant_id, id, seq FROM rejected_events \
                     WHERE tenant_id = $1 AND seq > $5 AND strpos(record::text, $4) > 0 \
                     ORDER BY seq LIMIT $6) \
                 UPDATE rejected_events AS r SET record = tally_erase_json(r.record, $2, $3, $7) \
                 FROM picked WHERE r.tenant_id = picked.tenant_id AND r.id = picked.id \
                 RETURNING picked.seq",
                &[
                    &target.tenant,
                    &target.subject,
                    &target.pseudonym,
                    &needle,
                    &*rejected_cursor,
                    &self.batch_rows,
                    &self.personal.patterns(),
                ],
            )
            .await?;
        if !rows.is_empty() {
            for row in &rows {
                *rejected_cursor = (*rejected_cursor).max(row.try_get(0)?);
            }
            return Ok(Step::Erased("rejected_events", rows.len() as i64));
        }
        Ok(Step::Finished)
    }

    /// Erases up to one batch of the user's activity rows (those of form v1/v2
    /// only once chained); answers how many. In no particular order: the rows
    /// come from the `(user_id, ts)` index, and an erased row no longer matches,
    /// so no batch sorts or skips what earlier batches did.
    async fn activity_batch(
        &self,
        tx: &Transaction<'_>,
        target: &Target,
    ) -> Result<i64, ErasureError> {
        let watermark: i64 = tx
            .query_opt(
                "SELECT last_seq FROM chain_watermark WHERE name = $1",
                &[&CHAIN_WATERMARK],
            )
            .await?
            .map(|row| row.try_get(0))
            .transpose()?
            .unwrap_or(0);
        let rows = tx
            .query(
                &format!(
                    "SELECT {ROW_COLUMNS}, (attributes - tally_personal_keys(attributes, personal_keys))::text \
                     FROM activity_events WHERE tenant_id = $1 AND user_id = $2 \
                         AND (chain_form IS NOT NULL OR seq <= $3) \
                     LIMIT $4"
                ),
                &[
                    &target.tenant,
                    &target.subject,
                    &watermark,
                    &self.batch_rows,
                ],
            )
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut legacy_seqs = Vec::new();
        let mut parsed = Vec::with_capacity(rows.len());
        for row in &rows {
            let chain_row = ChainRow::from_row(row)?;
            let erased_attributes: Option<String> = row.try_get(27)?;
            if chain_row.chain_form.is_none() {
                legacy_seqs.push(chain_row.seq);
            }
            parsed.push((chain_row, erased_attributes));
        }
        let mut links: HashMap<i64, ([u8; 32], Vec<u8>)> = HashMap::new();
        if !legacy_seqs.is_empty() {
            for link in tx
                .query(
                    "SELECT l.seq, l.prev_hash, l.row_hash FROM unnest($2::int8[]) AS s(seq), \
                     LATERAL tally_chain_link($1, s.seq) AS l",
                    &[&target.tenant, &legacy_seqs],
                )
                .await?
            {
                let prev: Vec<u8> = link.try_get(1)?;
                if let Ok(prev) = <[u8; 32]>::try_from(prev.as_slice()) {
                    links.insert(link.try_get(0)?, (prev, link.try_get(2)?));
                }
            }
        }
        let mut ids = Vec::with_capacity(parsed.len());
        let mut times = Vec::with_capacity(parsed.len());
        let mut digests: Vec<Option<Vec<u8>>> = Vec::with_capacity(parsed.len());
        let mut signatures: Vec<Option<Vec<u8>>> = Vec::with_capacity(parsed.len());
        for (row, erased_attributes) in parsed {
            ids.push(row.id);
            times.push(row.ts);
            if row.chain_form == Some(CHAIN_FORM_V3) {
                digests.push(Some(row.personal_digest().to_vec()));
                signatures.push(None);
                continue;
            }
            digests.push(None);
            signatures.push(self.sign_legacy(
                target,
                &row,
                erased_attributes,
                links.get(&row.seq),
            )?);
        }
        let updated = tx
            .execute(
                "UPDATE activity_events AS a SET user_id = $3, session_id = NULL, \
                     attributes = a.attributes - tally_personal_keys(a.attributes, a.personal_keys), \
                     chain_salt = NULL, erasure_id = $4, erased_digest = u.d, \
                     erased_signature = u.s \
                 FROM unnest($5::uuid[], $6::timestamptz[], $7::bytea[], $8::bytea[]) \
                     AS u(id, ts, d, s) \
                 WHERE a.tenant_id = $1 AND a.ts = u.ts AND a.id = u.id AND a.user_id = $2",
                &[
                    &target.tenant,
                    &target.subject,
                    &target.pseudonym,
                    &target.id,
                    &ids,
                    &times,
                    &digests,
                    &signatures,
                ],
            )
            .await?;
        Ok(count(updated))
    }

    /// The signature over an erased row stored before canonical form v3, or
    /// `None` when the row no longer matched its link before the erasure (it
    /// was altered earlier: verification keeps reporting it).
    fn sign_legacy(
        &self,
        target: &Target,
        row: &ChainRow,
        erased_attributes: Option<String>,
        link: Option<&([u8; 32], Vec<u8>)>,
    ) -> Result<Option<Vec<u8>>, ErasureError> {
        let Some(signer) = &self.signer else {
            return Err(ErasureError::Blocked {
                id: target.id,
                why: "rows stored before canonical form v3 are signed when erased, and this \
                      eraser has no signing key"
                    .to_owned(),
            });
        };
        let Some((prev, link_hash)) = link else {
            tracing::warn!(
                erasure = %target.id,
                seq = row.seq,
                "an activity row at or below the chain watermark has no link: erased unsigned"
            );
            return Ok(None);
        };
        if row_hash(prev, &row.canonical()).as_slice() != link_hash.as_slice() {
            tracing::warn!(
                erasure = %target.id,
                seq = row.seq,
                "an activity row no longer matched its chained hash before the erasure: erased \
                 unsigned (verify keeps reporting it)"
            );
            return Ok(None);
        }
        let mut erased = row.clone();
        erased.user_id = Some(target.pseudonym.clone());
        erased.session_id = None;
        erased.attributes = erased_attributes;
        let message = erased_row_message(
            &target.tenant,
            row.seq,
            link_hash,
            &erased.canonical(),
            target.id,
        );
        Ok(Some(signer.sign(&message).to_bytes().to_vec()))
    }
}

/// The erasure a batch works on.
pub(super) struct Target {
    pub(super) id: Uuid,
    pub(super) tenant: String,
    pub(super) pseudonym: String,
    pub(super) subject: String,
    pub(super) reason: String,
    pub(super) requested_by: String,
}

pub(super) fn count(rows: u64) -> i64 {
    i64::try_from(rows).unwrap_or(i64::MAX)
}

async fn load(client: &Client, id: Uuid) -> Result<ErasureRecord, ErasureError> {
    let row = client
        .query_opt(
            &format!("SELECT {RECORD_COLUMNS} FROM erasures WHERE id = $1"),
            &[&id],
        )
        .await?
        .ok_or(ErasureError::NotFound(id))?;
    Ok(ErasureRecord::from_row(&row)?)
}

pub(super) async fn add_count(
    tx: &Transaction<'_>,
    id: Uuid,
    table: &str,
    rows: i64,
) -> Result<(), ErasureError> {
    tx.execute(
        "UPDATE erasures SET counts = jsonb_set(counts, ARRAY[$2::text], \
             to_jsonb(coalesce((counts ->> $2::text)::bigint, 0) + $3)) WHERE id = $1",
        &[&id, &table, &rows],
    )
    .await?;
    Ok(())
}
