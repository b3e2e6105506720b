//! A private PostgreSQL server run from the binaries found on the machine: the
//! zero-set-up mode (no database URL configured) and the test fallback.
//!
//! Layout of the data folder:
//! * `pgdata/` — the cluster (`initdb`'d on first start; unix socket here too),
//! * `port` — the TCP port, kept stable across restarts,
//! * `superuser.password`, `tally.password` — the generated passwords of the
//!   bootstrap superuser and of Tally's own role (mode 0600),
//! * `postgres.log` — the server log, `tally-pg.lock` — start-up lock.
//!
//! The server is locked: it listens on 127.0.0.1 and its Unix socket only, and
//! every connection must give a password (SCRAM-SHA-256, `pg_hba.conf` written
//! by Tally). Tally connects as the role `tally`, which owns the database and its
//! schema but is not a superuser: it cannot read `pg_authid`, run programs
//! (`COPY … TO PROGRAM`) or read server files. The superuser's password is used
//! only at start, to create the roles and hand over ownership. A data folder made
//! by an older version (trust authentication, everything owned by the superuser)
//! is upgraded in place on its first start.
//!
//! Over 600 lines: one job, a private server's life cycle (find the binaries, initdb, start, lock, stop), much of it platform handling.

use std::ffi::{CStr, CString, OsStr};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use tokio::process::Command;
use tokio::time::Instant;

use super::{connect, PgError};

const START_TIMEOUT_SECS: u32 = 60;
const READY_DEADLINE: Duration = Duration::from_secs(30);
const DATABASE: &str = "tally";
const SUPERUSER: &str = "postgres";
/// The role Tally connects as: owner of the database `tally`, not a superuser.
pub const OWNER_ROLE: &str = "tally";
/// The admin API's read role (see the exporters' `row_security.sql`).
const API_ROLE: &str = super::API_ROLE;
const SUPERUSER_PASSWORD_FILE: &str = "superuser.password";
const OWNER_PASSWORD_FILE: &str = "tally.password";
/// First line of the `pg_hba.conf` Tally writes: its absence marks a data folder
/// from a version that trusted every local connection.
const HBA_MARKER: &str = "# Tally: password (SCRAM) authentication only";

/// A PostgreSQL server in a data folder of Tally's own, listening on 127.0.0.1.
///
/// The server runs detached: dropping this handle without [`stop`](Self::stop)
/// leaves it running, and the next [`start`](Self::start) reuses it.
#[derive(Debug)]
pub struct PrivatePostgres {
    data_dir: PathBuf,
    pgdata: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    /// (uid, gid) the server runs as when we are root.
    run_as: Option<(u32, u32)>,
    started_by_us: bool,
    superuser_password: Password,
    owner_password: Password,
}

/// A generated password; `Debug` does not show it.
#[derive(Clone)]
struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

impl std::fmt::Display for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PrivatePostgres {
    /// Starts (or reuses) the private server for `data_dir`.
    ///
    /// Finds `initdb`/`pg_ctl`/`postgres` on `PATH`, else in the highest
    /// `/usr/lib/postgresql/*/bin`; `initdb`s `data_dir/pgdata` if new (SCRAM
    /// password authentication, superuser `postgres` with a generated password);
    /// starts the server on 127.0.0.1 at the port remembered in `data_dir/port`
    /// (another free one if taken); waits until it accepts connections; locks an
    /// older, trusting data folder (password set, `pg_hba.conf` rewritten,
    /// configuration reloaded); creates the roles `tally` and `tally_api` and the
    /// database `tally` owned by `tally` if missing, and hands `tally` whatever
    /// the superuser still owns in it.
    /// A server already running from this folder is reused (and left running by
    /// [`stop`](Self::stop)). As root, the server runs as the `postgres` system
    /// user (else `nobody`), which then owns the folder. Concurrent starts on the
    /// same folder (several processes) are serialised by a file lock.
    pub async fn start(data_dir: &Path) -> Result<PrivatePostgres, PgError> {
        let data_dir = std::path::absolute(data_dir)
            .map_err(|e| PgError::io(format!("resolving {}", data_dir.display()), e))?;
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| PgError::io(format!("creating {}", data_dir.display()), e))?;
        let lock_path = data_dir.join("tally-pg.lock");
        let _lock = tokio::task::spawn_blocking(move || lock_exclusive(&lock_path))
            .await
            .map_err(|e| PgError::Embedded(format!("lock task failed: {e}")))??;

