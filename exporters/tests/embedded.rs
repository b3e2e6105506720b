//! The private PostgreSQL: start from nothing, reuse, restart on the same port.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tally_exporters::postgres::connect;
use tally_exporters::postgres::embedded::PrivatePostgres;

/// Stops a server left running by a failed assertion and removes the folder.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let pid_file = self.0.join("pgdata/postmaster.pid");
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
        {
            // SAFETY: signalling a process id read from the server's pid file.
            unsafe { libc::kill(pid, libc::SIGQUIT) };
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            // SAFETY: signal 0 only checks that the process exists.
            while unsafe { libc::kill(pid, 0) } == 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn query_one_i32(url: &str, sql: &str) -> i32 {
    let (client, _) = connect(url).await.expect("connect to the private server");
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

fn owner(path: &Path) -> u32 {
    std::fs::metadata(path).expect("metadata").uid()
}

#[tokio::test]
async fn private_server_starts_reuses_and_restarts_on_its_port() {
    let dir = std::env::temp_dir().join(format!("tally-pg-test-{}", uuid::Uuid::new_v4().simple()));
    let _cleanup = Cleanup(dir.clone());

    let server = PrivatePostgres::start(&dir).await.expect("first start");
    assert!(server.started_here());
    let port = server.port();
    assert!(
        server.url().ends_with(&format!("127.0.0.1:{port}/tally")),
        "{}",
        server.url()
    );
    assert_eq!(server.data_dir(), dir.as_path());
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert_ne!(
            owner(&dir.join("pgdata")),
            0,
            "as root the server runs as another user"
        );
    }
    let (client, _) = connect(&server.url()).await.unwrap();
    let db: String = client
        .query_one("SELECT current_database()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(db, "tally");
    client
        .batch_execute("CREATE TABLE marker (x int); INSERT INTO marker VALUES (42)")
        .await
        .unwrap();
    drop(client);
    assert_eq!(
        std::fs::read_to_string(dir.join("port")).unwrap().trim(),
        port.to_string()
    );

    // A second start while it runs reuses it, and its stop leaves it running.
    let again = PrivatePostgres::start(&dir).await.expect("reuse");
    assert!(!again.started_here());
    assert_eq!(again.port(), port);
    again.stop().await.unwrap();
    assert_eq!(
        query_one_i32(&server.url(), "SELECT x FROM marker").await,
        42
    );

    server.stop().await.expect("stop");
    assert!(
        connect(&format!("postgres://postgres@127.0.0.1:{port}/tally"))
            .await
            .is_err()
    );

    // Restart: same data, same port.
    let server = PrivatePostgres::start(&dir).await.expect("restart");
    assert!(server.started_here());
    assert_eq!(server.port(), port);
    assert_eq!(
        query_one_i32(&server.url(), "SELECT x FROM marker").await,
        42
    );
    server.stop().await.unwrap();

    // The remembered port is taken meanwhile: another one is chosen.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let server = PrivatePostgres::start(&dir)
        .await
        .expect("start on another port");
    assert_ne!(server.port(), port);
    assert_eq!(
        query_one_i32(&server.url(), "SELECT x FROM marker").await,
        42
    );
    drop(squatter);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn as_root_an_unreachable_data_folder_is_explained() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return; // only root hands the server to another user
    }
    use std::os::unix::fs::PermissionsExt;
    let outer = std::env::temp_dir().join(format!(
        "tally-pg-private-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let _cleanup = Cleanup(outer.clone());
    std::fs::create_dir(&outer).unwrap();
    std::fs::set_permissions(&outer, std::fs::Permissions::from_mode(0o700)).unwrap();
    let error = PrivatePostgres::start(&outer.join("pg"))
        .await
        .expect_err("the server user cannot reach the folder");
    let message = error.to_string();
    assert!(
        message.contains(&format!("cannot enter {}", outer.display()))
            && message.contains("chmod o+x"),
        "{message}"
    );
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

fn sql_state(error: &tokio_postgres::Error) -> String {
    error
        .code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {error}"))
}

#[tokio::test]
async fn private_server_wants_a_password_and_tally_is_no_superuser() {
    let dir = std::env::temp_dir().join(format!("tally-pg-lock-{}", uuid::Uuid::new_v4().simple()));
    let _cleanup = Cleanup(dir.clone());
    let server = PrivatePostgres::start(&dir).await.expect("start");
    let port = server.port();

    for file in ["superuser.password", "tally.password"] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }
    for user in ["postgres", "tally"] {
        let error = connect(&format!("postgres://{user}@127.0.0.1:{port}/tally"))
            .await
            .expect_err("a connection without a password is refused");
        assert!(error.to_string().contains("password"), "{error}");
        let error = connect(&format!("postgres://{user}:guess@127.0.0.1:{port}/tally"))
            .await
            .expect_err("a wrong password is refused");
        assert!(
            error.to_string().contains("password authentication failed"),
            "{error}"
        );
    }

    let (client, _) = connect(&server.url()).await.expect("tally's own URL");
    let user: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(user, "tally");
    tally_exporters::postgres::migrate(&client)
        .await
        .expect("tally migrates its own database");
    let superuser: bool = client
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!superuser);
    let error = client
        .batch_execute("COPY (SELECT 1) TO PROGRAM 'true'")
        .await
        .expect_err("no programs");
    assert_eq!(sql_state(&error), "42501", "{error}");
    let error = client
        .query("SELECT rolname, rolpassword FROM pg_authid", &[])
        .await
        .expect_err("no password hashes");
    assert_eq!(sql_state(&error), "42501", "{error}");
    let error = client
        .query("SELECT pg_read_file('postgresql.conf')", &[])
        .await
        .expect_err("no server files");
    assert_eq!(sql_state(&error), "42501", "{error}");
    // `tally` bypasses row-level security (its policies leave it unrestricted
    // anyway), so the writer takes the direct COPY path ...
    let as_writer: (bool, bool) = client
        .query_one(
            "SELECT rolbypassrls, row_security_active('activity_events') \
             FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    assert_eq!(
        as_writer,
        (true, false),
        "(rolbypassrls, row security active)"
    );
    // ... while the admin API's role, taken with SET ROLE, stays restricted to
    // its tenant.
    client
        .batch_execute(
            "INSERT INTO activity_daily (day, tenant_id, user_id, action, outcome, events) \
             VALUES ('2026-01-01', 'tenant-a', 'u', 'doc.read', 'success', 1), \
                    ('2026-01-01', 'tenant-b', 'u', 'doc.read', 'success', 1)",
        )
        .await
        .unwrap();
    client
        .batch_execute(
            "SELECT set_config('tally.tenant', 'tenant-a', false), \
                    set_config('tally.user', '', false)",
        )
        .await
        .unwrap();
    client
        .batch_execute("SET ROLE tally_api")
        .await
        .expect("the admin API's read role");
    let seen: (i64, bool) = client
        .query_one(
            "SELECT (SELECT count(*) FROM activity_daily), row_security_active('activity_daily')",
            &[],
        )
        .await
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    assert_eq!(seen, (1, true), "tally_api sees its tenant's row only");
    client.batch_execute("RESET ROLE").await.unwrap();
    drop(client);
    server.stop().await.unwrap();
}

/// The `bin` folder of the newest PostgreSQL installed under /usr/lib/postgresql.
fn pg_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL binaries under /usr/lib/postgresql")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| d.join("initdb").is_file())
        .collect();
    dirs.sort();
    dirs.pop().expect("an initdb")
}

/// Runs a PostgreSQL program as the user the private server runs as.
fn run_pg(program: &str, args: &[&std::ffi::OsStr], as_user: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(pg_bin().join(program));
    command.args(args).current_dir("/").env("LC_ALL", "C");
    if let Some((uid, gid)) = as_user {
        command.uid(uid).gid(gid);
    }
    let output = command.output().expect(program);
    assert!(
        output.status.success(),
        "{program}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn postgres_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = std::process::Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a postgres system user")
    };
    Some((id("-u"), id("-g")))
}

