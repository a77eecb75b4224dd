//! Long-term credentials (RFC 8489 §9.2) and TURN REST API credentials
//! (draft-uberti-behave-turn-rest), which are long-term credentials minted from a
//! shared secret.

use crate::turn::auth::rest_password;
use std::fmt;
use std::time::Duration;

/// What the client authenticates with.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// No credentials: requests go out unauthenticated.
    None,
    /// A username and password (a static user, or minted by [`Credentials::rest`]).
    LongTerm {
        /// The username.
        username: String,
        /// The password.
        password: String,
    },
}

// Written by hand so that a password never lands in a log line.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::LongTerm { username, .. } => write!(f, "LongTerm({username:?}, ..)"),
        }
    }
}

impl Credentials {
    /// A static user.
    pub fn long_term(username: &str, password: &str) -> Credentials {
        Credentials::LongTerm { username: username.to_owned(), password: password.to_owned() }
    }

    /// TURN REST API credentials: the username is `<expiry>:<user>` with
    /// `expiry = unix_now + ttl`, the password base64(HMAC-SHA1(secret, username)).
    /// The wall clock is passed in: the client reads no clock.
    pub fn rest(secret: &str, user: &str, unix_now: u64, ttl: Duration) -> Credentials {
        let username = format!("{}:{user}", unix_now.saturating_add(ttl.as_secs()));
        let password = rest_password(secret.as_bytes(), &username);
        Credentials::LongTerm { username, password }
    }

    /// The username, if there are credentials.
    pub fn username(&self) -> Option<&str> {
        match self {
            Credentials::None => None,
            Credentials::LongTerm { username, .. } => Some(username),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_credentials_follow_the_turn_rest_draft() {
        let c = Credentials::rest("s3cret", "probe", 1_700_000_000, Duration::from_secs(600));
        let Credentials::LongTerm { username, password } = &c else { panic!("long-term") };
        assert_eq!(username, "1700000600:probe");
        assert_eq!(password, &rest_password(b"s3cret", "1700000600:probe"));
        assert_eq!(format!("{c:?}"), "LongTerm(\"1700000600:probe\", ..)");
    }
}
