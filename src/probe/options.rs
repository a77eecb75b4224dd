//! What a run is given: the server, credentials, the step timeout, TLS checking.

use super::url::ServerUrl;
pub use crate::client::Credentials;
use std::path::PathBuf;
use std::time::Duration;

/// How the probe checks the server's TLS certificate.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// CA certificates (PEM) to trust instead of the system's bundle.
    pub ca_file: Option<PathBuf>,
    /// The name to verify the certificate against (default: the URL's host).
    pub server_name: Option<String>,
    /// Accept any certificate. Only for a first look at a server whose certificate is
    /// not ready yet: the probe then proves nothing about who answered.
    pub danger_accept_invalid_certs: bool,
}

/// Everything a probe run needs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The server.
    pub url: ServerUrl,
    /// Credentials for the allocation.
    pub credentials: Credentials,
    /// The longest wait for any one step.
    pub timeout: Duration,
    /// Certificate checking for `stuns:`/`turns:`.
    pub tls: TlsOptions,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::auth::rest_password;

    #[test]
    fn rest_credentials_follow_the_turn_rest_draft() {
        let c = Credentials::rest("s3cret", "probe", 1_700_000_000, Duration::from_secs(600));
        let Credentials::LongTerm { username, password } = c else { panic!("long-term") };
        assert_eq!(username, "1700000600:probe");
        assert_eq!(password, rest_password(b"s3cret", "1700000600:probe"));
    }
}
