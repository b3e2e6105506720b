//! TLS to PostgreSQL as the URL's `sslmode` says, against a private server the
//! test turns `ssl = on` with a certificate it generates (the shared server is
//! left alone).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tally_exporters::postgres::connect;
use tally_exporters::postgres::embedded::PrivatePostgres;

/// Stops the server the test started and removes its folder.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(self.0.join("pgdata/postmaster.pid"))
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
        {
            // SAFETY: signalling the pid from the server's own pid file.
            unsafe { libc::kill(pid, libc::SIGQUIT) };
            let deadline = Instant::now() + Duration::from_secs(10);
            // SAFETY: signal 0 only checks that the process exists.
            while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// (CA PEM, server certificate PEM, server key PEM) for 127.0.0.1 and localhost.
fn authority() -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// Writes a file readable by the server's user only.
fn server_file(pgdata: &Path, name: &str, text: &str) {
    use std::os::unix::fs::MetadataExt;
    let path = pgdata.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let owner = std::fs::metadata(pgdata).unwrap();
    std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
}

async fn ssl_in_use(url: &str) -> Result<bool, String> {
    let (client, _) = connect(url).await.map_err(|e| e.to_string())?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test]
async fn sslmode_require_and_verify_full_are_honoured() {
    let dir = std::env::temp_dir().join(format!("tally-pg-tls-{}", uuid::Uuid::new_v4().simple()));
    let _cleanup = Cleanup(dir.clone());
    let server = PrivatePostgres::start(&dir).await.expect("start");
    let url = server.url();

    // ssl = off: plaintext by default, and `require` refuses to go on.
    assert_eq!(ssl_in_use(&url).await, Ok(false));
    let refused = ssl_in_use(&format!("{url}?sslmode=require")).await;
    assert!(
        refused.is_err(),
        "require without TLS on the server: {refused:?}"
    );

    let (ca, cert, key) = authority();
    let (other_ca, _, _) = authority();
    let pgdata = dir.join("pgdata");
    server_file(&pgdata, "server.crt", &cert);
    server_file(&pgdata, "server.key", &key);
    let ca_file = dir.join("ca.pem");
    let other_ca_file = dir.join("other-ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    std::fs::write(&other_ca_file, &other_ca).unwrap();
    {
        let (admin, _) = connect(&server.superuser_url()).await.unwrap();
        admin
            .batch_execute("ALTER SYSTEM SET ssl = on")
            .await
            .unwrap();
        admin
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .unwrap();
    }

    let require = format!("{url}?sslmode=require");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match ssl_in_use(&require).await {
            Ok(true) => break,
            other => assert!(Instant::now() < deadline, "TLS never came up: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let verify = |ca: &Path| {
        format!(
            "{url}?sslmode=verify-full&sslrootcert={}",
            ca.display().to_string().replace('/', "%2F")
        )
    };
    assert_eq!(ssl_in_use(&verify(&ca_file)).await, Ok(true));
    let wrong = ssl_in_use(&verify(&other_ca_file)).await;
    assert!(wrong.is_err(), "verify-full with another CA: {wrong:?}");
    // Still plaintext when the URL does not ask for TLS.
    assert_eq!(ssl_in_use(&url).await, Ok(false));
    server.stop().await.unwrap();
}