        let pgdata = data_dir.join("pgdata");
        let bin_dir = find_bin_dir(&pgdata)?;
        let run_as = if is_root() {
            let ids = system_user()?;
            std::os::unix::fs::chown(&data_dir, Some(ids.0), Some(ids.1))
                .map_err(|e| PgError::io(format!("chown {}", data_dir.display()), e))?;
            Some(ids)
        } else {
            None
        };
        if let Some((uid, gid)) = run_as {
            check_reachable(&data_dir, uid, gid).await?;
        }
        let superuser_password =
            read_or_create_password(&data_dir.join(SUPERUSER_PASSWORD_FILE), run_as)?;
        let owner_password = read_or_create_password(&data_dir.join(OWNER_PASSWORD_FILE), None)?;
        let mut server = PrivatePostgres {
            data_dir,
            pgdata,
            bin_dir,
            port: 0,
            run_as,
            started_by_us: false,
            superuser_password,
            owner_password,
        };

        if !server.pgdata.join("PG_VERSION").is_file() {
            server.initdb().await?;
        }
        if let Some(port) = server.running_port().await? {
            server.port = port;
            tracing::info!(
                data_dir = %server.data_dir.display(),
                port,
                "reusing the private PostgreSQL already running from this data folder"
            );
        } else {
            server.launch().await?;
            server.started_by_us = true;
        }
        server.lock_authentication().await?;
        server.create_roles_and_database().await?;
        tracing::info!(
            data_dir = %server.data_dir.display(),
            port = server.port,
            bin_dir = %server.bin_dir.display(),
            "using a private PostgreSQL (no database URL configured; set TALLY_DATABASE_URL \
             or exporters.postgres.url to use your own)"
        );
        Ok(server)
    }

    /// `postgres://tally:PASSWORD@127.0.0.1:PORT/tally`: Tally's own role, owner
    /// of the database, not a superuser.
    pub fn url(&self) -> String {
        format!(
            "postgres://{OWNER_ROLE}:{}@127.0.0.1:{}/{DATABASE}",
            self.owner_password, self.port
        )
    }

    /// `postgres://postgres:PASSWORD@127.0.0.1:PORT/postgres`: the bootstrap
    /// superuser on the maintenance database (the test harness creates its
    /// databases with it; Tally itself never runs with it).
    pub fn superuser_url(&self) -> String {
        self.url_for("postgres")
    }

    /// The data folder given to [`start`](Self::start), made absolute.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether this handle started the server (and so stops it).
    pub fn started_here(&self) -> bool {
        self.started_by_us
    }

    /// Stops the server with a fast shutdown if this handle started it.
    pub async fn stop(self) -> Result<(), PgError> {
        if !self.started_by_us {
            return Ok(());
        }
        let pgdata = self.pgdata.clone();
        let output = self
            .run(
                "pg_ctl",
                &[
                    OsStr::new("stop"),
                    OsStr::new("-D"),
                    pgdata.as_os_str(),
                    OsStr::new("-m"),
                    OsStr::new("fast"),
                    OsStr::new("-w"),
                    OsStr::new("-t"),
                    OsStr::new(&START_TIMEOUT_SECS.to_string()),
                ],
            )
            .await?;
        if !output.status.success() {
            return Err(PgError::Embedded(format!(
                "pg_ctl stop failed: {}",
                output_text(&output)
            )));
        }
        tracing::info!(data_dir = %self.data_dir.display(), "private PostgreSQL stopped");
        Ok(())
    }

    fn url_for(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            self.superuser_password, self.port
        )
    }

    async fn run(&self, program: &str, args: &[&OsStr]) -> Result<Output, PgError> {
        let path = self.bin_dir.join(program);
        let mut command = Command::new(&path);
        command
            .args(args)
            .current_dir(&self.data_dir)
            .env("LC_ALL", "C")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(false);
        if let Some((uid, gid)) = self.run_as {
            // std clears the supplementary groups when it changes the uid.
            command.uid(uid).gid(gid);
        }
        command
            .output()
            .await
            .map_err(|e| PgError::io(format!("running {}", path.display()), e))
    }

    async fn initdb(&self) -> Result<(), PgError> {
        tracing::info!(pgdata = %self.pgdata.display(), "initialising private PostgreSQL data folder");
        let pwfile = self.data_dir.join(SUPERUSER_PASSWORD_FILE);
        let output = self
            .run(
                "initdb",
                &[
                    OsStr::new("-D"),
                    self.pgdata.as_os_str(),
                    OsStr::new("-U"),
                    OsStr::new(SUPERUSER),
                    OsStr::new("--pwfile"),
                    pwfile.as_os_str(),
                    OsStr::new("--auth-local=scram-sha-256"),
                    OsStr::new("--auth-host=scram-sha-256"),
                    OsStr::new("--encoding=UTF8"),
                    OsStr::new("--locale=C"),
                ],
            )
            .await?;
        if !output.status.success() {
            let hint = if self.run_as.is_some() {
                " (running as root: the data folder and every folder above it must be \
                 accessible to the user the server runs as)"
            } else {
                ""
            };
            return Err(PgError::Embedded(format!(
                "initdb failed{hint}: {}",
                output_text(&output)
            )));
        }
        // Settings Tally rewrites at each start (port, addresses, socket).
        let conf = self.pgdata.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)
            .map_err(|e| PgError::io(format!("reading {}", conf.display()), e))?;
        text.push_str(
            "\n# Tally: listen address, port and socket folder\ninclude_if_exists = 'tally.conf'\n",
        );
        std::fs::write(&conf, text)
            .map_err(|e| PgError::io(format!("writing {}", conf.display()), e))?;
        self.write_hba()
    }

    /// Writes Tally's `pg_hba.conf`: a password for every connection, over the
    /// Unix socket or loopback TCP; nothing else is accepted.
    fn write_hba(&self) -> Result<(), PgError> {
        let text = format!(
            "{HBA_MARKER}\n\
             # Written by Tally. The passwords are in the data folder (mode 0600).\n\
             # TYPE  DATABASE  USER  ADDRESS       METHOD\n\
             local   all       all                 scram-sha-256\n\
             host    all       all   127.0.0.1/32  scram-sha-256\n"
        );
        self.write_owned("pg_hba.conf", &text)
    }

    /// Writes `name` in the data folder, owned by the user the server runs as.
    fn write_owned(&self, name: &str, text: &str) -> Result<(), PgError> {
        let path = self.pgdata.join(name);
        std::fs::write(&path, text)
            .map_err(|e| PgError::io(format!("writing {}", path.display()), e))?;
        chown_to(&path, self.run_as)
    }

    /// Upgrades a data folder from a version that trusted local connections:
    /// gives the superuser its password, rewrites `pg_hba.conf` and reloads.
    async fn lock_authentication(&self) -> Result<(), PgError> {
        let hba = self.pgdata.join("pg_hba.conf");
        let text = std::fs::read_to_string(&hba)
            .map_err(|e| PgError::io(format!("reading {}", hba.display()), e))?;
        if text.starts_with(HBA_MARKER) {
            return Ok(());
        }
        tracing::warn!(
            pgdata = %self.pgdata.display(),
            "the private PostgreSQL trusted every local connection (data folder from an older \
             version): setting a password and requiring it"
        );
        // A trusting server ignores the password the connection offers.
        let client = self.wait_ready().await?;
        let verifier =
            postgres_protocol::password::scram_sha_256(self.superuser_password.0.as_bytes());
        client
            .batch_execute(&format!(
                "ALTER ROLE {SUPERUSER} PASSWORD {}",
                quote_literal(&verifier)
            ))
            .await?;
        self.write_hba()?;
        client.query_one("SELECT pg_reload_conf()", &[]).await?;
        Ok(())
    }

    /// The port of a server already running from this folder that answers.
    async fn running_port(&self) -> Result<Option<u16>, PgError> {
        let pid_file = self.pgdata.join("postmaster.pid");
        let Ok(text) = std::fs::read_to_string(&pid_file) else {
            return Ok(None);
        };
        let mut lines = text.lines();
        let pid: Option<i32> = lines.next().and_then(|l| l.trim().parse().ok());
        let port: Option<u16> = lines.nth(2).and_then(|l| l.trim().parse().ok());
        let (Some(pid), Some(port)) = (pid, port) else {
            return Ok(None);
        };
        if !process_alive(pid) {
            return Ok(None); // stale: the server removes it on start
        }
        let probe = PrivatePostgres {
            port,
            data_dir: self.data_dir.clone(),
            pgdata: self.pgdata.clone(),
            bin_dir: self.bin_dir.clone(),
            run_as: self.run_as,
            started_by_us: false,
            superuser_password: self.superuser_password.clone(),
            owner_password: self.owner_password.clone(),
        };
        // It may still be starting: wait for it, within the deadline.
        let client = probe.wait_ready().await.map_err(|e| {
            PgError::Embedded(format!(
                "a PostgreSQL server (pid {pid}) holds {} but does not answer on port {port}: {e}",
                self.pgdata.display()
            ))
        })?;
        let row = client.query_one("SHOW data_directory", &[]).await?;
        let dir: String = row.get(0);
        let same = std::fs::canonicalize(&dir).ok() == std::fs::canonicalize(&self.pgdata).ok();
        Ok(same.then_some(port))
    }

    /// Starts the server, choosing another port if the remembered one is taken.
    async fn launch(&mut self) -> Result<(), PgError> {
        let port_file = self.data_dir.join("port");
        let remembered: Option<u16> = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|t| t.trim().parse().ok());
        let mut candidate = remembered.filter(|p| port_free(*p));
        let mut last_error = String::new();
        for _ in 0..3 {
            let port = match candidate.take() {
                Some(p) => p,
                None => free_port()?,
            };
            self.port = port;
            self.write_settings()?;
            let log = self.data_dir.join("postgres.log");
            let output = self
                .run(
                    "pg_ctl",
                    &[
                        OsStr::new("start"),
                        OsStr::new("-D"),
                        self.pgdata.as_os_str(),
                        OsStr::new("-l"),
                        log.as_os_str(),
                        OsStr::new("-w"),
                        OsStr::new("-t"),
                        OsStr::new(&START_TIMEOUT_SECS.to_string()),
                    ],
                )
                .await?;
            if output.status.success() {
                self.wait_ready().await?;
                std::fs::write(&port_file, format!("{port}\n"))
                    .map_err(|e| PgError::io(format!("writing {}", port_file.display()), e))?;
                return Ok(());
            }
            let log_tail = std::fs::read_to_string(&log)
                .map(|t| tail(&t, 2000))
                .unwrap_or_default();
            last_error = format!("{}; log: {log_tail}", output_text(&output));
            if !log_tail.contains("could not bind") && !log_tail.contains("already in use") {
                break; // not a port clash: retrying will not help
            }
            tracing::warn!(
                port,
                "port taken while starting the private PostgreSQL; trying another"
            );
        }
        Err(PgError::Embedded(format!(
            "pg_ctl start failed: {last_error}"
        )))
    }

    fn write_settings(&self) -> Result<(), PgError> {
        let socket_dir = self.pgdata.to_string_lossy().replace('\'', "''");
        // sun_path holds 107 bytes: without room for the socket, TCP only.
        let socket_dir = if socket_dir.len() + 20 < 107 {
            socket_dir
        } else {
            String::new()
        };
        let text = format!(
            "# Written by Tally at each start of its private server.\n\
             listen_addresses = '127.0.0.1'\n\
             port = {}\n\
             unix_socket_directories = '{socket_dir}'\n",
            self.port
        );
        self.write_owned("tally.conf", &text)
    }

    /// Connects to the `postgres` database until it answers or the deadline passes.
    async fn wait_ready(&self) -> Result<tokio_postgres::Client, PgError> {
        let deadline = Instant::now() + READY_DEADLINE;
        let url = self.url_for("postgres");
        loop {
            match connect(&url).await {
                Ok((client, _)) => return Ok(client),
                Err(error) if Instant::now() >= deadline => {
                    return Err(PgError::Timeout(format!(
                        "private PostgreSQL on port {} did not accept connections: {error}",
                        self.port
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Creates `tally` (login, not a superuser) and `tally_api` (no login) if
    /// missing, sets `tally`'s password from its file, creates the database
    /// `tally` owned by `tally`, and hands `tally` what the superuser owns in its
    /// schema (a database made by an older version that connected as superuser).
    async fn create_roles_and_database(&self) -> Result<(), PgError> {
        let client = self.wait_ready().await?;
        let verifier = postgres_protocol::password::scram_sha_256(self.owner_password.0.as_bytes());
        let password = quote_literal(&verifier);
        let exists = client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&OWNER_ROLE])
            .await?
            .is_some();
        // BYPASSRLS: the row-level security policies already leave `tally`
        // unrestricted (`tally_others`), so it gains no row it could not read or
        // write; what it gains is the direct `COPY` into `activity_events`, which
        // PostgreSQL refuses to a role under row security. The admin API's reads
        // `SET ROLE tally_api`, whose own attributes decide: it stays restricted.
        let attributes = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION BYPASSRLS";
        let sql = if exists {
            format!("ALTER ROLE {OWNER_ROLE} {attributes} PASSWORD {password}")
        } else {
            format!("CREATE ROLE {OWNER_ROLE} {attributes} PASSWORD {password}")
        };
        client.batch_execute(&sql).await?;
        let api_exists = client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&API_ROLE])
            .await?
            .is_some();
        if !api_exists {
            client
                .batch_execute(&format!("CREATE ROLE {API_ROLE} NOLOGIN"))
                .await?;
        }
        client
            .batch_execute(&format!("GRANT {API_ROLE} TO {OWNER_ROLE}"))
            .await?;

        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&DATABASE])
            .await?
            .is_some();
        if !exists {
            match client
                .batch_execute(&format!("CREATE DATABASE {DATABASE} OWNER {OWNER_ROLE}"))
                .await
            {
                Ok(()) => tracing::info!(database = DATABASE, "created database"),
                Err(e)
                    if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
                Err(e) => return Err(e.into()),
            }
        }
        client
            .batch_execute(&format!("ALTER DATABASE {DATABASE} OWNER TO {OWNER_ROLE}"))
            .await?;
        drop(client);
        let (client, _) = connect(&self.url_for(DATABASE)).await?;
        client.batch_execute(HAND_OVER_SQL).await?;
        Ok(())
    }
}

