//! RFC 8489 §9.2: the long-term credential mechanism, as a server runs it: the
//! challenge (401/438 with REALM, NONCE and PASSWORD-ALGORITHMS) and the checks of a
//! request that answers one.

use super::lookup::Looked;
use super::Server;
use crate::stun::errors::{self, ErrorKind};
use crate::stun::message::{self, IntegritySet};
use crate::turn::answer::{Auth, Reject};
use crate::turn::auth::{CredentialError, NonceStatus};
use crate::turn::output::{Event, Output};
use crate::turn::stats::AuthFailure;
use crate::turn::FiveTuple;
use std::time::Instant;
use stun_codec::rfc5389::attributes::{Nonce, Realm, Username};

impl Server {
    /// A 401 or 438 carrying the realm, a fresh nonce that starts with the nonce cookie
    /// and turnd's security feature bits, and the PASSWORD-ALGORITHMS turnd offers
    /// (RFC 8489 §9.2.4: every 401 and 438 has all three).
    ///
    /// When that answer would pass the request's amplification budget, it goes without
    /// PASSWORD-ALGORITHMS and its nonce without the matching feature bit: the client
    /// then authenticates as an RFC 5389 one (MD5 key, SHA-1 integrity).
    fn challenge(&self, kind: ErrorKind, now: Instant, from: FiveTuple) -> Reject {
        use crate::turn::auth::{SecurityFeatures, NONCE_LEN, OFFERED_ALGORITHMS};
        // The realm the client arrived in (listener or TLS name); one a reload removed
        // has no realm to offer, so the client gets a bare 401.
        let Some(tenant) = self.config.tenant(from.tenant) else {
            return Reject::new(kind);
        };
        let credentials = tenant.credentials;
        let attribute = |len: usize| 4 + len.div_ceil(4) * 4;
        // Header, ERROR-CODE with no reason phrase, REALM, NONCE, PASSWORD-ALGORITHMS.
        let full = 20
            + 8
            + attribute(credentials.realm().len())
            + attribute(NONCE_LEN)
            + attribute(4 * OFFERED_ALGORITHMS.len());
        let offer_algorithms = self.out.budget.map_or(true, |budget| full <= budget);
        let features = if offer_algorithms {
            credentials.features()
        } else {
            credentials.features().without(SecurityFeatures::PASSWORD_ALGORITHMS)
        };
        let mut reject = Reject::new(kind);
        if let Ok(realm) = Realm::new(credentials.realm().to_owned()) {
            reject.attributes.push(realm.into());
        }
        if let Ok(nonce) = Nonce::new(self.nonces.issue(now, from.client.get(), features, from.tenant)) {
            reject.attributes.push(nonce.into());
        }
        if offer_algorithms {
            reject.attributes.push(crate::turn::auth::offered_algorithms().into());
        }
        reject
    }

    pub(super) fn auth_failed(&mut self, now: Instant, from: FiveTuple, reason: AuthFailure) -> Reject {
        self.out.stats.auth_failures[reason as usize] += 1;
        self.out.push(Output::Event(Event::AuthFailed { client: from.client.get(), tenant: from.tenant, reason }));
        let kind = if reason == AuthFailure::StaleNonce { errors::STALE_NONCE } else { errors::UNAUTHENTICATED };
        self.challenge(kind, now, from)
    }

