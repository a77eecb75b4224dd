//! RFC 5780 NAT behaviour discovery: Binding answers that let a client learn how its
//! NAT maps and filters (coturn's `--rfc5780`).
//!
//! # Addresses
//!
//! The server answers on four UDP transport addresses: two IPs (the *primary*, a UDP
//! `[[listen]]` address, and `[nat-discovery] alternate-address`) times two ports (the
//! primary's and `alternate-port`). The shell binds the three besides the primary as
//! ordinary UDP listeners of every worker (serve.rs `bind_listeners`), so a request
//! may arrive on any of them and an answer may leave from any of them: the core names
//! the source in `Output::Transmit`'s `to.server`, and the shell's
//! `UdpListeners::reply_via` picks the socket bound there. [`NatDiscovery`] is all the
//! core knows: the primary and the alternate transport addresses.
//!
//! # Binding answers
//!
//! With discovery on, every Binding success over UDP to one of the four addresses
//! carries, besides XOR-MAPPED-ADDRESS (the request's source, always):
//!
//! - RESPONSE-ORIGIN: the address the answer leaves from;
//! - OTHER-ADDRESS: the address differing from the one the request arrived on in both
//!   IP and port (RFC 5780 §6.1).
//!
//! It honours CHANGE-REQUEST (the answer leaves from the other IP, the other port, or
//! both), RESPONSE-PORT (the answer goes to that port of the client's own IP) and
//! PADDING (the answer is padded, see below). Such answers skip the Binding fast path
//! (`stun::binding`), which only writes XOR-MAPPED-ADDRESS.
//!
//! # Off, and elsewhere
//!
//! Discovery is off unless `alternate-address` is set. While it is off, and for any
//! request it does not apply to (a method other than Binding, or a Binding that
//! arrived on an address that is not one of the four, e.g. a listener of the other
//! family), CHANGE-REQUEST, RESPONSE-PORT and PADDING stay what they were before: unknown
//! comprehension-required attributes, answered with 420 and UNKNOWN-ATTRIBUTES (RFC
//! 5780 §7.2, RFC 8489 §6.3.1.1). A client that sees 420 knows the server cannot test.
//!
//! Over TCP and TLS the answer cannot leave from another socket, nor go to another
//! port: a Binding there with a CHANGE-REQUEST that asks for a change, or with
//! RESPONSE-PORT, gets 400 Bad Request (rather than an answer that silently ignores
//! them and so would make the client misjudge its NAT). PADDING is honoured there;
//! RESPONSE-ORIGIN and OTHER-ADDRESS are left out, as the alternate addresses have no
//! TCP listeners.
//!
//! # Not a reflector (RFC 5780 §9)
//!
//! - A changed answer (CHANGE-REQUEST) still goes to the request's source IP and port.
//! - RESPONSE-PORT changes the destination port only: never the IP, so it cannot
//!   direct answers at a third party.
//! - Every answer, padded or not, is held to the request's amplification budget over
//!   UDP (`AMPLIFICATION_LIMIT` times the request, see `Server::respond`): SOFTWARE and
//!   PADDING go in only as far as they fit, so a small request with PADDING gets a
//!   small answer. One exception: the budget never falls below the bare discovery
//!   answer (XOR-MAPPED-ADDRESS, RESPONSE-ORIGIN, OTHER-ADDRESS, FINGERPRINT: 64 bytes
//!   over IPv4, 100 over IPv6), which a 20-byte attribute-less request would otherwise
//!   not get (3 x 20 = 60). That bounds what a spoofed request can draw to 3.2 times
//!   its size over IPv4 and 5 times over IPv6, at most 100 bytes per 20: fixed-size
//!   attributes, nothing the requester can grow.
//! - PADDING is at most [`PADDING_LEN`] bytes (RFC 5780 §7.6: the size of an MTU).

