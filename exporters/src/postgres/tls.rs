//! TLS to PostgreSQL: `sslmode` (and `sslrootcert`) in the database URL, with
//! rustls (ring), as libpq reads them.
//!
//! | `sslmode` | connection |
//! |---|---|
//! | absent, `disable` | plaintext (Tally's behaviour before TLS) |
//! | `prefer` | TLS if the server offers it, certificate not checked |
//! | `require` | TLS or no connection; certificate checked against `sslrootcert` if given |
//! | `verify-ca` | TLS, certificate signed by `sslrootcert` |
//! | `verify-full` | as `verify-ca`, and issued for the host connected to |
//!
//! `sslrootcert` is a PEM file path (URL parameter, or `PGSSLROOTCERT`); the
//! `verify-*` modes need it (no system trust store is bundled).

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use super::PgError;

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Encryption only (`prefer`, `require` without `sslrootcert`).
    None,
    /// Signed by a trusted authority (`verify-ca`, `require` with `sslrootcert`).
    Chain,
    /// Signed, and for the host name (`verify-full`).
    Full,
}

/// Parses `url` (URL or key=value form) into a connection config and the TLS
/// connector its `sslmode` asks for.
pub fn parse(url: &str) -> Result<(tokio_postgres::Config, MakeRustls), PgError> {
    let (rest, sslmode, rootcert) = take_tls_params(url);
    let mut config: tokio_postgres::Config = rest.parse()?;
    let rootcert = rootcert.or_else(|| std::env::var_os("PGSSLROOTCERT").map(PathBuf::from));
    let (mode, check) = match sslmode.as_deref() {
        None | Some("disable") | Some("allow") => (SslMode::Disable, Check::None),
        Some("prefer") => (SslMode::Prefer, Check::None),
        Some("require") if rootcert.is_some() => (SslMode::Require, Check::Chain),
        Some("require") => (SslMode::Require, Check::None),
        Some("verify-ca") => (SslMode::Require, Check::Chain),
        Some("verify-full") => (SslMode::Require, Check::Full),
        Some(other) => {
            return Err(PgError::Tls(format!(
                "sslmode={other}: expected disable, prefer, require, verify-ca or verify-full"
            )))
        }
    };
    config.ssl_mode(mode);
    let roots = match (&rootcert, check) {
        (Some(path), _) => Some(read_roots(path)?),
        (None, Check::None) => None,
        (None, _) => {
            return Err(PgError::Tls(format!(
                "sslmode={} needs sslrootcert=<CA file> in the URL (or PGSSLROOTCERT)",
                sslmode.as_deref().unwrap_or_default()
            )))
        }
    };
    Ok((config, MakeRustls::new(check, roots)?))
}

/// Removes `sslmode` and `sslrootcert` from the URL (tokio-postgres knows only
/// part of libpq's `sslmode` values); returns the rest and their values.
fn take_tls_params(url: &str) -> (String, Option<String>, Option<PathBuf>) {
    let mut sslmode = None;
    let mut rootcert = None;
    let mut take = |key: &str, value: &str| match key {
        "sslmode" => {
            sslmode = Some(value.to_string());
            true
        }
        "sslrootcert" => {
            rootcert = Some(PathBuf::from(percent_decode(value)));
            true
        }
        _ => false,
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|pair| {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        !take(k, v)
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => url.to_string(),
        }
    } else {
        url.split_whitespace()
            .filter(|word| {
                let (k, v) = word.split_once('=').unwrap_or((word, ""));
                !take(k.trim(), v.trim())
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    (rest, sslmode, rootcert)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_roots(path: &Path) -> Result<RootCertStore, PgError> {
    let text = std::fs::read(path)
        .map_err(|e| PgError::io(format!("sslrootcert {}", path.display()), e))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&text) {
        let cert = cert.map_err(|e| {
            PgError::Tls(format!("sslrootcert {}: invalid PEM: {e}", path.display()))
        })?;
        roots.add(cert).map_err(|e| {
            PgError::Tls(format!(
                "sslrootcert {}: unusable certificate: {e}",
                path.display()
            ))
        })?;
    }
    if roots.is_empty() {
        return Err(PgError::Tls(format!(
            "sslrootcert {}: no CERTIFICATE in the file",
            path.display()
        )));
    }
    Ok(roots)
}

fn provider() -> Arc<CryptoProvider> {
    // ring, as the listeners use (see the tally-tls crate).
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS connector handed to tokio-postgres and deadpool (unused when
/// `sslmode` is absent or `disable`).
#[derive(Clone)]
pub struct MakeRustls {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for MakeRustls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MakeRustls")
    }
}

impl MakeRustls {
    fn new(check: Check, roots: Option<RootCertStore>) -> Result<MakeRustls, PgError> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| PgError::Tls(e.to_string()))?;
        let verifier: Arc<dyn ServerCertVerifier> = match (check, roots) {
            (Check::None, _) | (_, None) => Arc::new(AnyCertificate(provider)),
            (check, Some(roots)) => {
                let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| PgError::Tls(e.to_string()))?;
                Arc::new(Signed {
                    webpki,
                    check_name: check == Check::Full,
                })
            }
        };
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(MakeRustls {
            config: Arc::new(config),
        })
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(RustlsConnect {
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
            name,
        })
    }
}

/// One TLS handshake to the server named `name`.
pub struct RustlsConnect {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let stream = self.connector.connect(self.name, stream).await?;
            Ok(RustlsStream(stream))
        })
    }
}

/// A TLS connection to PostgreSQL.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM channel binding (tls-server-end-point) is not offered: the
        // password exchange is still SCRAM, inside the TLS session.
        ChannelBinding::none()
    }
}

/// `prefer` / `require` without a CA: any certificate, as libpq does; the
/// handshake signatures are still verified (the session is really encrypted
/// to the holder of the certificate's key).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca` / `verify-full`: the chain must lead to `sslrootcert`; the host
/// name must match only for `verify-full`.
#[derive(Debug)]
struct Signed {
    webpki: Arc<WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for Signed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_both_url_forms() {
        let (rest, mode, root) =
            take_tls_params("postgres://u:p@db/x?sslmode=verify-full&application_name=a&sslrootcert=%2Fetc%2Fca.pem");
        assert_eq!(rest, "postgres://u:p@db/x?application_name=a");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root, Some(PathBuf::from("/etc/ca.pem")));
        let (rest, mode, root) = take_tls_params("host=db sslmode=require dbname=x");
        assert_eq!(rest, "host=db dbname=x");
        assert_eq!(mode.as_deref(), Some("require"));
        assert_eq!(root, None);
        let (rest, mode, _) = take_tls_params("postgres://db/x?sslmode=disable");
        assert_eq!(rest, "postgres://db/x");
        assert_eq!(mode.as_deref(), Some("disable"));
    }

    #[test]
    fn verify_modes_need_a_root_certificate() {
        std::env::remove_var("PGSSLROOTCERT");
        let error = parse("postgres://db/x?sslmode=verify-full").unwrap_err();
        assert!(error.to_string().contains("sslrootcert"), "{error}");
        let error = parse("postgres://db/x?sslmode=sometimes").unwrap_err();
        assert!(error.to_string().contains("sslmode=sometimes"), "{error}");
    }
}
