//! Certificates are re-read when their files change (or on SIGHUP): new
//! connections get the new certificate, an established connection goes on.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tally_config::TlsConfig;
use tally_tls::{Reloader, TlsListener, ALPN_HTTP};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// (CA PEM, server certificate PEM, server key PEM) of a fresh authority.
fn authority() -> (String, String, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

fn connector(ca_pem: &str) -> tokio_rustls::TlsConnector {
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Connects, and checks the server echoes a byte (the handshake really completed).
async fn echo_client(
    addr: std::net::SocketAddr,
    ca_pem: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector(ca_pem).connect(name, tcp).await?;
    round_trip(&mut tls, b'x').await?;
    Ok(tls)
}

async fn round_trip(
    tls: &mut tokio_rustls::client::TlsStream<TcpStream>,
    byte: u8,
) -> std::io::Result<()> {
    tls.write_all(&[byte]).await?;
    let mut back = [0u8];
    tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut back))
        .await
        .map_err(|_| std::io::Error::other("no echo"))??;
    assert_eq!(back[0], byte);
    Ok(())
}

fn write_pair(dir: &Path, cert: &str, key: &str) {
    // Key first, then certificate: a reload between the two sees a mismatch,
    // fails, keeps the old pair, and the next change is picked up.
    std::fs::write(dir.join("server.key"), key).unwrap();
    std::fs::write(dir.join("server.crt"), cert).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_certificate_is_served_to_new_connections_without_dropping_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (ca1, cert1, key1) = authority();
    let (ca2, cert2, key2) = authority();
    write_pair(dir.path(), &cert1, &key1);
    let config = TlsConfig {
        cert_file: dir.path().join("server.crt"),
        key_file: dir.path().join("server.key"),
        client_ca_file: None,
    };
    let reloader = Reloader::new(&config, "test.tls", ALPN_HTTP).unwrap();
    reloader.watch();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let mut listener = TlsListener::new(tcp, reloader).unwrap();
    tokio::spawn(async move {
        while let Some(conn) = listener.next().await {
            tokio::spawn(async move {
                let (mut read, mut write) = tokio::io::split(conn);
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });

    let mut old = echo_client(addr, &ca1).await.expect("first certificate");
    assert!(echo_client(addr, &ca2).await.is_err(), "not yet the second");

    write_pair(dir.path(), &cert2, &key2);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if echo_client(addr, &ca2).await.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        echo_client(addr, &ca1).await.is_err(),
        "the old one is gone"
    );
    round_trip(&mut old, b'y')
        .await
        .expect("the connection made before the reload still works");
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert1, _) = authority();
    let (_, _, key2) = authority();
    write_pair(dir.path(), &cert1, &key2);
    let config = TlsConfig {
        cert_file: dir.path().join("server.crt"),
        key_file: dir.path().join("server.key"),
        client_ca_file: Some(dir.path().join("missing-ca.crt")),
    };
    let error = tally_tls::load(&config, "admin_api.tls", ALPN_HTTP)
        .expect_err("missing CA file")
        .to_string();
    assert!(
        error.starts_with("admin_api.tls.client_ca_file: cannot read"),
        "{error}"
    );
    let config = TlsConfig {
        client_ca_file: None,
        ..config
    };
    let error = tally_tls::load(&config, "admin_api.tls", ALPN_HTTP)
        .expect_err("mismatched key")
        .to_string();
    assert!(error.contains("do not go together"), "{error}");
}
