//! The admin API's database connections, each scoped to the caller's tenant.
//!
//! Every connection takes the role `tally_api` when it opens (`SET ROLE`); under
//! that role PostgreSQL's forced row-level security (see the exporters'
//! `row_security.sql`) shows only the rows of the tenant named by the session
//! setting `tally.tenant` (and, for a `self:read` caller, only the rows of the
//! user in `tally.user`). Each checkout sets both, so a query sees another
//! tenant's (or user's) rows only if the API's own filters *and* the database's
//! policies both fail.
//!
//! Each checkout also sets the connection's `statement_timeout`: inside a request,
//! what is left of the request's deadline (`admin_api.limits.request_timeout_ms`,
//! see [`DEADLINE`]), so that SQL never outlives the 504 of its request; outside a
//! request (live feeds' readers, health checks) and for a streamed `/export`, the
//! connection's own (the URL's `options`, else 30 s). A request of the heavy lane
//! ([`crate::fair`]) that takes its connection while other heavy requests wait gets
//! at most [`HEAVY_TURN`] (5 s): the lane is shared in turns.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{HookError, Object, Pool, PoolError};

use crate::caller::TenantAccess;
use crate::dbtime::DbTimeBudget;
use crate::error::ApiError;
use crate::fair::{FairGate, Permit, CALLER, HEAVY_TURN};

/// The role the admin API's connections take (created by `tally migrate`).
pub use tally_exporters::postgres::API_ROLE;

/// How long a request waits for the gate when the pool sets no wait timeout.
const GATE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The `tally.tenant` value of a connection that may see no tenant's rows.
const NO_TENANT: &str = "";

/// Sets the tenant (and, for a `self:read` caller, the user; `''` = any)
/// whose rows the connection's queries may see, and the statement timeout (ms).
const SET_TENANT_SQL: &str = "SELECT set_config('tally.tenant', $1, false), \
     set_config('tally.user', $2, false), set_config('statement_timeout', $3, false)";

/// The connection's own `statement_timeout` (ms, 0 = none), read once when it opens.
const BASE_TIMEOUT_SQL: &str =
    "SELECT setting::bigint FROM pg_settings WHERE name = 'statement_timeout'";

tokio::task_local! {
    /// When the current request is answered 504 (set by [`crate::limits::enforce`]).
    pub(crate) static DEADLINE: tokio::time::Instant;
}

/// Whether the current request's deadline has passed (`false` outside a request).
pub(crate) fn past_deadline() -> bool {
    DEADLINE
        .try_with(|deadline| tokio::time::Instant::now() >= *deadline)
        .unwrap_or(false)
}

/// The `statement_timeout` (ms) of a checkout: the connection's own (`base`, 0 =
/// none), cut to what is `left` of the request's deadline (at least 1 ms).
fn statement_timeout_ms(base: i64, left: Option<Duration>) -> i64 {
    match left {
        None => base,
        Some(left) => {
            let left = i64::try_from(left.as_millis()).unwrap_or(i64::MAX).max(1);
            if base <= 0 {
                left
            } else {
                base.min(left)
            }
        }
    }
}

/// Whether a checkout's statements are bound by the request's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bound {
    /// By what is left of the request's deadline (when in a request).
    Deadline,
    /// By the connection's own statement timeout only (a streamed body that
    /// outlives the request's deadline by design).
    Connection,
}

/// The pool of the admin API: hands out connections scoped to a tenant.
#[derive(Clone)]
pub(crate) struct TenantPool {
    pool: Pool,
    /// Shares the connections fairly between requests ([`crate::fair`]).
    gate: Arc<FairGate>,
    /// The connections' own `statement_timeout` in ms (0 = none, -1 until one
    /// connection opened).
    base_timeout_ms: Arc<AtomicI64>,
}

/// A pooled connection and, inside a request, its leave from the [`FairGate`]
/// (both given back when dropped).
pub(crate) struct Connection {
    client: Object,
    _permit: Option<Permit>,
}

impl std::ops::Deref for Connection {
    type Target = Object;

    fn deref(&self) -> &Object {
        &self.client
    }
}

impl std::ops::DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut Object {
        &mut self.client
    }
}

