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
