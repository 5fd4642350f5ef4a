//! What the service's TLS clients trust: the Mozilla roots plus the CA certificates an operator
//! adds in a PEM file — `FANOUT_DB_CA_FILE` for Postgres, `FANOUT_UPSTREAM_CA_FILE` for proxy
//! mode's upstream — so a private CA works and nothing is trusted silently (no option turns
//! verification off). The file is read once, at start; a file that cannot be read, holds no
//! certificate, or holds one rustls refuses stops the start with an error naming it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Why the trusted certificates could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", .path.display())]
    ReadCaFile {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{}: {source}", .path.display())]
    CaFile {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{} holds no PEM certificate", .path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: {source}", .path.display())]
    CaRejected {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("{0}")]
    Config(#[source] rustls::Error),
}

/// The CA certificates added to the Mozilla roots (none without a file).
#[derive(Debug, Clone)]
pub struct TrustedCas {
    extra: Vec<CertificateDer<'static>>,
    /// The Mozilla roots plus `extra`.
    roots: RootCertStore,
}

impl TrustedCas {
    /// The Mozilla roots plus every certificate of `ca_file` (PEM; other PEM sections, such as a
    /// key, are skipped).
    pub fn load(ca_file: Option<&Path>) -> Result<TrustedCas, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let mut extra = Vec::new();
        if let Some(path) = ca_file {
            let certs =
                CertificateDer::pem_file_iter(path).map_err(|source| TlsError::ReadCaFile {
                    path: path.to_path_buf(),
                    source,
                })?;
            for cert in certs {
                let cert = cert.map_err(|source| TlsError::CaFile {
                    path: path.to_path_buf(),
                    source,
                })?;
                roots
                    .add(cert.clone())
                    .map_err(|source| TlsError::CaRejected {
                        path: path.to_path_buf(),
                        source,
                    })?;
                extra.push(cert);
            }
            if extra.is_empty() {
                return Err(TlsError::NoCertificate {
                    path: path.to_path_buf(),
                });
            }
        }
        Ok(TrustedCas { extra, roots })
    }

    /// The certificates the file added (DER), for a client that takes them one by one.
    pub fn extra(&self) -> &[CertificateDer<'static>] {
        &self.extra
    }

    /// A rustls client configuration (ring, TLS 1.2 and 1.3, no client certificate) that verifies
    /// the server's chain and name against these roots. Its ALPN list is empty: the HTTP client
    /// sets the protocols it speaks.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth())
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn an_unreadable_ca_file_is_named_and_its_cause_kept() {
        let path = Path::new("/nonexistent/mcp-fanout-ca.pem");
        let Err(error) = TrustedCas::load(Some(path)) else {
            panic!("a missing CA file must fail");
        };
        assert!(matches!(error, TlsError::ReadCaFile { .. }));
        assert!(
            error
                .to_string()
                .starts_with("cannot read /nonexistent/mcp-fanout-ca.pem: "),
            "{error}"
        );
        assert!(error.source().is_some(), "the I/O error is kept");
    }

    #[test]
    fn a_file_without_a_certificate_is_refused() {
        let path =
            std::env::temp_dir().join(format!("mcp-fanout-no-cert-{}.pem", std::process::id()));
        std::fs::write(&path, "not a certificate\n").expect("write");
        let loaded = TrustedCas::load(Some(&path));
        let _ = std::fs::remove_file(&path);
        let Err(error) = loaded else {
            panic!("a file without a certificate must fail");
        };
        assert!(matches!(error, TlsError::NoCertificate { .. }), "{error}");
        assert!(error.to_string().ends_with("holds no PEM certificate"));
    }

    #[test]
    fn without_a_file_only_the_mozilla_roots() {
        let cas = TrustedCas::load(None).expect("the built-in roots");
        assert!(cas.extra().is_empty());
        assert_eq!(cas.roots.len(), webpki_roots::TLS_SERVER_ROOTS.len());
        let config = cas.client_config().expect("a client configuration");
        assert!(config.alpn_protocols.is_empty());
    }
}
