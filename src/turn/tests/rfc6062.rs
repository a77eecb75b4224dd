//! TCP allocations (RFC 6062): Connect, ConnectionBind, their timeouts and bounds.

use super::*;

#[test]
fn rfc6062_connect_bind_and_expiry_on_virtual_time() {
    use crate::turn::tcp_relay::{connect_method, connection_bind_method};
    let mut h = Harness::new();
    h.client.transport = Transport::Tcp;
    let response = h.request(ALLOCATE, vec![RequestedTransport::new(6).into()]);
    assert_eq!(response.class(), MessageClass::SuccessResponse);
    // Connect: the answer waits for the shell's connect.
    let bytes = h.authenticated(connect_method(), vec![XorPeerAddress::new(addr(PEER)).into()]);
    assert!(h.send_raw(&bytes).is_empty());
    let Some(Output::ConnectPeer { connection, peer, .. }) = h.tcp_outputs.pop() else { panic!("no ConnectPeer") };
    assert_eq!(peer, addr(PEER));
    h.server.handle_peer_connected(h.now, connection, true);
    let answer = message::decode(&h.drain()[0]).unwrap().message;
    assert_eq!(answer.class(), MessageClass::SuccessResponse);
    let id = answer.get_attribute::<crate::stun::attributes::ConnectionId>().unwrap().value().to_vec();
    assert_eq!(id, connection.0.to_be_bytes());
    // ConnectionBind on a new connection (the data connection).
    let control = h.client;
    h.client.client = addr("198.51.100.1:40200").into();
    h.nonce = None;
    let bind = h.request(connection_bind_method(), vec![crate::stun::attributes::Opaque::<0x002A>(id.clone()).into()]);
    assert_eq!(bind.class(), MessageClass::SuccessResponse);
    assert!(matches!(h.tcp_outputs.pop(), Some(Output::BindData { data, .. }) if data == h.client));
    // Deleting the allocation closes the bound connection and its data connection.
    h.client = control;
    h.request(REFRESH, vec![Lifetime::new(Duration::ZERO).unwrap().into()]);
    assert!(matches!(h.tcp_outputs.pop(), Some(Output::ClosePeerConnection { data: Some(_), .. })));
}

#[test]
fn rfc6062_unbound_connections_close_after_30s_and_failures_get_447() {
    use crate::turn::tcp_relay::connect_method;
    let mut h = Harness::new();
    h.client.transport = Transport::Tls;
    h.request(ALLOCATE, vec![RequestedTransport::new(6).into()]);
    let bytes = h.authenticated(connect_method(), vec![XorPeerAddress::new(addr(PEER)).into()]);
    h.send_raw(&bytes);
    let Some(Output::ConnectPeer { connection, .. }) = h.tcp_outputs.pop() else { panic!("no ConnectPeer") };
    h.server.handle_peer_connected(h.now, connection, true);
    h.drain();
    h.advance(Duration::from_secs(31));
    assert!(matches!(h.tcp_outputs.pop(), Some(Output::ClosePeerConnection { data: None, .. })));
    // A failed connect: 447.
    let bytes = h.authenticated(connect_method(), vec![XorPeerAddress::new(addr("192.0.2.201:1")).into()]);
    h.send_raw(&bytes);
    let Some(Output::ConnectPeer { connection, .. }) = h.tcp_outputs.pop() else { panic!("no ConnectPeer") };
    h.server.handle_peer_connected(h.now, connection, false);
    assert_eq!(error_code(&message::decode(&h.drain()[0]).unwrap().message), Some(447));
    // UDP-only attributes with TCP: 400.
    h.client.client = addr("198.51.100.1:40300").into();
    let response = h.request(ALLOCATE, vec![RequestedTransport::new(6).into(), EvenPort::new(false).into()]);
    assert_eq!(error_code(&response), Some(400));
}

#[test]
fn rfc6062_connect_attempts_in_progress_are_bounded_per_allocation() {
    use crate::turn::tcp_relay::{connect_method, MAX_CONNECTING_PER_ALLOCATION};
    let mut h = Harness::new();
    h.client.transport = Transport::Tcp;
    assert_eq!(h.request(ALLOCATE, vec![RequestedTransport::new(6).into()]).class(), MessageClass::SuccessResponse);
    let mut connecting = Vec::new();
    for i in 0..MAX_CONNECTING_PER_ALLOCATION as u16 {
        let bytes = h.authenticated(
            connect_method(),
            vec![XorPeerAddress::new(addr(&format!("192.0.2.200:{}", 1000 + i))).into()],
        );
        assert!(h.send_raw(&bytes).is_empty(), "Connect {i} waits for the shell");
        let Some(Output::ConnectPeer { connection, .. }) = h.tcp_outputs.pop() else { panic!("no ConnectPeer") };
        connecting.push(connection);
    }
    // One more while the first eight still connect: refused, with no socket opened.
    let bytes = h.authenticated(connect_method(), vec![XorPeerAddress::new(addr("192.0.2.200:2000")).into()]);
    let answer = message::decode(&h.send_raw(&bytes)[0]).unwrap().message;
    assert_eq!(error_code(&answer), Some(486));
    assert!(h.tcp_outputs.is_empty());
    // One finishes (fails): room for one more.
    h.server.handle_peer_connected(h.now, connecting[0], false);
    h.drain();
    let bytes = h.authenticated(connect_method(), vec![XorPeerAddress::new(addr("192.0.2.200:2001")).into()]);
    assert!(h.send_raw(&bytes).is_empty());
    assert!(matches!(h.tcp_outputs.pop(), Some(Output::ConnectPeer { .. })));
}