/// Run as the superuser in the database `tally`: gives the role `tally` the
/// schema `public` and every table, sequence, view and function the superuser
/// owns in it (indexes, partitions' constraints and owned sequences follow their
/// table). Idempotent; a no-op once done.
const HAND_OVER_SQL: &str = r#"
DO $tally$
DECLARE
    object record;
BEGIN
    SET LOCAL client_min_messages = warning;
    EXECUTE 'ALTER SCHEMA public OWNER TO tally';
    FOR object IN
        SELECT c.oid::regclass AS name, c.relkind
          FROM pg_class c
         WHERE c.relnamespace = 'public'::regnamespace
           AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
           AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO tally',
                       CASE object.relkind WHEN 'v' THEN 'VIEW'
                                           WHEN 'm' THEN 'MATERIALIZED VIEW'
                                           WHEN 'f' THEN 'FOREIGN TABLE'
                                           ELSE 'TABLE' END,
                       object.name);
    END LOOP;
    -- Sequences not owned by a column (those followed their table above).
    FOR object IN
        SELECT c.oid::regclass AS name
          FROM pg_class c
         WHERE c.relnamespace = 'public'::regnamespace
           AND c.relowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
           AND c.relkind = 'S'
    LOOP
        EXECUTE format('ALTER SEQUENCE %s OWNER TO tally', object.name);
    END LOOP;
    FOR object IN
        SELECT p.oid::regprocedure AS name
          FROM pg_proc p
         WHERE p.pronamespace = 'public'::regnamespace
           AND p.proowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
    LOOP
        EXECUTE format('ALTER ROUTINE %s OWNER TO tally', object.name);
    END LOOP;
    FOR object IN
        SELECT t.oid::regtype AS name
          FROM pg_type t
         WHERE t.typnamespace = 'public'::regnamespace
           AND t.typowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
           AND t.typtype IN ('e', 'd')
    LOOP
        EXECUTE format('ALTER TYPE %s OWNER TO tally', object.name);
    END LOOP;
