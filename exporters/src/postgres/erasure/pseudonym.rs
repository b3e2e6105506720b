//! The keyed pseudonym an erased user's id becomes, and the set of erased
//! users the writer checks new rows against.

use super::*;

/// The keyed pseudonym of `user` in `tenant`: `erased:` and the hex of the first
/// 16 bytes of HMAC-SHA256(key, tenant length (u32 big-endian) ‖ tenant ‖ user).
/// The same user always gets the same pseudonym (rollups merge), and it cannot
/// be reversed or recomputed from a guessed id without the key.
pub fn pseudonym(key: &[u8], tenant: &str, user: &str) -> String {
    let mut out = String::with_capacity(PSEUDONYM_PREFIX.len() + 32);
    out.push_str(PSEUDONYM_PREFIX);
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        // HMAC accepts keys of any length.
        return out;
    };
    let len = u32::try_from(tenant.len()).unwrap_or(u32::MAX);
    mac.update(&len.to_be_bytes());
    mac.update(tenant.as_bytes());
    mac.update(user.as_bytes());
    out.push_str(&hex(&mac.finalize().into_bytes()[..16]));
    out
}

/// The users whose erasure is pending or ended within the attribution window,
/// as the writers see them: a token row attributed through its trace
/// (`attribution_source = 'trace'`) from an identity an instance's in-memory
/// trace cache learned before the erasure is written with the pseudonym, never
/// the clear id. Every instance checks the shared `erasures` table in the
/// transaction that writes the rows (one indexed look-up per batch holding such
/// rows), so it does not matter which instance ran the erasure. After the
/// window no cache entry learned before the erasure is left; a user who comes
/// back within it has their trace-attributed token rows pseudonymised too.
#[derive(Clone)]
pub struct ErasedUsers {
    key: std::sync::Arc<[u8]>,
    window: Duration,
}

impl std::fmt::Debug for ErasedUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ErasedUsers")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl ErasedUsers {
    /// Pseudonyms under `key` (the erasure key); `window` is the attribution
    /// window (`processors.tokens.attribution_window_secs`).
    pub fn new(key: Vec<u8>, window: Duration) -> ErasedUsers {
        ErasedUsers {
            key: key.into(),
            window,
        }
    }

    /// Of the (tenant, user) pairs, those erased recently (pending, or done
    /// within the window), each with its pseudonym.
    pub async fn recently_erased<C: tokio_postgres::GenericClient>(
        &self,
        client: &C,
        pairs: &[(String, String)],
    ) -> Result<HashMap<(String, String), String>, PgError> {
        if pairs.is_empty() {
            return Ok(HashMap::new());
        }
        let mut by_pseudonym: HashMap<(String, String), (String, String)> = HashMap::new();
        for (tenant, user) in pairs {
            if user.starts_with(PSEUDONYM_PREFIX) {
                continue;
            }
            by_pseudonym.insert(
                (tenant.clone(), pseudonym(&self.key, tenant, user)),
                (tenant.clone(), user.clone()),
            );
        }
        if by_pseudonym.is_empty() {
            return Ok(HashMap::new());
        }
        let (tenants, pseudonyms): (Vec<&str>, Vec<&str>) = by_pseudonym
            .keys()
            .map(|(t, p)| (t.as_str(), p.as_str()))
            .unzip();
        let window = self.window.as_secs_f64();
        let rows = client
            .query(
                "SELECT e.tenant_id, e.pseudonym FROM erasures e \
                 JOIN unnest($1::text[], $2::text[]) AS x(t, p) \
                     ON e.tenant_id = x.t AND e.pseudonym = x.p \
                 WHERE e.state = 'pending' \
                    OR e.completed_at > now() - make_interval(secs => $3)",
                &[&tenants, &pseudonyms, &window],
            )
            .await?;
        let mut erased = HashMap::with_capacity(rows.len());
        for row in &rows {
            let key: (String, String) = (row.try_get(0)?, row.try_get(1)?);
            if let Some(pair) = by_pseudonym.remove(&key) {
                erased.insert(pair, key.1);
            }
        }
        Ok(erased)
    }

    /// The token rows of a batch attributed through their trace to a recently
    /// erased user, by index, rewritten with the pseudonym (and no session).
    pub(crate) async fn pseudonymise_tokens<C: tokio_postgres::GenericClient>(
        &self,
        client: &C,
        rows: &[(&tally_model::TokenUsage, Option<Uuid>)],
    ) -> Result<Vec<(usize, tally_model::TokenUsage)>, PgError> {
        let traced = |t: &tally_model::TokenUsage| {
            t.attribution_source == tally_model::AttributionSource::Trace
        };
        let pairs: Vec<(String, String)> = rows
            .iter()
            .filter(|(t, _)| traced(t))
            .filter_map(|(t, _)| {
                let user = t.user_id.clone()?;
                Some((t.tenant_id.clone().unwrap_or_default(), user))
            })
            .collect();
        let erased = self.recently_erased(client, &pairs).await?;
        if erased.is_empty() {
            return Ok(Vec::new());
        }
        let mut replaced = Vec::new();
        for (index, (row, _)) in rows.iter().enumerate() {
            let Some(user) = row.user_id.as_ref().filter(|_| traced(row)) else {
                continue;
            };
            let pair = (row.tenant_id.clone().unwrap_or_default(), user.clone());
            if let Some(pseudonym) = erased.get(&pair) {
                let mut row = (*row).clone();
                row.user_id = Some(pseudonym.clone());
                row.session_id = None;
                replaced.push((index, row));
            }
        }
        Ok(replaced)
    }

    /// `traces` with the identities of recently erased users replaced by their
    /// pseudonym (and no session): what the stored rows are attributed to.
    pub async fn pseudonymise_attributions<C: tokio_postgres::GenericClient>(
        &self,
        client: &C,
        traces: &[crate::postgres::TraceAttribution],
    ) -> Result<Vec<crate::postgres::TraceAttribution>, PgError> {
        let pairs: Vec<(String, String)> = traces
            .iter()
            .filter_map(|t| {
                let user = t.identity.user_id.clone()?;
                Some((t.identity.tenant_id.clone().unwrap_or_default(), user))
            })
            .collect();
        let erased = self.recently_erased(client, &pairs).await?;
        Ok(traces
            .iter()
            .map(|trace| {
                let mut trace = trace.clone();
                if let Some(user) = &trace.identity.user_id {
                    let pair = (
                        trace.identity.tenant_id.clone().unwrap_or_default(),
                        user.clone(),
                    );
                    if let Some(pseudonym) = erased.get(&pair) {
                        trace.identity.user_id = Some(pseudonym.clone());
                        trace.identity.session_id = None;
                    }
                }
                trace
            })
            .collect())
    }
}
