//! One run: the steps in order, each timed and reported as it completes.

use super::error::ProbeError;
use super::options::{Credentials, Options};
use super::relay::{relay_by_channel, relay_by_indication, Peer};
use super::report::{Failure, Status, Step, Summary};
use super::steps::{
    binding, challenge, connect, local_of, random_bytes, random_payload, request, resolve, source_address_towards,
    OPEN_RELAY,
};
use super::PROBE_CHANNEL;
use crate::client::blocking::Link;
use crate::client::{Client, Request};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Runs the probe, calling `report` after each step. Returns the summary, or the first
/// failure (which has also been reported as a failed step).
pub fn run(options: &Options, report: &mut dyn FnMut(&Step)) -> Result<Summary, Failure> {
    let mut run = Run { report, summary: Summary::default() };
    let result = run.all(options);
    result.map(|()| run.summary)
}

/// The state of one run: where steps are reported and what was found so far.
struct Run<'a> {
    report: &'a mut dyn FnMut(&Step),
    summary: Summary,
}

impl Run<'_> {
    /// Times `f` as step `name`, reports it, and turns its error into a [`Failure`].
    fn step<T>(
        &mut self,
        name: &'static str,
        f: impl FnOnce(&mut Summary) -> Result<(T, String), ProbeError>,
    ) -> Result<T, Failure> {
        let start = Instant::now();
        let result = f(&mut self.summary);
        let elapsed = start.elapsed();
        match result {
            Ok((value, detail)) => {
                (self.report)(&Step { name, elapsed, status: Status::Ok, detail });
                Ok(value)
            }
            Err(error) => {
                let detail = error.to_string();
                (self.report)(&Step { name, elapsed, status: Status::Failed, detail });
                Err(Failure { step: name, error })
            }
        }
    }

    fn warn(&mut self, name: &'static str, detail: String) {
        (self.report)(&Step { name, elapsed: Duration::ZERO, status: Status::Warning, detail: detail.clone() });
        self.summary.warnings.push(detail);
    }

    fn all(&mut self, options: &Options) -> Result<(), Failure> {
        let url = &options.url;
        let timeout = options.timeout;
        let server = self.step("resolve", |_| {
            let all = resolve(&url.host, url.port)?;
            let list: Vec<String> = all.iter().map(|a| a.to_string()).collect();
            Ok((all[0], format!("{} -> {} ({})", url.host, list.join(", "), url.transport)))
        })?;
        self.summary.server = Some(server);

        let mut conn = self.step("connect", |_| {
            let conn = connect(server, url, &options.tls, timeout)?;
            let detail = match conn.link() {
                Link::Udp(s) => format!("udp socket {}", s.local_addr().map(|a| a.to_string()).unwrap_or_default()),
                Link::Tcp(s) => format!("tcp connected from {}", local_of(s)),
                Link::Tls(s) => format!(
                    "tls {} from {}",
                    s.conn.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default(),
                    local_of(&s.sock)
                ),
            };
            Ok((conn, detail))
        })?;

        // A UDP socket bound to the wildcard address: ask the routing table which source
        // address it uses towards the server (connect() on UDP sends nothing).
        let local = conn.local_addr().map(|l| match l.ip().is_unspecified() {
            true => source_address_towards(server).map_or(l, |ip| SocketAddr::new(ip, l.port())),
            false => l,
        });
        let (mapped, software, mut client) = self.step("binding", |summary| {
            // Transaction ids an off-path attacker cannot guess: seeded from the system.
            let mut client = Client::new(options.credentials.clone(), random_bytes()?);
            let (mapped, software) = binding(&mut conn, &mut client, timeout)?;
            summary.mapped = Some(mapped);
            let mut detail = format!("mapped address {mapped}");
            match local {
                Some(l) if l.ip() != mapped.ip() && !l.ip().is_unspecified() => {
                    detail += &format!(" (behind NAT: local address {})", l.ip());
                }
                Some(l) if l.port() != mapped.port() => detail += " (port translated: behind NAT)",
                _ => {}
            }
            if let Some(software) = &software {
                detail += &format!(", server software {software:?}");
            }
            Ok(((mapped, software, client), detail))
        })?;
        let _ = (mapped, software);
        if !url.scheme.is_turn() {
            return Ok(());
        }

        let challenge = self.step("challenge", |_| {
            let (realm, nonce) = challenge(&mut conn, &mut client, timeout)?;
            Ok(((realm.clone(), nonce.clone()), format!("401 with realm {realm:?} and a nonce")))
        });
        match challenge {
            Ok(_) => {}
            Err(Failure { error: ProbeError::Relay(open), .. }) if open == OPEN_RELAY => {
                self.warn("challenge", "the server allocated WITHOUT credentials: an open relay".into());
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        if options.credentials == Credentials::None {
            self.warn("allocate", "not checked: no credentials (give --user and --password, or --secret)".into());
            return Ok(());
        }

        let (relayed, lifetime) = self.step("allocate", |summary| {
            let response = request(&mut conn, &mut client, &Request::allocate(), timeout)?;
            let relayed =
                response.relayed().ok_or(ProbeError::Malformed("Allocate success without XOR-RELAYED-ADDRESS"))?;
            let lifetime = response.lifetime().unwrap_or_default();
            summary.relayed = Some(relayed);
            Ok(((relayed, lifetime), format!("relayed address {relayed}, lifetime {}s", lifetime.as_secs())))
        })?;
        if lifetime.is_zero() {
            self.warn("allocate", "the server granted no LIFETIME".into());
        }
        if relayed.ip().is_loopback() && !server.ip().is_loopback() {
            self.warn("allocate", "the relayed address is loopback: set the server's relay/external address".into());
        }

        let peer = self.step("peer", |_| {
            let peer = Peer::open(&conn, server, relayed, timeout)?;
            let detail = match &peer {
                Peer::Socket { reflexive, .. } => format!("a local UDP socket, seen by the server as {reflexive}"),
                Peer::Relay { address } => {
                    format!("the allocation itself ({address}): no UDP answer to a Binding from a second socket")
                }
            };
            Ok((peer, detail))
        })?;
        let peer_addr = peer.address();

        self.step("permission", |_| {
            request(&mut conn, &mut client, &Request::create_permission(peer_addr), timeout)?;
            Ok(((), format!("for {}", peer_addr.ip())))
        })?;
        let peer_addr = self.step("indication", |_| {
            let payload = random_payload("indication")?;
            relay_by_indication(&mut conn, &mut client, &peer, relayed, &payload, timeout)
                .map(|(detail, seen)| (seen, detail))
        })?;
        if peer_addr != peer.address() {
            self.warn(
                "indication",
                format!(
                    "the peer socket reached the relay from port {} but the server from {}: this side has an \
                     address-dependent (symmetric) NAT, so peers will only reach it through the relay",
                    peer_addr.port(),
                    peer.address().port()
                ),
            );
        }
        self.step("channel", |_| {
            request(&mut conn, &mut client, &Request::channel_bind(PROBE_CHANNEL, peer_addr), timeout)?;
            Ok(((), format!("0x{PROBE_CHANNEL:04X} bound to {peer_addr}")))
        })?;
        self.step("channel-data", |summary| {
            let payload = random_payload("channel")?;
            let detail = relay_by_channel(&mut conn, &peer, relayed, &payload, timeout)?;
            summary.relayed_data = true;
            Ok(((), detail))
        })?;
        self.step("refresh", |_| {
            request(&mut conn, &mut client, &Request::refresh(0), timeout)?;
            Ok(((), "allocation deleted (LIFETIME 0)".into()))
        })?;
        Ok(())
    }
}
