//! The fleet's TURN REST secrets, read from Redis (`[cluster] secrets-from-redis`):
//! the list `PREFIX:secrets`, newest first, so rotating a secret is done once for the
//! whole fleet (`LPUSH` the new one, switch the application server, `LREM` the old
//! one after the longest credential TTL). What Redis holds is checked before use: a
//! set with anything wrong in it is refused whole, and the last good set stays in
//! force (a half-applied set could lock out the credentials minted with the part
//! dropped).

/// The most secrets the list may hold (rotation needs two or three).
pub const MAX_SECRETS: usize = 16;
/// The longest secret accepted, in bytes.
pub const MAX_SECRET_BYTES: usize = 256;

/// Why the secrets in Redis were not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// The key does not exist (or is an empty list, which Redis deletes): taken as a
    /// mistake (a flushed Redis), never as "accept no REST credential".
    #[error("the key is missing or empty")]
    Missing,
    /// The key holds something other than a list.
    #[error("the key holds a {0}, not a list")]
    WrongType(String),
    /// More than [`MAX_SECRETS`] entries.
    #[error("more than {MAX_SECRETS} secrets")]
    TooMany,
    /// An empty entry.
    #[error("secret {0} (from the head) is empty")]
    Empty(usize),
    /// An entry over [`MAX_SECRET_BYTES`].
    #[error("secret {0} (from the head) is longer than {MAX_SECRET_BYTES} bytes")]
    TooLong(usize),
    /// An entry that is not UTF-8, or holds control characters (a pasted newline).
    #[error("secret {0} (from the head) is not UTF-8 text without control characters")]
    NotText(usize),
}

/// Checks what `TYPE key` and `LRANGE key 0 MAX_SECRETS` returned: the secrets, newest
/// first, or why they cannot be used.
pub fn parse(kind: &str, entries: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, Rejected> {
    match kind {
        "list" => {}
        "none" => return Err(Rejected::Missing),
        other => return Err(Rejected::WrongType(other.chars().filter(char::is_ascii_alphanumeric).take(16).collect())),
    }
    if entries.is_empty() {
        return Err(Rejected::Missing);
    }
    if entries.len() > MAX_SECRETS {
        return Err(Rejected::TooMany);
    }
    for (i, secret) in entries.iter().enumerate() {
        if secret.is_empty() {
            return Err(Rejected::Empty(i));
        }
        if secret.len() > MAX_SECRET_BYTES {
            return Err(Rejected::TooLong(i));
        }
        match std::str::from_utf8(secret) {
            Ok(text) if !text.chars().any(char::is_control) => {}
            _ => return Err(Rejected::NotText(i)),
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&[u8]]) -> Vec<Vec<u8>> {
        items.iter().map(|i| i.to_vec()).collect()
    }

    #[test]
    fn a_good_list_is_taken_in_order() {
        assert_eq!(parse("list", list(&[b"new", b"old"])), Ok(list(&[b"new", b"old"])));
        assert_eq!(parse("list", list(&[&[b'x'; MAX_SECRET_BYTES]])).map(|s| s.len()), Ok(1));
    }

    #[test]
    fn bad_data_is_refused_whole() {
        let too_many = vec![b"s".to_vec(); MAX_SECRETS + 1];
        let cases = [
            (parse("none", Vec::new()), Rejected::Missing),
            (parse("list", Vec::new()), Rejected::Missing),
            (parse("string", Vec::new()), Rejected::WrongType("string".into())),
            (parse("list", too_many), Rejected::TooMany),
            (parse("list", list(&[b"good", b""])), Rejected::Empty(1)),
            (parse("list", list(&[&[b'x'; MAX_SECRET_BYTES + 1]])), Rejected::TooLong(0)),
            (parse("list", list(&[b"good", b"\xff\xfe"])), Rejected::NotText(1)),
            (parse("list", list(&[b"pasted\n"])), Rejected::NotText(0)),
        ];
        for (got, want) in cases {
            assert_eq!(got, Err(want));
        }
    }
}
