//! `turnd probe URL`: checks a STUN/TURN server from the outside, as an operator would
//! after a deploy.
//!
//! The probe resolves the URL (RFC 7064 `stun:`/`stuns:`, RFC 7065 `turn:`/`turns:` with
//! `?transport=udp|tcp`), sends a Binding request, allocates a relay with long-term or
//! TURN REST API credentials, then relays datagrams through the allocation and back to
//! itself, both with Send/Data indications and over a channel. Every step is reported
//! with its timing as it completes; the first failing step ends the run with an error
//! that carries the STUN error code (if any) and what it usually means.
//!
//! It is the library's TURN client ([`crate::client`]) on its blocking transport (one
//! server, one request at a time: there is nothing to multiplex). Nothing that comes
//! from the network is unwrapped: every malformed answer is a [`ProbeError`].
//!
//! The files, by concern: [`url`] parses the URL, [`options`] holds what a run is
//! given, `steps` and `relay` do the talking (on [`crate::client`] and its blocking
//! transport), `run` orders the steps, [`report`] prints them, [`error`] explains
//! failures, `tls` configures certificate checking, and [`cli`](mod@cli) is the command line.

pub mod cli;
pub mod error;
pub mod options;
mod relay;
pub mod report;
mod run;
mod steps;
mod tls;
pub mod url;

pub use cli::{cli, CliError, ProbeArgs};
pub use error::{error_code_hint, reason_phrase, ProbeError};
pub use options::{Credentials, Options, TlsOptions};
pub use report::{Failure, Status, Step, Summary};
pub use run::run;
pub use tls::AcceptAnyCertificate;
pub use url::{Scheme, ServerUrl, Transport, UrlError, DEFAULT_PORT, DEFAULT_TLS_PORT};

use std::time::Duration;

/// The channel number the probe binds (the first one RFC 8656 §12 allows).
pub const PROBE_CHANNEL: u16 = 0x4000;
/// How long the probe waits for a UDP Binding answer to its peer socket before
/// it falls back to relaying to the allocation itself.
const PEER_BINDING_WAIT: Duration = Duration::from_millis(1500);
