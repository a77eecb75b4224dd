//! The answer to a request that fails ([`Reject`]) and the identity a request
//! authenticated as ([`Auth`]), which protects the answer.

use super::auth::Key;
use crate::stun::attributes::Attribute;
use crate::stun::errors::ErrorKind;
use crate::stun::message::IntegritySet;

/// The authenticated identity behind a request, to protect the response with.
#[derive(Debug, Clone)]
pub(crate) struct Auth {
    /// The user it authenticated as.
    pub username: String,
    /// The key its integrity verified with; the answer is protected with it.
    pub key: Key,
    /// Which integrity attributes the answer carries.
    pub integrity: IntegritySet,
    /// For a TURN REST credential, the seconds it stays valid from this request, at
    /// least 1 (a credential that expired is refused before; `NonZeroU32` keeps
    /// `Reject`, which carries an `Auth`, small: its `None` costs no space).
    pub valid_for: Option<std::num::NonZeroU32>,
    /// For a user the authentication webhook found, the allocations they may hold (in
    /// place of `[limits] allocations-per-user`), if its answer set one (non-zero, so
    /// the option costs no space: `Reject` carries an `Auth`).
    pub max_allocations: Option<std::num::NonZeroU32>,
    /// Likewise the user's bandwidth cap in bytes per second (in place of `[limits]
    /// bandwidth-per-user`).
    pub bandwidth: Option<std::num::NonZeroU32>,
}

/// An error answer to a request: handlers return it and `?` turns a failed check
/// into the error response.
#[derive(Debug, Clone)]
pub(crate) struct Reject {
    /// The code and reason phrase.
    pub kind: ErrorKind,
    /// Extra attributes (REALM/NONCE on 401/438, UNKNOWN-ATTRIBUTES on 420).
    pub attributes: Vec<Attribute>,
    /// Set once the request authenticated: the error response then carries integrity.
    pub auth: Option<Auth>,
}

impl Reject {
    /// An answer with `kind` and nothing else; unauthenticated until [`Reject::with_auth`].
    pub fn new(kind: ErrorKind) -> Self {
        Reject { kind, attributes: Vec::new(), auth: None }
    }

    /// The same answer protected with the request's credentials.
    pub fn with_auth(mut self, auth: &Auth) -> Self {
        self.auth = Some(auth.clone());
        self
    }

    /// Adds an attribute (ALTERNATE-SERVER, UNKNOWN-ATTRIBUTES, REALM, NONCE...).
    pub fn with(mut self, attribute: impl Into<Attribute>) -> Self {
        self.attributes.push(attribute.into());
        self
    }
}