END
$tally$;
"#;

/// `text` as an SQL string literal.
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The password in `path`, or a new random one written there with mode 0600
/// (owned by `owner` when given, so that `initdb --pwfile` can read it).
fn read_or_create_password(path: &Path, owner: Option<(u32, u32)>) -> Result<Password, PgError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => return Ok(Password(text.trim().to_string())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(PgError::io(format!("reading {}", path.display()), e)),
    }
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes)
        .map_err(|e| PgError::Embedded(format!("no randomness for a password: {e}")))?;
    let password = hex::encode(bytes);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| PgError::io(format!("creating {}", path.display()), e))?;
    file.write_all(format!("{password}\n").as_bytes())
        .map_err(|e| PgError::io(format!("writing {}", path.display()), e))?;
    chown_to(path, owner)?;
    Ok(Password(password))
}

/// Hands `path` to `owner` (uid, gid), when the server runs as another user.
fn chown_to(path: &Path, owner: Option<(u32, u32)>) -> Result<(), PgError> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|e| PgError::io(format!("chown {}", path.display()), e))?;
    }
    Ok(())
}

fn output_text(output: &Output) -> String {
    let mut text = String::from_utf8_lossy(&output.stderr).trim().to_string();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !stdout.trim().is_empty() {
        if !text.is_empty() {
            text.push_str(" | ");
        }
        text.push_str(stdout.trim());
    }
    format!("{} ({})", tail(&text, 2000), output.status)
}

fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

/// Whether `uid`/`gid` can enter `dir` (exact: asks the kernel, ACLs included).
async fn can_enter(dir: &Path, uid: u32, gid: u32) -> bool {
    Command::new("/bin/sh")
        .args([
            OsStr::new("-c"),
            OsStr::new("cd -- \"$1\""),
            OsStr::new("sh"),
        ])
        .arg(dir)
        .current_dir("/")
        .uid(uid)
        .gid(gid)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// As root, the server runs as another user: every folder above the data
/// folder must let that user through, or PostgreSQL fails obscurely.
async fn check_reachable(data_dir: &Path, uid: u32, gid: u32) -> Result<(), PgError> {
    if can_enter(data_dir, uid, gid).await {
        return Ok(());
    }
    let mut blocking = data_dir.to_path_buf();
    let mut ancestors: Vec<&Path> = data_dir.ancestors().collect();
    ancestors.reverse();
    for dir in ancestors {
        if !can_enter(dir, uid, gid).await {
            blocking = dir.to_path_buf();
            break;
        }
    }
    Err(PgError::Embedded(format!(
        "PostgreSQL refuses to run as root, so it runs as uid {uid}, which cannot enter {} \
         (needed to reach the data folder {}); make it reachable (e.g. `chmod o+x {}`) \
         or choose another exporters.postgres.data_dir",
        blocking.display(),
        data_dir.display(),
        blocking.display()
    )))
}

fn lock_exclusive(path: &Path) -> Result<File, PgError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| PgError::io(format!("opening {}", path.display()), e))?;
    loop {
        // SAFETY: flock on a file descriptor we own; released when `file` is closed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(file);
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(PgError::io(format!("locking {}", path.display()), error));
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The (uid, gid) of the `postgres` system user, else `nobody`.
fn system_user() -> Result<(u32, u32), PgError> {
    for name in ["postgres", "nobody"] {
        if let Some(ids) = lookup_user(name) {
            if name != "postgres" {
                tracing::warn!(
                    "no `postgres` system user: running the private PostgreSQL as `nobody`"
                );
            }
            return Ok(ids);
        }
    }
    Err(PgError::Embedded(
        "running as root, but neither a `postgres` nor a `nobody` system user exists to run \
         PostgreSQL as (it refuses to run as root); create one (`useradd --system postgres`)"
            .into(),
    ))
}

fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value to be filled in.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; getpwnam_r writes only into `pwd` and `buf`.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points into `buf`, NUL-terminated.
    let found = unsafe { CStr::from_ptr(pwd.pw_name) };
    (found.to_bytes() == name.as_bytes()).then_some((pwd.pw_uid, pwd.pw_gid))
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn free_port() -> Result<u16, PgError> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| PgError::io("finding a free port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| PgError::io("finding a free port", e))
}

/// The folder holding `initdb`, `pg_ctl` and `postgres`.
///
/// For an existing cluster, the binaries of its major version come first.
fn find_bin_dir(pgdata: &Path) -> Result<PathBuf, PgError> {
    let has_all = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    let mut versioned = versioned_dirs();
    if let Ok(version) = std::fs::read_to_string(pgdata.join("PG_VERSION")) {
        let version = version.trim();
        if let Some(dir) = versioned.iter().find(|(v, _)| v.as_str() == version) {
            if has_all(&dir.1) {
                return Ok(dir.1.clone());
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if !initdb.is_file() {
                continue;
            }
            // Follow symlinks (/usr/local/bin/initdb → …/15/bin/initdb): pg_ctl
            // and postgres must come from the same installation.
            if let Some(real) = std::fs::canonicalize(&initdb)
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
            {
                if has_all(&real) {
                    return Ok(real);
                }
            }
            if has_all(&dir) {
                return Ok(dir);
            }
        }
    }
    versioned.retain(|(_, dir)| has_all(dir));
    if let Some((_, dir)) = versioned.pop() {
        return Ok(dir);
    }
    Err(PgError::BinariesNotFound {
        searched: "/usr/lib/postgresql/*/bin, /usr/pgsql-*/bin, /usr/local/pgsql/bin".into(),
    })
}

/// `(version, bin folder)` of the usual per-version installations, lowest first.
fn versioned_dirs() -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    for (root, prefix) in [("/usr/lib/postgresql", ""), ("/usr", "pgsql-")] {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(version) = name.strip_prefix(prefix) else {
                continue;
            };
            if version.is_empty() || !version.starts_with(|c: char| c.is_ascii_digit()) {
                continue;
            }
            found.push((version.to_string(), entry.path().join("bin")));
        }
    }
    let key = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    found.sort_by_key(|a| key(&a.0));
    let local = PathBuf::from("/usr/local/pgsql/bin");
    if local.is_dir() {
        found.insert(0, (String::new(), local));
    }
    found
}