use super::outbox::Outbox;
use super::{ClientAddr, FiveTuple, Transport};
use crate::stun::attributes::{Attribute, ChangeRequest, Padding, ResponsePort};
use crate::stun::errors::{self, ErrorKind};
use crate::stun::message::{self, Message, Protection};
use std::net::SocketAddr;
use stun_codec::rfc5389::attributes::Software;
use stun_codec::rfc5780::attributes::{OtherAddress, ResponseOrigin};
use stun_codec::AttributeType;

/// The most PADDING an answer carries: RFC 5780 §7.6 asks for the MTU of the outgoing
/// interface, which turnd takes to be Ethernet's.
pub const PADDING_LEN: usize = 1500;

/// The two transport addresses of RFC 5780 discovery, of one family, differing in IP
/// and in port; the server answers on all four combinations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatDiscovery {
    /// A UDP listener's address.
    pub primary: SocketAddr,
    /// The alternate IP and port.
    pub alternate: SocketAddr,
}

impl NatDiscovery {
    /// Where `server` sits among the four addresses: (alternate IP, alternate port), or
    /// `None` if it is not one of them.
    pub fn locate(&self, server: SocketAddr) -> Option<(bool, bool)> {
        let ip = if server.ip() == self.primary.ip() {
            false
        } else if server.ip() == self.alternate.ip() {
            true
        } else {
            return None;
        };
        let port = if server.port() == self.primary.port() {
            false
        } else if server.port() == self.alternate.port() {
            true
        } else {
            return None;
        };
        Some((ip, port))
    }

    /// The address with the alternate IP or not, the alternate port or not.
    pub fn address(&self, alternate_ip: bool, alternate_port: bool) -> SocketAddr {
        let ip = if alternate_ip { self.alternate.ip() } else { self.primary.ip() };
        let port = if alternate_port { self.alternate.port() } else { self.primary.port() };
        SocketAddr::new(ip, port)
    }

    /// All four addresses, the primary first.
    pub fn addresses(&self) -> [SocketAddr; 4] {
        [self.address(false, false), self.address(false, true), self.address(true, false), self.address(true, true)]
    }
}

/// The RFC 5780 request attributes `request` carries that are comprehension-required
/// (all three are), for a 420 when discovery does not apply.
pub(crate) fn request_attributes(request: &Message) -> Vec<AttributeType> {
    let mut found: Vec<AttributeType> = Vec::new();
    for attribute in request.attributes() {
        let code = match attribute {
            Attribute::ChangeRequest(_) => ChangeRequest::CODEPOINT,
            Attribute::ResponsePort(_) => ResponsePort::CODEPOINT,
            Attribute::Padding(_) => Padding::CODEPOINT,
            _ => continue,
        };
        if !found.iter().any(|t| t.as_u16() == code) {
            found.push(AttributeType::new(code));
        }
    }
    found
}

impl NatDiscovery {
    /// RFC 5780 §6.1: the Binding answer `response` (already holding
    /// XOR-MAPPED-ADDRESS) completed and queued per the request's CHANGE-REQUEST,
    /// RESPONSE-PORT and PADDING; the error to answer with instead when the request
    /// asks for what cannot be done.
    pub(crate) fn answer(
        &self,
        out: &mut Outbox,
        software: Option<&str>,
        from: FiveTuple,
        request: &Message,
        mut response: Message,
    ) -> Result<(), ErrorKind> {
        let change = match request.get_attribute::<ChangeRequest>().map(ChangeRequest::flags) {
            None => (false, false),
            Some(Some(flags)) => flags,
            Some(None) => return Err(errors::BAD_REQUEST),
        };
        let response_port = match request.get_attribute::<ResponsePort>().map(ResponsePort::port) {
            None => None,
            Some(Some(port)) if port != 0 => Some(port),
            Some(_) => return Err(errors::BAD_REQUEST),
        };
        let to = if from.transport == Transport::Udp {
            let (ip, port) = self.locate(from.server).ok_or(errors::BAD_REQUEST)?;
            let origin = self.address(ip ^ change.0, port ^ change.1);
            response.add_attribute(ResponseOrigin::new(origin));
            response.add_attribute(OtherAddress::new(self.address(!ip, !port)));
            // Never another IP than the request's source: not a reflector.
            let client = SocketAddr::new(from.client.ip(), response_port.unwrap_or(from.client.port()));
            FiveTuple {
                transport: from.transport,
                client: ClientAddr::new(client),
                server: origin,
                tenant: from.tenant,
            }
        } else if change.0 || change.1 || response_port.is_some() {
            // A stream cannot be answered from another address nor to another port.
            return Err(errors::BAD_REQUEST);
        } else {
            from
        };
        // The budget's floor: the answer with the discovery attributes and FINGERPRINT
        // but without SOFTWARE or PADDING, which only go in within 3x the request.
        if let Some(budget) = out.budget {
            let floor =
                message::encode(response.clone(), Protection { key: None, fingerprint: true }).map_or(0, |b| b.len());
            out.budget = Some(budget.max(floor));
        }
        if request.get_attribute::<Padding>().is_some() {
            if let Some(padding) = padding_for(&response, software, out.budget) {
                response.add_attribute(padding);
            }
        }
        out.respond(to, response, None, software);
        Ok(())
    }
}

