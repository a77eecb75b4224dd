//! Users the authentication webhook knows: the cache check, parking a request while
//! its user is looked up, and running the parked requests again once the shell
//! answers (see [`crate::turn::lookup`]).

use super::Server;
use crate::stun::errors;
use crate::stun::message;
use crate::turn::answer::Reject;
use crate::turn::auth::{Key, NonceStatus};
use crate::turn::ledger::Shared;
use crate::turn::lookup::{Known, LookupOutcome, LookupResult, ParkError, Parked, UserKey, UserLimits};
use crate::turn::output::Output;
use crate::turn::stats::AuthFailure;
use crate::turn::FiveTuple;
use std::time::Instant;
use stun_codec::rfc5389::attributes::Nonce;

/// What the webhook side of authentication decided for a request.
pub(super) enum Looked {
    /// A key to check the integrity with, and the user's limits.
    Key(Key, UserLimits),
    /// The request is parked until the lookup answers.
    Parked,
}

impl Server {
    /// The key of `name`, a user no local source knows, from the lookup cache; on a
    /// miss the request is parked and, for the first request of that user, the shell
    /// is asked to look them up. The nonce is checked before anything is parked, so
    /// only a client that got a nonce from turnd at its own address can cause a
    /// lookup (a forged or stale one gets 438 as it would anyway).
    pub(super) fn looked_up(
        &mut self,
        now: Instant,
        unix_now: u64,
        from: FiveTuple,
        (decoded, packet): (&message::Decoded, &[u8]),
        (name, algorithm): (&str, crate::stun::attributes::Algorithm),
    ) -> Result<Looked, Reject> {
        // The realm of the tenant the client came to: answers are cached per realm.
        let Some(realm) = self.config.tenant(from.tenant).map(|t| t.credentials.realm().to_owned()) else {
            return Err(self.auth_failed(now, from, AuthFailure::UnknownUser));
        };
        let key = UserKey::new(&realm, name);
        match self.lookups.cached(&key, now) {
            Known::Found(record) => match record.key(algorithm) {
                Some(k) => Ok(Looked::Key(k, record.limits)),
                // No key for the algorithm the client chose: as unknown, like a static
                // user configured by MD5 key alone.
                None => Err(self.auth_failed(now, from, AuthFailure::UnknownUser)),
            },
            Known::NotFound => Err(self.auth_failed(now, from, AuthFailure::UnknownUser)),
            Known::Unknown => {
                let nonce = decoded.message.get_attribute::<Nonce>().map(|n| n.value().to_owned()).unwrap_or_default();
                if self.nonces.check(&nonce, now, from.client.get(), from.tenant) == NonceStatus::Stale {
                    return Err(self.auth_failed(now, from, AuthFailure::StaleNonce));
                }
                let request = &decoded.message;
                let parked = Parked {
                    from,
                    packet: packet.to_vec(),
                    method: request.method(),
                    transaction_id: request.transaction_id(),
                    unix_now,
                    deadline: now,
                };
                match self.lookups.park(key, parked, now) {
                    Ok(true) => {
                        self.out.push(Output::LookupUser { realm, username: name.to_owned() });
                        Ok(Looked::Parked)
                    }
                    Ok(false) => Ok(Looked::Parked),
                    Err(ParkError::Full) => {
                        self.out.stats.auth_failures[AuthFailure::LookupUnavailable as usize] += 1;
                        Err(Reject::new(errors::SERVER_ERROR))
                    }
                }
            }
        }
    }

    /// The shell's answer to [`Output::LookupUser`]: cached, then every request that
    /// waited for it runs again (found or not found), or gets 500 (the lookup
    /// failed).
    pub(super) fn lookup_answered(&mut self, now: Instant, result: LookupResult, shared: &impl Shared) {
        let failed = result.outcome == LookupOutcome::Failed;
        let waiting = self.lookups.answer(UserKey::new(&result.realm, &result.username), result.outcome, now);
        for parked in waiting {
            if failed {
                self.lookup_unavailable(parked, shared);
            } else {
                self.handle_stun(now, parked.unix_now, parked.from, &parked.packet, shared);
            }
        }
    }

    /// Answers the parked requests whose wait ran out with 500.
    pub(super) fn expire_parked(&mut self, now: Instant, shared: &impl Shared) {
        for parked in self.lookups.expired(now) {
            self.lookup_unavailable(parked, shared);
        }
    }

    fn lookup_unavailable(&mut self, parked: Parked, shared: &impl Shared) {
        self.out.stats.auth_failures[AuthFailure::LookupUnavailable as usize] += 1;
        self.out.budget = (parked.from.transport == crate::turn::Transport::Udp)
            .then(|| parked.packet.len() * super::AMPLIFICATION_LIMIT);
        self.reject(parked.from, parked.method, parked.transaction_id, Reject::new(errors::SERVER_ERROR), shared);
    }
}
