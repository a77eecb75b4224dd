//! TLS for `stuns:`/`turns:`: the client configuration (system or given CA bundle,
//! or `--insecure`) and a handshake bounded by the step timeout.

use super::error::ProbeError;
use super::options::TlsOptions;
use crate::client::blocking::TlsStream;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::io;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connects TLS over `tcp` and completes the handshake within `timeout`.
pub(super) fn tls_handshake(
    mut tcp: TcpStream,
    name: &str,
    options: &TlsOptions,
    timeout: Duration,
) -> Result<TlsStream, ProbeError> {
    let config = tls_config(options)?;
    let name = ServerName::try_from(name.to_owned()).map_err(|e| ProbeError::Tls(format!("server name: {e}")))?;
    let mut conn = rustls::ClientConnection::new(config, name).map_err(|e| ProbeError::Tls(e.to_string()))?;
    tcp.set_read_timeout(Some(timeout)).map_err(|source| ProbeError::Io { what: "socket option", source })?;
    let deadline = Instant::now() + timeout;
    while conn.is_handshaking() {
        if Instant::now() >= deadline {
            return Err(ProbeError::Tls(format!("no handshake within {timeout:?}")));
        }
        match conn.complete_io(&mut tcp) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(ProbeError::Tls(format!("no handshake within {timeout:?}")))
            }
            Err(e) => return Err(ProbeError::Tls(e.to_string())),
        }
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// Where Debian, Fedora and Alpine keep the system CA bundle.
const SYSTEM_CA_BUNDLES: [&str; 3] =
    ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];

fn tls_config(options: &TlsOptions) -> Result<Arc<rustls::ClientConfig>, ProbeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ProbeError::Tls(e.to_string()))?;
    let mut config = if options.danger_accept_invalid_certs {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let path = match &options.ca_file {
            Some(path) => path.clone(),
            None => SYSTEM_CA_BUNDLES.iter().map(PathBuf::from).find(|p| p.exists()).ok_or_else(|| {
                ProbeError::CaFile { path: PathBuf::from(SYSTEM_CA_BUNDLES[0]), reason: "no system CA bundle".into() }
            })?,
        };
        builder.with_root_certificates(load_roots(&path)?).with_no_client_auth()
    };
    // RFC 7443: says "TURN" to a server that routes by ALPN (a turnd listener sharing
    // 443 with HTTPS, `passthrough-to`); servers without ALPN support ignore it.
    config.alpn_protocols = vec![b"stun.turn".to_vec()];
    Ok(Arc::new(config))
}

fn load_roots(path: &Path) -> Result<rustls::RootCertStore, ProbeError> {
    let fail = |reason: String| ProbeError::CaFile { path: path.to_owned(), reason };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| fail(e.to_string()))? {
        let cert = cert.map_err(|e| fail(e.to_string()))?;
        roots.add(cert).map_err(|e| fail(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(fail("no certificates in the file".into()));
    }
    Ok(roots)
}

/// `--insecure`: accepts any server certificate (signatures are still checked, so the
/// handshake is real; who holds the key is not).
#[derive(Debug)]
pub struct AcceptAnyCertificate(pub Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