    /// RFC 8489 §9.2.4: the long-term credential checks, in the RFC's order. A request
    /// with neither PASSWORD-ALGORITHMS nor PASSWORD-ALGORITHM (an RFC 5389 client) is
    /// checked with the MD5 key, as before RFC 8489; one that negotiated uses the key of
    /// the algorithm it chose. MESSAGE-INTEGRITY-SHA256 is checked in preference to
    /// MESSAGE-INTEGRITY when both are present. A user no local source knows is asked
    /// of the authentication webhook when one is configured: `Ok(None)` then means the
    /// request is parked until the answer comes (see `lookup.rs`).
    pub(super) fn authenticate(
        &mut self,
        now: Instant,
        unix_now: u64,
        from: FiveTuple,
        decoded: &message::Decoded,
        packet: &[u8],
    ) -> Result<Option<Auth>, Reject> {
        use crate::stun::attributes::{PasswordAlgorithm, PasswordAlgorithms, Userhash};
        use crate::turn::auth::{negotiate, KeyChoice};

        let request = &decoded.message;
        let Some(integrity) = decoded.integrity_sha256.or(decoded.integrity_sha1) else {
            return Err(self.challenge(errors::UNAUTHENTICATED, now, from));
        };
        let username = request.get_attribute::<Username>();
        let userhash = request.get_attribute::<Userhash>();
        let (Some(_), Some(nonce)) = (request.get_attribute::<Realm>(), request.get_attribute::<Nonce>()) else {
            return Err(Reject::new(errors::BAD_REQUEST));
        };
        // Exactly one of USERNAME and USERHASH names the user.
        if username.is_some() == userhash.is_some() {
            return Err(Reject::new(errors::BAD_REQUEST));
        }
        let choice = negotiate(
            nonce.value(),
            request.get_attribute::<PasswordAlgorithms>(),
            request.get_attribute::<PasswordAlgorithm>(),
        )
        .map_err(|_| Reject::new(errors::BAD_REQUEST))?;
        let Some(credentials) = self.config.tenant(from.tenant).map(|t| t.credentials) else {
            return Err(self.auth_failed(now, from, AuthFailure::UnknownUser));
        };
        let name = match (username, userhash) {
            (Some(username), _) => Some(username.name().to_owned()),
            // Only static users can be found by hash (see `Credentials::user_for_hash`).
            (None, Some(hash)) => credentials.user_for_hash(hash.value()).map(str::to_owned),
            (None, None) => None,
        };
        let Some(name) = name else {
            return Err(self.auth_failed(now, from, AuthFailure::UnknownUser));
        };
        if self.revocations.refuses(&name, unix_now) {
            return Err(self.auth_failed(now, from, AuthFailure::Revoked));
        }
        let mut limits = None;
        let keys = match credentials.keys_for(&name, choice.algorithm(), unix_now) {
            Ok(keys) => keys,
            Err(CredentialError::UnknownUser) if self.config.lookup.is_some() => {
                match self.looked_up(now, unix_now, from, (decoded, packet), (&name, choice.algorithm()))? {
                    Looked::Key(key, user_limits) => {
                        limits = Some(user_limits);
                        vec![key]
                    }
                    Looked::Parked => return Ok(None),
                }
            }
            // A user with only an MD5 key has no credential for SHA-256: as unknown.
            Err(CredentialError::UnknownUser | CredentialError::NoKeyForAlgorithm) => {
                return Err(self.auth_failed(now, from, AuthFailure::UnknownUser))
            }
            Err(CredentialError::Expired) => return Err(self.auth_failed(now, from, AuthFailure::Expired)),
        };
        let Some(key) = keys.into_iter().find(|k| integrity.verify(k.as_bytes(), packet)) else {
            return Err(self.auth_failed(now, from, AuthFailure::BadIntegrity));
        };
        if self.nonces.check(nonce.value(), now, from.client.get(), from.tenant) == NonceStatus::Stale {
            return Err(self.auth_failed(now, from, AuthFailure::StaleNonce));
        }
        // Again: the lookup above needed `self` whole.
        let Some(credentials) = self.config.tenant(from.tenant).map(|t| t.credentials) else {
            return Err(self.auth_failed(now, from, AuthFailure::UnknownUser));
        };
        Ok(Some(Auth {
            // A looked-up user has no REST expiry, whatever their name looks like.
            valid_for: limits
                .is_none()
                .then(|| credentials.valid_for(&name, unix_now))
                .flatten()
                .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX).max(1))
                .and_then(std::num::NonZeroU32::new),
            max_allocations: limits.and_then(|l| l.max_allocations).and_then(std::num::NonZeroU32::new),
            bandwidth: limits.and_then(|l| l.bandwidth).and_then(std::num::NonZeroU32::new),
            username: name,
            key,
            integrity: IntegritySet {
                sha1: decoded.integrity_sha1.is_some(),
                // After a negotiation every response carries MESSAGE-INTEGRITY-SHA256
                // (RFC 8489 §9.2.4, last paragraph); otherwise mirror the request.
                sha256: decoded.integrity_sha256.is_some() || matches!(choice, KeyChoice::Negotiated(_)),
            },
        }))
    }
}
