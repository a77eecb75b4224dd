//! TLS for `turns:` listeners (rustls with the ring provider): certificate and key from
//! PEM files, swapped atomically on reload so existing connections keep their session
//! and new handshakes get the new certificate.
//!
//! ALPN (RFC 7443): the server accepts `stun.turn` and `stun.nat-discovery`. A client
//! that offers no ALPN is served as before (browsers' `turns:` offer none); one that
//! offers only other protocols gets a `no_application_protocol` alert, as RFC 7301 §3.2
//! asks, rather than a TURN server pretending to speak HTTP. On a listener with a
//! passthrough backend such clients never reach rustls: [`super::passthrough`] hands
//! them to the backend first.

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// The ALPN protocol id of TURN (RFC 7443 §6).
pub const ALPN_TURN: &[u8] = b"stun.turn";
/// The ALPN protocol id of STUN NAT behaviour discovery (RFC 7443 §6).
pub const ALPN_NAT_DISCOVERY: &[u8] = b"stun.nat-discovery";
/// What turnd's TLS listeners negotiate, in its order of preference (rustls picks the
/// first of these the client offers).
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [ALPN_TURN, ALPN_NAT_DISCOVERY];

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

    /// A rustls server config using this certificate (TLS 1.2 and 1.3), negotiating
    /// the STUN ALPN ids ([`ALPN_PROTOCOLS`]).
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|id| id.to_vec()).collect();
        Ok(config)
    }

    /// Whether the certificate in force is valid for the DNS name `name` (its subject
    /// alternative names, wildcards as webpki matches them). An IP address or a name
    /// that is not a DNS name never matches.
    pub fn is_valid_for(&self, name: &str) -> bool {
        let Ok(name) = rustls_pki_types::DnsName::try_from(name) else {
            return false;
        };
        let current = self.current.load();
        let Some(leaf) = current.cert.first() else {
            return false;
        };
        let Ok(leaf) = webpki::EndEntityCert::try_from(leaf) else {
            return false;
        };
        leaf.verify_is_valid_for_subject_name(&rustls_pki_types::ServerName::DnsName(name)).is_ok()
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rustls_pki_types::ServerName;

    /// A self-signed P-256 certificate for turn.example.com and *.turn.example.net,
    /// valid for a century (made once with the openssl tool; the server side never
    /// checks validity, and the client below accepts any certificate).
    const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBwTCCAWagAwIBAgIUSO7yjkmVTGn/uH5/NxkJgB8rsD0wCgYIKoZIzj0EAwIw
GzEZMBcGA1UEAwwQdHVybi5leGFtcGxlLmNvbTAgFw0yNjEyMDYxNjM4NDBaGA8y
MTI2MTExMjE2Mzg0MFowGzEZMBcGA1UEAwwQdHVybi5leGFtcGxlLmNvbTBZMBMG
ByqGSM49AgEGCCqGSM49AwEHA0IABGdOVhcXMYBlMBRQOFrPaNmnVW/7DYRTjNBF
eC3SLJFsiinpZmZG7kFPw86hq2frUbDSJGy9o/C/qYONbTjHPxajgYUwgYIwHQYD
VR0OBBYEFLABKxUzVKBbnMbs1GZcg57Fpqt7MB8GA1UdIwQYMBaAFLABKxUzVKBb
nMbs1GZcg57Fpqt7MA8GA1UdEwEB/wQFMAMBAf8wLwYDVR0RBCgwJoIQdHVybi5l
eGFtcGxlLmNvbYISKi50dXJuLmV4YW1wbGUubmV0MAoGCCqGSM49BAMCA0kAMEYC
IQCRfqzKLjQ0af2zFg3sQsDAhmcSzzUgI1wZsWMjw6TVOAIhAO9MqjWiD4Ba1ufW
ziUByD6zjVrLYMD33yigBSa1W/l5
-----END CERTIFICATE-----
";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgj3LbaE2c17/xtCh8
zPdmuEjvDJtkJuVumAsKOnzllkuhRANCAARnTlYXFzGAZTAUUDhaz2jZp1Vv+w2E
U4zQRXgt0iyRbIop6WZmRu5BT8POoatn61Gw0iRsvaPwv6mDjW04xz8W
-----END PRIVATE KEY-----
";

    /// The test certificate, loaded from files as turnd loads it.
    pub(crate) fn test_cert() -> Arc<ReloadableCert> {
        let dir = std::env::temp_dir().join(format!(
            "turnd-tls-unit-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, CERT).unwrap();
        std::fs::write(&key, KEY).unwrap();
        let loaded = Arc::new(ReloadableCert::new(&cert, &key).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
        loaded
    }

    /// Runs a handshake in memory between turnd's server config and a client offering
    /// `alpn`; the negotiated protocol, or the error either side hit.
    fn handshake(alpn: &[&[u8]]) -> Result<Option<Vec<u8>>, rustls::Error> {
        let server_config = Arc::new(test_cert().server_config().unwrap());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client_config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(crate::probe::AcceptAnyCertificate(provider)))
            .with_no_client_auth();
        client_config.alpn_protocols = alpn.iter().map(|id| id.to_vec()).collect();
        let name = ServerName::try_from("turn.example.com").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client_config), name).unwrap();
        let mut server = rustls::ServerConnection::new(server_config).unwrap();
        for _ in 0..10 {
            let mut wire = Vec::new();
            client.write_tls(&mut wire).unwrap();
            let mut read = &wire[..];
            while !read.is_empty() {
                server.read_tls(&mut read).unwrap();
            }
            server.process_new_packets()?;
            let mut wire = Vec::new();
            server.write_tls(&mut wire).unwrap();
            let mut read = &wire[..];
            while !read.is_empty() {
                client.read_tls(&mut read).unwrap();
            }
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                assert_eq!(client.alpn_protocol(), server.alpn_protocol());
                return Ok(server.alpn_protocol().map(<[u8]>::to_vec));
            }
        }
        panic!("the handshake did not finish");
    }

    #[test]
    fn alpn_negotiates_the_stun_ids_serves_clients_without_alpn_and_refuses_others() {
        assert_eq!(handshake(&[b"stun.turn"]).unwrap().as_deref(), Some(&b"stun.turn"[..]));
        assert_eq!(handshake(&[b"stun.nat-discovery"]).unwrap().as_deref(), Some(&b"stun.nat-discovery"[..]));
        // turnd's preference wins when a client offers both, and other ids are ignored.
        let both: &[&[u8]] = &[b"h2", b"stun.nat-discovery", b"stun.turn"];
        assert_eq!(handshake(both).unwrap().as_deref(), Some(&b"stun.turn"[..]));
        assert_eq!(handshake(&[]).unwrap(), None, "no ALPN offered: served as before");
        // RFC 7301 §3.2: only other protocols offered, the server answers with a
        // no_application_protocol alert.
        assert_eq!(handshake(&[b"h2", b"http/1.1"]).unwrap_err(), rustls::Error::NoApplicationProtocol);
    }

    #[test]
    fn the_certificate_names_are_matched_as_dns_names() {
        let cert = test_cert();
        assert!(cert.is_valid_for("turn.example.com"));
        assert!(cert.is_valid_for("TURN.Example.COM"));
        assert!(cert.is_valid_for("eu.turn.example.net"));
        assert!(!cert.is_valid_for("turn.example.net"), "a wildcard covers one label, not its parent");
        assert!(!cert.is_valid_for("a.b.turn.example.net"));
        assert!(!cert.is_valid_for("www.example.com"));
        assert!(!cert.is_valid_for("127.0.0.1"));
        assert!(!cert.is_valid_for(""));
    }
}
