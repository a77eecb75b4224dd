//! What the core has decided and the shell has not yet carried out, and the counters
//! of it: responses are encoded here (SOFTWARE, integrity, FINGERPRINT, the
//! amplification budget), so every answer is counted the same way.

use super::answer::{Auth, Reject};
use super::output::Output;
use super::stats::{DropReason, Stats};
use super::FiveTuple;
use crate::stun::message::{self, Message, Protection};
use std::collections::VecDeque;
use stun_codec::rfc5389::attributes::{ErrorCode, Software};
use stun_codec::{Method, TransactionId};

/// The queue of outputs, the counters, and the budget of the request being answered.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: VecDeque<Output>,
    /// Counters the shell publishes.
    pub(crate) stats: Stats,
    /// The most bytes the answer to the request being handled may take: three times
    /// its size over UDP, whose source address nothing has verified (so that turnd is
    /// a poor amplifier); `None` over TCP and TLS. Answers to authenticated requests
    /// are not held to it.
    pub(crate) budget: Option<usize>,
    /// Random prefix and counter for Data indication transaction ids: drawing from the
    /// CSPRNG per packet would cost a syscall on the relay path.
    tid_prefix: u32,
    tid_counter: u64,
}

impl Outbox {
    /// An empty outbox whose Data indications number from `(prefix, counter)`.
    pub fn new(tid_prefix: u32, tid_counter: u64) -> Self {
        Outbox { tid_prefix, tid_counter, ..Outbox::default() }
    }

    /// Queues an output.
    pub fn push(&mut self, output: Output) {
        self.queue.push_back(output);
    }

    /// The oldest output not yet taken.
    pub fn pop(&mut self) -> Option<Output> {
        self.queue.pop_front()
    }

    /// A fresh transaction id for a Data indication.
    pub fn data_indication_tid(&mut self) -> [u8; 12] {
        self.tid_counter = self.tid_counter.wrapping_add(1);
        let mut tid = [0u8; 12];
        tid[..4].copy_from_slice(&self.tid_prefix.to_be_bytes());
        tid[4..].copy_from_slice(&self.tid_counter.to_be_bytes());
        tid
    }

    /// Queues a response, adding SOFTWARE, integrity when authenticated, and FINGERPRINT.
    /// An unauthenticated answer over its budget goes without SOFTWARE, or not at all.
    pub fn respond(&mut self, to: FiveTuple, response: Message, auth: Option<&Auth>, software: Option<&str>) {
        let budget = if auth.is_none() { self.budget } else { None };
        let protection = Protection { key: auth.map(|a| (a.key.as_bytes(), a.integrity)), fingerprint: true };
        let software = software.and_then(|s| Software::new(s.to_owned()).ok());
        let (method, code) = (response.method(), response.get_attribute::<ErrorCode>().map(|e| e.code()));
        let bytes = match (software, budget) {
            (None, _) => message::encode(response, protection),
            (Some(software), None) => {
                let mut response = response;
                response.add_attribute(software);
                message::encode(response, protection)
            }
            (Some(software), Some(budget)) => {
                let mut with_software = response.clone();
                with_software.add_attribute(software);
                message::encode(with_software, protection)
                    .filter(|bytes| bytes.len() <= budget)
                    .or_else(|| message::encode(response, protection))
            }
        };
        let Some(bytes) = bytes else {
            return;
        };
        if budget.is_some_and(|b| bytes.len() > b) {
            self.stats.drop(DropReason::Amplification);
            return;
        }
        self.stats.answer(method, code);
        self.queue.push_back(Output::Transmit { to, bytes });
    }

    /// Queues an error response. Unauthenticated rejections are kept minimal (no
    /// SOFTWARE, no reason phrase on 401/438, no FINGERPRINT on 401) so turnd is a
    /// poor reflector; the caller has already asked the 401 limiter.
    pub fn reject(
        &mut self,
        to: FiveTuple,
        method: Method,
        transaction_id: TransactionId,
        reject: Reject,
        software: Option<&str>,
    ) {
        let kind = reject.kind;
        let mut response = message::error_response(method, transaction_id, kind.code, kind.wire_reason());
        for attr in reject.attributes {
            response.add_attribute(attr);
        }
        if let Some(auth) = reject.auth {
            self.respond(to, response, Some(&auth), software);
            return;
        }
        let protection = Protection { key: None, fingerprint: kind.code != 401 };
        let Some(bytes) = message::encode(response, protection) else {
            return;
        };
        if self.budget.is_some_and(|b| bytes.len() > b) {
            self.stats.drop(DropReason::Amplification);
            return;
        }
        self.stats.answer(method, Some(kind.code));
        self.queue.push_back(Output::Transmit { to, bytes });
    }
}