impl TenantPool {
    /// Wraps `builder`'s pool, adding the hook that takes [`API_ROLE`] on each new connection.
    /// The gate's heavy lane is busy at most `heavy_duty_percent` of the time
    /// while light requests are served ([`crate::fair`]).
    /// Each connection's hold is charged to its caller's `budget` ([`crate::dbtime`]).
    pub(crate) fn build(
        builder: deadpool_postgres::PoolBuilder,
        heavy_duty_percent: u8,
        budget: Arc<DbTimeBudget>,
    ) -> Result<TenantPool, deadpool_postgres::BuildError> {
        // Whether the last connection took the role: warn once when one cannot.
        let flag = Arc::new(AtomicBool::new(true));
        let base_timeout_ms = Arc::new(AtomicI64::new(-1));
        let base = base_timeout_ms.clone();
        let pool = builder
            .post_create(deadpool_postgres::Hook::async_fn(move |client, _| {
                let flag = flag.clone();
                let base = base.clone();
                Box::pin(async move {
                    // What every checkout outside a request sets back.
                    let row = client
                        .query_one(BASE_TIMEOUT_SQL, &[])
                        .await
                        .map_err(HookError::Backend)?;
                    let ms: i64 = row.try_get(0).map_err(HookError::Backend)?;
                    base.store(ms, Ordering::Relaxed);
                    // The API's statements are short by design; a misestimated
                    // row count (the unfolded tail's `seq > watermark` is
                    // guessed at a third of the table) made PostgreSQL compile
                    // them with JIT, which cost far more than running them
                    // (docs/performance.md).
                    client
                        .batch_execute("SET jit = off")
                        .await
                        .map_err(HookError::Backend)?;
                    match client
                        .batch_execute(&format!("SET ROLE {API_ROLE}"))
                        .await
                    {
                        Ok(()) => {
                            flag.store(true, Ordering::Relaxed);
                            Ok(())
                        }
                        Err(error) if error.code().is_some() => {
                            // The server answered: the role is missing or not ours.
                            if flag.swap(false, Ordering::Relaxed) {
                                tracing::warn!(
                                    error = %error,
                                    "admin API cannot take the role {API_ROLE}: tenant isolation relies on the API's filters alone (run `tally migrate` as a user that may create roles)"
                                );
                            }
                            Ok(())
                        }
                        Err(error) => Err(HookError::Backend(error)),
                    }
                })
            }))
            .build()?;
        let gate = FairGate::new(pool.status().max_size, heavy_duty_percent, budget);
        Ok(TenantPool {
            pool,
            gate,
            base_timeout_ms,
        })
    }

    /// A connection whose queries see `tenant`'s rows only.
    pub(crate) async fn get_for(&self, tenant: &TenantAccess) -> Result<Connection, ApiError> {
        self.get_bound(tenant, Bound::Deadline).await
    }

    /// [`TenantPool::get_for`] with the statements bound as `bound` says.
    pub(crate) async fn get_bound(
        &self,
        tenant: &TenantAccess,
        bound: Bound,
    ) -> Result<Connection, ApiError> {
        let (tenant, user) = tenant.settings();
        self.checkout(tenant, user, bound)
            .await
            .map_err(ApiError::from_pool)
    }

    /// A connection that sees no tenant's rows: for the tables without tenants
    /// and for health checks.
    pub(crate) async fn get(&self) -> Result<Connection, PoolError> {
        self.checkout(NO_TENANT, "", Bound::Deadline).await
    }

    async fn checkout(
        &self,
        tenant: &str,
        user: &str,
        bound: Bound,
    ) -> Result<Connection, PoolError> {
        // Inside a request: wait for the gate, as long as the pool would wait.
        let permit = match CALLER.try_with(Arc::clone) {
            Ok(caller) => {
                let wait = self.pool.timeouts().wait.unwrap_or(GATE_WAIT);
                match self.gate.enter(caller, wait).await {
                    Some(permit) => Some(permit),
                    None => {
                        return Err(PoolError::Timeout(deadpool_postgres::TimeoutType::Wait));
                    }
                }
            }
            Err(_) => None,
        };
        let client = self.pool.get().await?;
        let mut left = match bound {
            Bound::Deadline => DEADLINE
                .try_with(|deadline| {
                    deadline.saturating_duration_since(tokio::time::Instant::now())
                })
                .ok(),
            Bound::Connection => None,
        };
        // A heavy request whose lane others wait for gets a turn, not the whole deadline.
        if let (Some(remaining), Some(permit)) = (left, permit.as_ref()) {
            if permit.heavy_contended() {
                left = Some(remaining.min(HEAVY_TURN));
            }
        }
        // `None` (NULL) sets the connection's own timeout back.
        let base = self.base_timeout_ms.load(Ordering::Relaxed).max(0);
        let timeout = left.map(|left| statement_timeout_ms(base, Some(left)).to_string());
        let statement = client
            .prepare_cached(SET_TENANT_SQL)
            .await
            .map_err(PoolError::Backend)?;
        client
            .execute(&statement, &[&tenant, &user, &timeout])
            .await
            .map_err(PoolError::Backend)?;
        Ok(Connection {
            client,
            _permit: permit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_cuts_the_statement_timeout_to_its_deadline() {
        let ms = Duration::from_millis;
        assert_eq!(statement_timeout_ms(30_000, None), 30_000);
        assert_eq!(statement_timeout_ms(0, None), 0);
        assert_eq!(statement_timeout_ms(30_000, Some(ms(1_500))), 1_500);
        assert_eq!(statement_timeout_ms(1_000, Some(ms(20_000))), 1_000);
        assert_eq!(statement_timeout_ms(0, Some(ms(20_000))), 20_000);
        assert_eq!(
            statement_timeout_ms(30_000, Some(ms(0))),
            1,
            "never 0 (= none)"
        );
    }
}
