//! A listener's `tls` block → a rustls `ServerConfig`.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tally_config::TlsConfig;

use crate::TlsError;

/// ALPN of a gRPC listener: HTTP/2 only.
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];
/// ALPN of an HTTP listener: HTTP/2, else HTTP/1.1.
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Reads the files of `config` into a server configuration offering `alpn`.
///
/// `setting` is the config path of the block (`receivers.otlp.grpc.tls`), used in
/// errors. With `client_ca_file`, clients must present a certificate signed by
/// one of its authorities.
pub fn load(
    config: &TlsConfig,
    setting: &str,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = read_certs(&config.cert_file, &format!("{setting}.cert_file"))?;
    let key = read_key(&config.key_file, &format!("{setting}.key_file"))?;
    // ring, as tonic's `tls-ring` uses: rustls 0.23.48 deprecates it because it
    // lacks post-quantum key exchange; aws-lc-rs would add a C/CMake build.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let rustls_error = |reason: String| TlsError::Rustls {
        setting: setting.to_string(),
        reason,
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| rustls_error(e.to_string()))?;
    let builder = match &config.client_ca_file {
        Some(path) => {
            let ca_setting = format!("{setting}.client_ca_file");
            let mut roots = RootCertStore::empty();
            for cert in read_certs(path, &ca_setting)? {
                roots.add(cert).map_err(|e| TlsError::Pem {
                    setting: ca_setting.clone(),
                    path: path.clone(),
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| rustls_error(format!("client verifier: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder
        .with_single_cert(certs, key)
        .map_err(|e| rustls_error(format!("certificate and key do not go together: {e}")))?;
    server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(server))
}

fn read_certs(path: &Path, setting: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = read(path, setting)?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            setting: setting.to_string(),
            path: path.to_path_buf(),
            reason: format!("invalid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            setting: setting.to_string(),
            path: path.to_path_buf(),
            reason: "no CERTIFICATE in the file".into(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path, setting: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let text = read(path, setting)?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| TlsError::Pem {
        setting: setting.to_string(),
        path: path.to_path_buf(),
        reason: format!("no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}"),
    })
}

fn read(path: &Path, setting: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        setting: setting.to_string(),
        path: path.to_path_buf(),
        source,
    })
}
