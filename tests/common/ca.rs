//! A test PKI made with the `openssl` tool: a CA and a server certificate it signed.
//!
//! TLS clients that verify properly (rustls/webpki in `turnd probe`, Chromium) refuse a
//! self-signed certificate that is its own CA ("CA used as end entity"), so the TLS
//! tests that check verification use this pair instead of `common::TestCert`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A CA and a leaf certificate for `names` (IP addresses and DNS names), in a
/// temporary directory removed on drop.
pub struct TestCa {
    dir: PathBuf,
    /// The CA certificate (PEM): what clients trust.
    pub ca: PathBuf,
    /// The server certificate (PEM), signed by the CA.
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
}

/// Runs openssl with a time limit; panics with its output on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let mut child = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn openssl (package openssl)");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("openssl {args:?} did not finish in 30 s");
            }
        }
    }
    let out = child.wait_with_output().expect("openssl output");
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCa {
    /// Makes the CA and a server certificate valid for `names` (e.g. `["127.0.0.1",
    /// "localhost"]`): IP addresses become IP SANs, the rest DNS SANs.
    pub fn new(names: &[&str]) -> TestCa {
        let dir = std::env::temp_dir().join(format!(
            "turnd-ca-{}-{:x}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).expect("create the CA directory");
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
        let mut ca_args = vec!["req", "-x509"];
        ca_args.extend(ec);
        ca_args.extend(["-days", "2", "-subj", "/CN=turnd test CA", "-keyout", "ca.key", "-out", "ca.pem"]);
        ca_args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        ca_args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        openssl(&dir, &ca_args);

        let mut csr_args = vec!["req"];
        csr_args.extend(ec);
        csr_args.extend(["-subj", "/CN=turnd test server", "-keyout", "server.key", "-out", "server.csr"]);
        openssl(&dir, &csr_args);
        let sans: Vec<String> = names
            .iter()
            .map(|n| if n.parse::<std::net::IpAddr>().is_ok() { format!("IP:{n}") } else { format!("DNS:{n}") })
            .collect();
        let ext = format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName={}\n",
            sans.join(",")
        );
        std::fs::write(dir.join("server.ext"), ext).expect("write the extensions file");
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "server.ext",
                "-out",
                "server.pem",
            ],
        );
        TestCa { ca: dir.join("ca.pem"), cert: dir.join("server.pem"), key: dir.join("server.key"), dir }
    }

    /// `config_toml` with a `[tls]` section pointing at the server certificate.
    pub fn add_to(&self, config_toml: &str) -> String {
        format!(
            "{config_toml}\n[tls]\ncertificate = \"{}\"\nprivate-key = \"{}\"\n",
            self.cert.display(),
            self.key.display()
        )
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
