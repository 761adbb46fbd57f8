//! TLS to Postgres, with libpq's `sslmode` meanings (`DATABASE_URL`):
//!
//! | `sslmode` | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (the default) | when the server offers TLS | no (as libpq) |
//! | `require` | always, or the connection fails | no, unless `sslrootcert` is given: then as `verify-ca` (as libpq) |
//! | `verify-ca` | always | chain to `sslrootcert` (or the system roots) |
//! | `verify-full` | always | chain and host name |
//!
//! tokio-postgres understands only the first three and rejects `sslrootcert`, so [`split`]
//! takes the verification part out of the URL before it is parsed.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::DbError;

/// The connector every connection of this process uses: rustls for TCP hosts. A Unix-socket
/// host never uses TLS (as libpq: the server refuses TLS there, and there is no name to check),
/// so for it this hands tokio-postgres a connector that is never asked to run — [`super::parse_url`]
/// sets `sslmode=disable` when every host is a socket.
#[derive(Clone)]
pub struct Tls(MakeRustlsConnect);

impl<S> MakeTlsConnect<S> for Tls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type TlsConnect = HostTls<S>;
    type Error = std::io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<HostTls<S>, std::io::Error> {
        // tokio-postgres passes an empty name for a Unix-socket host.
        if domain.is_empty() {
            return Ok(HostTls(None));
        }
        <MakeRustlsConnect as MakeTlsConnect<S>>::make_tls_connect(&mut self.0, domain)
            .map(|c| HostTls(Some(c)))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    }
}

/// One connection's TLS: rustls for a TCP host, nothing for a Unix socket.
pub struct HostTls<S>(Option<<MakeRustlsConnect as MakeTlsConnect<S>>::TlsConnect>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static;

impl<S> TlsConnect<S> for HostTls<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Stream>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        match self.0 {
            Some(tls) => Box::pin(tls.connect(stream)),
            None => Box::pin(std::future::ready(Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "TLS is never used over a Unix socket",
            )))),
        }
    }
}

/// How much of the server's certificate is checked once TLS is up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verify {
    /// Encryption only (`prefer`, `require`, `disable`).
    None,
    /// The chain must lead to a trusted root (`verify-ca`).
    Ca,
    /// The chain and the host name (`verify-full`).
    Full,
}

/// The TLS part of a `DATABASE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPolicy {
    pub verify: Verify,
    /// `sslrootcert`: PEM file of trusted roots; the system roots when absent.
    pub root_cert: Option<PathBuf>,
}