/// PADDING for `response`: [`PADDING_LEN`] bytes, or less so that the answer with
/// SOFTWARE and FINGERPRINT stays within `budget`; `None` if not even an empty one fits.
fn padding_for(response: &Message, software: Option<&str>, budget: Option<usize>) -> Option<Padding> {
    let encoded = message::encode(response.clone(), Protection { key: None, fingerprint: true })?.len();
    let software = software
        .and_then(|s| Software::new(s.to_owned()).ok())
        .map_or(0, |s| 4 + s.description().len().next_multiple_of(4));
    let room = budget.map_or(usize::MAX, |budget| budget.saturating_sub(encoded + software));
    // The attribute's own header, then a value that keeps the message 4-aligned.
    let len = room.checked_sub(4)?.min(PADDING_LEN) / 4 * 4;
    Some(crate::stun::attributes::Opaque(vec![0; len]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::tests_support::CountingRng;
    use crate::turn::{CoreConfig, Ledger, Output, Received, Server};
    use std::time::Instant;
    use stun_codec::rfc5389::attributes::{ErrorCode, UnknownAttributes, XorMappedAddress};
    use stun_codec::rfc5389::methods::BINDING;
    use stun_codec::{MessageClass, TransactionId};

    const PRIMARY: &str = "192.0.2.1:3478";
    const ALTERNATE: &str = "192.0.2.3:3479";
    const CLIENT: &str = "198.51.100.7:40000";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn discovery() -> NatDiscovery {
        NatDiscovery { primary: addr(PRIMARY), alternate: addr(ALTERNATE) }
    }

    fn server(on: bool) -> Server {
        let config = CoreConfig { nat_discovery: on.then_some(discovery()), ..CoreConfig::default() };
        let ledger = std::cell::RefCell::new(Ledger::new(&config));
        Server::new(config, Box::new(CountingRng::default()), Instant::now(), &ledger)
    }

    fn padding(len: usize) -> Padding {
        crate::stun::attributes::Opaque(vec![0; len])
    }

    fn udp(server: &str) -> FiveTuple {
        FiveTuple {
            transport: Transport::Udp,
            client: addr(CLIENT).into(),
            server: addr(server),
            tenant: Default::default(),
        }
    }

    fn binding(attributes: Vec<Attribute>, fingerprint: bool) -> Vec<u8> {
        let mut m = Message::new(MessageClass::Request, BINDING, TransactionId::new([5; 12]));
        for a in attributes {
            m.add_attribute(a);
        }
        message::encode(m, Protection { key: None, fingerprint }).unwrap()
    }

    /// Feeds `packet` from `from`; returns where each answer went and what it was.
    fn exchange(server: &mut Server, from: FiveTuple, packet: &[u8]) -> Vec<(FiveTuple, Vec<u8>, Message)> {
        let now = Instant::now();
        if server.handle_client_packet(now, from, packet) == Received::Request {
            // Binding takes nothing from the ledger: a fresh one serves.
            server.handle_request(now, 0, from, packet, &std::cell::RefCell::new(Ledger::new(&CoreConfig::default())));
        }
        let mut out = Vec::new();
        while let Some(output) = server.poll_output() {
            if let Output::Transmit { to, bytes } = output {
                let decoded = message::decode(&bytes).unwrap().message;
                out.push((to, bytes, decoded));
            }
        }
        out
    }

    fn one(server: &mut Server, from: FiveTuple, packet: &[u8]) -> (FiveTuple, Vec<u8>, Message) {
        let mut answers = exchange(server, from, packet);
        assert_eq!(answers.len(), 1, "one answer");
        answers.remove(0)
    }

    #[test]
    fn plain_bindings_carry_response_origin_and_other_address_on_each_of_the_four() {
        let mut s = server(true);
        let discovery = discovery();
        for arrived in discovery.addresses() {
            for fingerprint in [false, true] {
                let (to, _, answer) = one(&mut s, udp(&arrived.to_string()), &binding(vec![], fingerprint));
                assert_eq!(to, udp(&arrived.to_string()), "answered from where it arrived");
                assert_eq!(answer.get_attribute::<XorMappedAddress>().unwrap().address(), addr(CLIENT));
                assert_eq!(answer.get_attribute::<ResponseOrigin>().unwrap().address(), arrived);
                let other = answer.get_attribute::<OtherAddress>().unwrap().address();
                assert!(other.ip() != arrived.ip() && other.port() != arrived.port(), "{arrived} -> {other}");
                assert!(discovery.addresses().contains(&other));
            }
        }
    }

    #[test]
    fn each_change_request_leaves_from_the_changed_address() {
        let mut s = server(true);
        let cases = [
            ((false, false), PRIMARY),
            ((false, true), "192.0.2.1:3479"),
            ((true, false), "192.0.2.3:3478"),
            ((true, true), ALTERNATE),
        ];
        for ((ip, port), expected) in cases {
            let request = binding(vec![ChangeRequest::with_flags(ip, port).into()], true);
            let (to, _, answer) = one(&mut s, udp(PRIMARY), &request);
            assert_eq!(to.server, addr(expected), "change ip {ip} port {port}");
            assert_eq!(to.client.get(), addr(CLIENT), "a changed answer goes to the request's source");
            assert_eq!(answer.get_attribute::<ResponseOrigin>().unwrap().address(), addr(expected));
            assert_eq!(answer.get_attribute::<OtherAddress>().unwrap().address(), addr(ALTERNATE));
        }
        // From the alternate address, changing both comes back to the primary.
        let request = binding(vec![ChangeRequest::with_flags(true, true).into()], true);
        let (to, _, answer) = one(&mut s, udp(ALTERNATE), &request);
        assert_eq!(to.server, addr(PRIMARY));
        assert_eq!(answer.get_attribute::<OtherAddress>().unwrap().address(), addr(PRIMARY));
    }

    #[test]
    fn response_port_changes_the_port_and_never_the_ip() {
        let mut s = server(true);
        let request =
            binding(vec![ResponsePort::with_port(5555).into(), ChangeRequest::with_flags(true, false).into()], true);
        let (to, _, answer) = one(&mut s, udp(PRIMARY), &request);
        assert_eq!(to.client.get(), addr("198.51.100.7:5555"));
        assert_eq!(to.server, addr("192.0.2.3:3478"));
        assert_eq!(answer.get_attribute::<XorMappedAddress>().unwrap().address(), addr(CLIENT));
        // Port 0, or a value of the wrong size: 400.
        for bad in [ResponsePort::with_port(0), crate::stun::attributes::Opaque(vec![1, 2])] {
            let (to, _, answer) = one(&mut s, udp(PRIMARY), &binding(vec![bad.into()], true));
            assert_eq!(to, udp(PRIMARY));
            assert_eq!(answer.get_attribute::<ErrorCode>().unwrap().code(), 400);
        }
    }

    #[test]
    fn padding_is_held_to_the_amplification_budget() {
        let mut s = server(true);
        // A bare 20-byte request still gets the discovery attributes (64 bytes), not
        // SOFTWARE.
        let bare = binding(vec![], false);
        let (_, bytes, answer) = one(&mut s, udp(PRIMARY), &bare);
        assert_eq!((bare.len(), bytes.len()), (20, 64));
        assert!(answer.get_attribute::<OtherAddress>().is_some());
        assert!(answer.get_attribute::<Software>().is_none());
        // A small request asking for padding gets an answer within 3x its size.
        let small = binding(vec![padding(0).into()], true);
        let (_, bytes, answer) = one(&mut s, udp(PRIMARY), &small);
        assert!(bytes.len() <= 3 * small.len(), "{} > 3 x {}", bytes.len(), small.len());
        assert!(answer.get_attribute::<Padding>().is_some(), "what fits is sent");
        // A request as big as an MTU gets the full padding.
        let big = binding(vec![padding(PADDING_LEN).into()], true);
        let (_, bytes, answer) = one(&mut s, udp(PRIMARY), &big);
        assert_eq!(answer.get_attribute::<Padding>().unwrap().value().len(), PADDING_LEN);
        assert!(bytes.len() <= 3 * big.len());
        // Over TCP there is no budget: full padding, and no RFC 5780 addresses.
        let tcp = FiveTuple { transport: Transport::Tcp, ..udp(PRIMARY) };
        let (to, _, answer) = one(&mut s, tcp, &small);
        assert_eq!(to, tcp);
        assert_eq!(answer.get_attribute::<Padding>().unwrap().value().len(), PADDING_LEN);
        assert!(answer.get_attribute::<OtherAddress>().is_none());
    }

    #[test]
    fn over_tcp_a_change_or_a_response_port_gets_400() {
        let mut s = server(true);
        let tcp = FiveTuple { transport: Transport::Tcp, ..udp(PRIMARY) };
        for attribute in [ChangeRequest::with_flags(false, true).into(), ResponsePort::with_port(9).into()] {
            let (to, _, answer) = one(&mut s, tcp, &binding(vec![attribute], true));
            assert_eq!(to, tcp);
            assert_eq!(answer.get_attribute::<ErrorCode>().unwrap().code(), 400);
        }
        let (_, _, answer) = one(&mut s, tcp, &binding(vec![ChangeRequest::with_flags(false, false).into()], true));
        assert_eq!(answer.class(), MessageClass::SuccessResponse, "no change asked: answered");
    }

    #[test]
    fn disabled_or_elsewhere_the_rfc5780_attributes_get_420() {
        let requests = [
            (ChangeRequest::with_flags(true, true).into(), ChangeRequest::CODEPOINT),
            (ResponsePort::with_port(9).into(), ResponsePort::CODEPOINT),
            (padding(0).into(), Padding::CODEPOINT),
        ];
        for (on, server_address) in [(false, PRIMARY), (true, "192.0.2.9:3478"), (true, "192.0.2.1:9999")] {
            let mut s = server(on);
            for (attribute, code) in requests.clone() {
                let (to, _, answer) = one(&mut s, udp(server_address), &binding(vec![attribute], true));
                assert_eq!(to, udp(server_address));
                assert_eq!(answer.get_attribute::<ErrorCode>().unwrap().code(), 420, "{on} {server_address}");
                let unknown: Vec<u16> = answer
                    .get_attribute::<UnknownAttributes>()
                    .unwrap()
                    .unknowns()
                    .iter()
                    .map(|t| t.as_u16())
                    .collect();
                assert_eq!(unknown, vec![code]);
            }
            // And plain Bindings there carry none of the RFC 5780 attributes.
            let (_, _, answer) = one(&mut s, udp(server_address), &binding(vec![], true));
            assert!(answer.get_attribute::<OtherAddress>().is_none());
            assert!(answer.get_attribute::<ResponseOrigin>().is_none());
        }
    }
}
