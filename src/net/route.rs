//! Which worker a TCP or TLS client connection belongs to. It is decided by the
//! connection's first message: an RFC 6062 ConnectionBind goes to the worker holding
//! the peer connection it names (connection ids name their worker); anything else
//! goes by a hash of the client's address, which spreads connections over workers.
//! The chosen worker serves the connection from then on (see `stream_conn`).

use super::stream_channel::StreamEvent;
use crate::turn::tcp_relay::{connection_bind_target, worker_of_connection};
use crate::turn::FiveTuple;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::sync::Arc;
use tokio::sync::mpsc;

/// The workers' stream channels.
#[derive(Debug, Clone)]
pub struct StreamRouter {
    workers: Arc<[mpsc::Sender<StreamEvent>]>,
}

impl StreamRouter {
    /// Routes over `workers` (worker `i` at index `i`); at least one is needed.
    pub fn new(workers: Vec<mpsc::Sender<StreamEvent>>) -> Self {
        StreamRouter { workers: workers.into() }
    }

    /// The channel of the worker that serves a connection whose first message is
    /// `first`, or `None` when there are no workers.
    pub fn pick(&self, five_tuple: &FiveTuple, first: &[u8]) -> Option<&mpsc::Sender<StreamEvent>> {
        let count = u32::try_from(self.workers.len()).ok()?;
        let index = match connection_bind_target(first) {
            Some(id) => worker_of_connection(id, count),
            // A fixed-key hash: the same client address always gives the same worker.
            None => {
                (BuildHasherDefault::<DefaultHasher>::default().hash_one(five_tuple.client) % u64::from(count.max(1)))
                    as u32
            }
        };
        self.workers.get(index as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::attributes::Opaque;
    use crate::stun::message::{self, Message, Protection};
    use crate::turn::tcp_relay::connection_bind_method;
    use crate::turn::Transport;
    use stun_codec::{MessageClass, TransactionId};

    fn five_tuple(port: u16) -> FiveTuple {
        FiveTuple {
            transport: Transport::Tcp,
            client: std::net::SocketAddr::from(([192, 0, 2, 1], port)).into(),
            server: ([192, 0, 2, 9], 3478).into(),
            tenant: crate::turn::TenantId::DEFAULT,
        }
    }

    fn router(n: usize) -> (StreamRouter, Vec<mpsc::Receiver<StreamEvent>>) {
        let (senders, receivers) = (0..n).map(|_| mpsc::channel(1)).unzip();
        (StreamRouter::new(senders), receivers)
    }

    fn index_of(router: &StreamRouter, chosen: &mpsc::Sender<StreamEvent>) -> usize {
        router.workers.iter().position(|s| s.same_channel(chosen)).unwrap()
    }

    #[test]
    fn a_connection_bind_goes_to_the_worker_its_connection_id_names() {
        let (router, _rx) = router(3);
        for id in [3u32, 7, 11, 0xFFFF_FFFE] {
            let mut m = Message::new(MessageClass::Request, connection_bind_method(), TransactionId::new([1; 12]));
            let attr: crate::stun::attributes::ConnectionId = Opaque(id.to_be_bytes().to_vec());
            m.add_attribute(attr);
            let bytes = message::encode(m, Protection { key: None, fingerprint: true }).unwrap();
            // Whatever the client's address, the id decides.
            for port in [1000, 2000, 3000] {
                let chosen = router.pick(&five_tuple(port), &bytes).unwrap();
                assert_eq!(index_of(&router, chosen), (id % 3) as usize, "id {id}");
            }
        }
    }

    #[test]
    fn other_connections_spread_by_client_address_and_stay_put() {
        let (router, _rx) = router(2);
        let allocate = message::encode(
            Message::new(MessageClass::Request, stun_codec::rfc5766::methods::ALLOCATE, TransactionId::new([2; 12])),
            Protection { key: None, fingerprint: false },
        )
        .unwrap();
        let picks: Vec<usize> =
            (0..64).map(|port| index_of(&router, router.pick(&five_tuple(40000 + port), &allocate).unwrap())).collect();
        assert!(picks.contains(&0) && picks.contains(&1), "{picks:?}");
        let again: Vec<usize> =
            (0..64).map(|port| index_of(&router, router.pick(&five_tuple(40000 + port), b"x").unwrap())).collect();
        assert_eq!(picks, again, "the first message's content does not move a client");
    }
}
