//! Container and sandbox ids. They name files and sockets, so they are checked before use.

/// Longest id we accept: a 64-hex-digit CRI id plus room for prefixes.
pub const MAX_ID_LEN: usize = 128;

/// Why an id was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("id is empty")]
    Empty,
    #[error("id {0:?} is longer than {MAX_ID_LEN} bytes")]
    TooLong(String),
    #[error("id {0:?} may hold only ASCII letters, digits, '_', '-' and '.', and may not start with '.' or '-'")]
    BadCharacter(String),
}

/// Checks that `id` is safe to use as one path component.
pub fn validate(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong(id.to_owned()));
    }
    let first_ok = id.as_bytes()[0].is_ascii_alphanumeric() || id.as_bytes()[0] == b'_';
    let rest_ok = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !first_ok || !rest_ok {
        return Err(IdError::BadCharacter(id.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_refuses() {
        assert!(validate("abc-123_x.y").is_ok());
        assert!(validate(&"a".repeat(64)).is_ok());
        for bad in ["", "..", ".hidden", "-x", "a/b", "a b", "a\0b"] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            validate(&"a".repeat(129)),
            Err(IdError::TooLong(_))
        ));
    }
}
