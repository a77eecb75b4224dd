//! The probe's building blocks: resolving, connecting, and the requests whose
//! answers the steps report (Binding, the unauthenticated challenge, authenticated
//! TURN requests), on the library client and its blocking transport.

use super::error::ProbeError;
use super::options::{Credentials, TlsOptions};
use super::tls::tls_handshake;
use super::url::{ServerUrl, Transport};
use crate::client::blocking::{Connection, Link};
use crate::client::{Client, Request, Response};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::Duration;

/// The marker a challenge step uses when the server allocated without asking.
pub(super) const OPEN_RELAY: &str = "open relay";

/// The source address the system would use to reach `server`.
pub(super) fn source_address_towards(server: SocketAddr) -> Option<IpAddr> {
    let socket = UdpSocket::bind(unspecified(server)).ok()?;
    socket.connect(server).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

pub(super) fn local_of(s: &TcpStream) -> String {
    s.local_addr().map(|a| a.to_string()).unwrap_or_default()
}

pub(super) fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, ProbeError> {
    let all: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|source| ProbeError::Resolve { host: host.to_owned(), source })?
        .collect();
    if all.is_empty() {
        return Err(ProbeError::NoAddress { host: host.to_owned() });
    }
    Ok(all)
}

pub(super) fn random_bytes<const N: usize>() -> Result<[u8; N], ProbeError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| ProbeError::Random)?;
    Ok(bytes)
}

/// A payload no stray packet can be mistaken for.
pub(super) fn random_payload(label: &str) -> Result<Vec<u8>, ProbeError> {
    let tag: String = random_bytes::<8>()?.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("turnd probe {label} {tag}").into_bytes())
}

/// The wildcard address of `server`'s family.
pub(super) fn unspecified(server: SocketAddr) -> SocketAddr {
    let ip = if server.is_ipv4() { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
    SocketAddr::new(ip, 0)
}

/// Opens the URL's transport to `server` (the TLS handshake included).
pub(super) fn connect(
    server: SocketAddr,
    url: &ServerUrl,
    tls: &TlsOptions,
    timeout: Duration,
) -> Result<Connection, ProbeError> {
    let io = |what| move |source| ProbeError::Io { what, source };
    let link = match url.transport {
        Transport::Udp => Link::Udp(UdpSocket::bind(unspecified(server)).map_err(io("binding a UDP socket"))?),
        Transport::Tcp => Link::Tcp(TcpStream::connect_timeout(&server, timeout).map_err(io("connecting"))?),
        Transport::Tls => {
            let tcp = TcpStream::connect_timeout(&server, timeout).map_err(io("connecting"))?;
            let name = tls.server_name.as_deref().unwrap_or(&url.host);
            Link::Tls(Box::new(tls_handshake(tcp, name, tls, timeout)?))
        }
    };
    Ok(Connection::new(link, server))
}

/// The error code of an error response as a [`ProbeError`].
fn error_of(response: &Response) -> ProbeError {
    match response.error() {
        Some(e) => ProbeError::ErrorResponse { code: e.code, reason: e.reason },
        None => ProbeError::Malformed("error response without ERROR-CODE"),
    }
}

/// One transaction without following challenges; the success response or its error.
fn transact(
    conn: &mut Connection,
    client: &mut Client,
    request: &Request,
    timeout: Duration,
) -> Result<Response, ProbeError> {
    let sent = client.request(request)?;
    let response = client.response(&sent, &conn.transact(&sent, timeout)?)?;
    if response.is_success() {
        Ok(response)
    } else {
        Err(error_of(&response))
    }
}

/// A Binding request; returns the mapped address and the server's SOFTWARE.
pub(super) fn binding(
    conn: &mut Connection,
    client: &mut Client,
    timeout: Duration,
) -> Result<(SocketAddr, Option<String>), ProbeError> {
    let response = transact(conn, client, &Request::binding(), timeout)?;
    let mapped = response.mapped().ok_or(ProbeError::Malformed("Binding success without XOR-MAPPED-ADDRESS"))?;
    Ok((mapped, response.software().map(str::to_owned)))
}

/// An unauthenticated Allocate, which a server that authenticates answers with 401,
/// a realm and a nonce (RFC 8489 §9.2.4), which the client keeps. A success means an
/// open relay: the probe deletes that allocation and reports it.
pub(super) fn challenge(
    conn: &mut Connection,
    client: &mut Client,
    timeout: Duration,
) -> Result<(String, String), ProbeError> {
    let sent = client.request(&Request::allocate().anonymous())?;
    let response = client.response(&sent, &conn.transact(&sent, timeout)?)?;
    if response.is_success() {
        let _ = transact(conn, client, &Request::refresh(0).anonymous(), timeout);
        return Err(ProbeError::Relay(OPEN_RELAY.into()));
    }
    match error_of(&response) {
        ProbeError::ErrorResponse { code: 401, .. } => {}
        other => return Err(other),
    }
    let realm = response.realm().ok_or(ProbeError::Malformed("401 without REALM"))?.to_owned();
    let nonce = response.nonce().ok_or(ProbeError::Malformed("401 without NONCE"))?.to_owned();
    client.set_challenge(&realm, &nonce);
    Ok((realm, nonce))
}

/// An authenticated request, following a 438 (or a 401 with a fresh nonce) as RFC
/// 8489 §9.2.5 says; the client checks the success response's MESSAGE-INTEGRITY.
pub(super) fn request(
    conn: &mut Connection,
    client: &mut Client,
    request: &Request,
    timeout: Duration,
) -> Result<Response, ProbeError> {
    if client.credentials() == &Credentials::None {
        return Err(ProbeError::ErrorResponse { code: 401, reason: "no credentials given".into() });
    }
    let response = conn.request(client, request, timeout)?;
    if response.is_success() {
        Ok(response)
    } else {
        Err(error_of(&response))
    }
}
