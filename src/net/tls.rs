//! TLS for `turns:` listeners (rustls with the ring provider): certificate and key from
//! PEM files, swapped atomically on reload so existing connections keep their session
//! and new handshakes get the new certificate.

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// A certificate or key that cannot be used, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is unreadable or holds no certificate.
    #[error("{path}: cannot load certificate chain: {reason}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key file is unreadable or holds no supported key.
    #[error("{path}: cannot load private key: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key does not belong to the certificate.
    #[error("{key}: private key does not match the certificate in {cert}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

/// Loads a certificate chain and its key, checking they belong together.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_err = |reason: String| TlsError::Certificate { path: cert.to_owned(), reason };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no CERTIFICATE block found".into()));
    }
    let private_key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key { path: key.to_owned(), reason: e.to_string() })?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, private_key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::Mismatch { cert: cert.to_owned(), key: key.to_owned() },
        other => TlsError::Key { path: key.to_owned(), reason: other.to_string() },
    })
}

/// The certificate in force, replaceable while the server runs.
#[derive(Debug)]
pub struct ReloadableCert {
    current: ArcSwap<CertifiedKey>,
    cert_path: PathBuf,
    key_path: PathBuf,
    loaded_mtimes: ArcSwap<(Option<SystemTime>, Option<SystemTime>)>,
}

fn mtimes(cert: &Path, key: &Path) -> (Option<SystemTime>, Option<SystemTime>) {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (m(cert), m(key))
}

impl ReloadableCert {
    /// Loads the pair for the first time.
    pub fn new(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let loaded = load(cert, key)?;
        Ok(ReloadableCert {
            current: ArcSwap::from_pointee(loaded),
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            loaded_mtimes: ArcSwap::from_pointee(mtimes(cert, key)),
        })
    }

    /// Reloads from disk; on error the old certificate stays in force.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamp = mtimes(&self.cert_path, &self.key_path);
        let loaded = load(&self.cert_path, &self.key_path)?;
        self.current.store(Arc::new(loaded));
        self.loaded_mtimes.store(Arc::new(stamp));
        Ok(())
    }

    /// Reloads if either file changed since the last load (a certificate renewal).
    /// `Ok(true)` when a new certificate was loaded.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let stamp = mtimes(&self.cert_path, &self.key_path);
        if stamp == **self.loaded_mtimes.load() {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }

    /// A rustls server config using this certificate (TLS 1.2 and 1.3).
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone()))
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