#[tokio::test]
async fn a_trusting_data_folder_from_an_older_version_is_locked_in_place() {
    use std::ffi::OsStr;
    let dir = std::env::temp_dir().join(format!("tally-pg-old-{}", uuid::Uuid::new_v4().simple()));
    let _cleanup = Cleanup(dir.clone());
    std::fs::create_dir_all(&dir).unwrap();
    let as_user = postgres_user();
    if let Some((uid, gid)) = as_user {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
    }
    let pgdata = dir.join("pgdata");
    // What the older version did: trust for everyone, superuser `postgres`.
    run_pg(
        "initdb",
        &[
            OsStr::new("-D"),
            pgdata.as_os_str(),
            OsStr::new("-U"),
            OsStr::new("postgres"),
            OsStr::new("--auth-local=trust"),
            OsStr::new("--auth-host=trust"),
            OsStr::new("--locale=C"),
        ],
        as_user,
    );
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = pgdata.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("\ninclude_if_exists = 'tally.conf'\n");
    std::fs::write(&conf, text).unwrap();
    std::fs::write(
        pgdata.join("tally.conf"),
        format!("listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = ''\n"),
    )
    .unwrap();
    let log = dir.join("postgres.log");
    run_pg(
        "pg_ctl",
        &[
            OsStr::new("start"),
            OsStr::new("-D"),
            pgdata.as_os_str(),
            OsStr::new("-l"),
            log.as_os_str(),
            OsStr::new("-w"),
        ],
        as_user,
    );
    // The older version's database: created and migrated by the superuser.
    let (client, _) = connect(&format!("postgres://postgres@127.0.0.1:{port}/postgres"))
        .await
        .expect("trust");
    client.batch_execute("CREATE DATABASE tally").await.unwrap();
    let (client, _) = connect(&format!("postgres://postgres@127.0.0.1:{port}/tally"))
        .await
        .expect("trust");
    tally_exporters::postgres::migrate(&client).await.unwrap();
    client
        .batch_execute("CREATE TABLE marker (x int); INSERT INTO marker VALUES (42)")
        .await
        .unwrap();
    drop(client);

    // First start of this version, on the running server: locked in place.
    let server = PrivatePostgres::start(&dir).await.expect("upgrade");
    assert!(!server.started_here(), "the running server was reused");
    assert_eq!(server.port(), port);
    connect(&format!("postgres://postgres@127.0.0.1:{port}/tally"))
        .await
        .expect_err("the superuser now needs its password");
    assert_eq!(mode(&dir.join("superuser.password")), 0o600);
    let (client, _) = connect(&server.url()).await.expect("tally's role");
    let x: i32 = client
        .query_one("SELECT x FROM marker", &[])
        .await
        .expect("the old rows are tally's")
        .get(0);
    assert_eq!(x, 42);
    tally_exporters::postgres::migrate(&client)
        .await
        .expect("tally owns the old schema");
    let not_ours: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace \
             AND relkind IN ('r', 'p', 'S', 'v') AND relowner <> 'tally'::regrole",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(not_ours, 0, "every relation handed to tally");
    let error = client
        .batch_execute("COPY (SELECT 1) TO PROGRAM 'true'")
        .await
        .expect_err("no programs");
    assert_eq!(sql_state(&error), "42501", "{error}");
}