/// Splits `url` into what tokio-postgres can parse and the verification policy: `verify-ca`
/// and `verify-full` become `sslmode=require` (TLS mandatory) and `sslrootcert` is removed.
/// Works on both the URL form (`postgres://…?sslmode=…`) and the `key=value` form.
pub fn split(url: &str) -> (String, TlsPolicy) {
    let mut policy = TlsPolicy {
        verify: Verify::None,
        root_cert: None,
    };
    let mut require = false;
    let mut take = |key: &str, value: &str| -> Option<String> {
        match (key, value) {
            ("sslmode", "require") => {
                require = true;
                Some("require".into())
            }
            ("sslrootcert", v) => {
                policy.root_cert = Some(PathBuf::from(
                    percent_encoding::percent_decode_str(v)
                        .decode_utf8_lossy()
                        .into_owned(),
                ));
                None
            }
            ("sslmode", "verify-ca") => {
                policy.verify = Verify::Ca;
                Some("require".into())
            }
            ("sslmode", "verify-full") => {
                policy.verify = Verify::Full;
                Some("require".into())
            }
            (_, v) => Some(v.to_string()),
        }
    };
    let rewritten = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_string(),
            Some((base, query)) => {
                let kept: Vec<String> = query
                    .split('&')
                    .filter(|p| !p.is_empty())
                    .filter_map(|p| {
                        let (k, v) = p.split_once('=').unwrap_or((p, ""));
                        take(k, v).map(|v| format!("{k}={v}"))
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        url.split_whitespace()
            .filter_map(|p| match p.split_once('=') {
                Some((k, v)) => take(k, v).map(|v| format!("{k}={v}")),
                None => Some(p.to_string()),
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    // libpq: given a root certificate file, `require` verifies the chain as `verify-ca` does.
    if require && policy.root_cert.is_some() && matches!(policy.verify, Verify::None) {
        policy.verify = Verify::Ca;
    }
    (rewritten, policy)
}

/// Builds the connector for `policy`. Fails only on an unreadable or empty `sslrootcert`.
pub fn connector(policy: &TlsPolicy) -> Result<Tls, DbError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default versions");
    let config = match policy.verify {
        Verify::None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth(),
        Verify::Ca | Verify::Full => {
            let roots = Arc::new(roots(policy.root_cert.as_deref())?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| DbError::Tls(format!("cannot build the certificate verifier: {e}")))?;
            let verifier: Arc<dyn ServerCertVerifier> = if policy.verify == Verify::Full {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            };
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth()
        }
    };
    Ok(Tls(MakeRustlsConnect::new(config)))
}

fn roots(path: Option<&Path>) -> Result<RootCertStore, DbError> {
    let mut store = RootCertStore::empty();
    match path {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect())
                .map_err(|e| {
                    DbError::Tls(format!(
                        "sslrootcert {}: cannot read PEM certificates: {e}",
                        path.display()
                    ))
                })?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(DbError::Tls(format!(
                    "sslrootcert {}: no usable certificate in the file",
                    path.display()
                )));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(DbError::Tls(
                    "sslmode verify-ca/verify-full: no system root certificates found; set sslrootcert".into(),
                ));
            }
        }
    }
    Ok(store)
}

/// libpq's `prefer`/`require`: the session is encrypted and its handshake signatures are
/// checked, but the certificate is not (anyone on the path could present one).
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
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

/// libpq's `verify-ca`: the full WebPKI check except that the name may differ.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_modes_become_require_and_the_root_cert_is_taken_out() {
        let (url, p) = split(
            "postgres://u:p@db:5432/x?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=a",
        );
        assert_eq!(
            url,
            "postgres://u:p@db:5432/x?sslmode=require&application_name=a"
        );
        assert_eq!(p.verify, Verify::Full);
        assert_eq!(p.root_cert, Some(PathBuf::from("/etc/ca.pem")));

        let (url, p) = split("host=db sslmode=verify-ca sslrootcert=/ca.pem dbname=x");
        assert_eq!(url, "host=db sslmode=require dbname=x");
        assert_eq!(p.verify, Verify::Ca);

        for plain in [
            "postgres://db/x",
            "postgres://db/x?sslmode=require",
            "host=db",
        ] {
            let (url, p) = split(plain);
            assert_eq!(url, plain);
            assert_eq!(p.verify, Verify::None);
            assert_eq!(p.root_cert, None);
        }
    }

    #[test]
    fn require_with_a_root_cert_verifies_the_chain_as_libpq_does() {
        let (url, p) = split("postgres://db/x?sslmode=require&sslrootcert=%2Fca.pem");
        assert_eq!(url, "postgres://db/x?sslmode=require");
        assert_eq!(p.verify, Verify::Ca);
        let (_, p) = split("host=db sslrootcert=/ca.pem sslmode=require");
        assert_eq!(p.verify, Verify::Ca);
        // verify-full keeps its host-name check.
        let (_, p) = split("postgres://db/x?sslmode=verify-full&sslrootcert=%2Fca.pem");
        assert_eq!(p.verify, Verify::Full);
    }

    #[test]
    fn an_unreadable_root_cert_is_named() {
        let p = TlsPolicy {
            verify: Verify::Full,
            root_cert: Some("/nonexistent/ca.pem".into()),
        };
        let err = connector(&p).err().expect("fails").to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}
