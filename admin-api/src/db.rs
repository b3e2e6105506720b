//! The admin API's database connections, each scoped to the caller's tenant.
//!
//! Every connection takes the role `tally_api` when it opens (`SET ROLE`); under
//! that role PostgreSQL's forced row-level security (see the exporters'
//! `row_security.sql`) shows only the rows of the tenant named by the session
//! setting `tally.tenant` (and, for a `self:read` caller, only the rows of the
//! user in `tally.user`). Each checkout sets both, so a query sees another
//! tenant's (or user's) rows only if the API's own filters *and* the database's
//! policies both fail.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use deadpool_postgres::{HookError, Object, Pool, PoolError};

use crate::auth::TenantAccess;
use crate::error::ApiError;
use crate::fair::{FairGate, Permit, CALLER};

/// The role the admin API's connections take (created by `tally migrate`).
pub use tally_exporters::postgres::API_ROLE;

/// How long a request waits for the gate when the pool sets no wait timeout.
const GATE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The `tally.tenant` value of a connection that may see no tenant's rows.
const NO_TENANT: &str = "";

/// Sets the tenant (and, for a `self:read` caller, the user; `''` = any)
/// whose rows the connection's queries may see.
const SET_TENANT_SQL: &str =
    "SELECT set_config('tally.tenant', $1, false), set_config('tally.user', $2, false)";

/// The pool of the admin API: hands out connections scoped to a tenant.
#[derive(Clone)]
pub(crate) struct TenantPool {
    pool: Pool,
    /// Shares the connections fairly between requests ([`crate::fair`]).
    gate: Arc<FairGate>,
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
    pub(crate) fn build(
        builder: deadpool_postgres::PoolBuilder,
    ) -> Result<TenantPool, deadpool_postgres::BuildError> {
        // Whether the last connection took the role: warn once when one cannot.
        let flag = Arc::new(AtomicBool::new(true));
        let pool = builder
            .post_create(deadpool_postgres::Hook::async_fn(move |client, _| {
                let flag = flag.clone();
                Box::pin(async move {
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
        let gate = FairGate::new(pool.status().max_size);
        Ok(TenantPool { pool, gate })
    }

    /// A connection whose queries see `tenant`'s rows only.
    pub(crate) async fn get_for(&self, tenant: &TenantAccess) -> Result<Connection, ApiError> {
        let (tenant, user) = tenant.settings();
        self.checkout(tenant, user)
            .await
            .map_err(ApiError::from_pool)
    }

    /// A connection that sees no tenant's rows: for the tables without tenants
    /// and for health checks.
    pub(crate) async fn get(&self) -> Result<Connection, PoolError> {
        self.checkout(NO_TENANT, "").await
    }

    async fn checkout(&self, tenant: &str, user: &str) -> Result<Connection, PoolError> {
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
        let statement = client
            .prepare_cached(SET_TENANT_SQL)
            .await
            .map_err(PoolError::Backend)?;
        client
            .execute(&statement, &[&tenant, &user])
            .await
            .map_err(PoolError::Backend)?;
        Ok(Connection {
            client,
            _permit: permit,
        })
    }
}
