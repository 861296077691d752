//! Gateway bearer tokens.
//!
//! A token is 32 bytes from the OS-seeded CSPRNG, shown once as 64 hex digits.
//! The sink stores only its SHA-256. A plain (unsalted, fast) hash is enough
//! here because tokens are high-entropy random values, not passwords: there is
//! no dictionary to try, and 2^256 guesses are out of reach. Lookups are by
//! hash, so comparing hashes in variable time leaks nothing about the token.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// Length of a token in bytes before hex encoding.
pub const TOKEN_BYTES: usize = 32;

/// SHA-256 of a token.
pub type TokenHash = [u8; 32];

/// Why a request carries no usable credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing Authorization header")]
    Missing,
    #[error("Authorization header is not `Bearer <token>`")]
    Malformed,
    #[error("unknown token")]
    Unknown,
}

/// A fresh random token, hex-encoded.
pub fn generate_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The stored form of a token.
pub fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// Extracts the token from an `Authorization` header value.
pub fn bearer_token(header: Option<&[u8]>) -> Result<&str, AuthError> {
    let raw = header.ok_or(AuthError::Missing)?;
    let value = std::str::from_utf8(raw)
        .map_err(|_| AuthError::Malformed)?
        .trim();
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Malformed);
    }
    let token = token.trim();
    if token.is_empty() || token.len() > 256 {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

/// Longest gateway name accepted.
pub const MAX_GATEWAY_NAME_LEN: usize = 128;

/// Gateway names are `[A-Za-z0-9._-]{1,128}`: they appear in URLs, metrics and
/// the `Idempotency-Key` (`{gateway}:{first}-{last}`), so no `:` or spaces.
pub fn check_gateway_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("gateway name is empty".to_owned());
    }
    if name.len() > MAX_GATEWAY_NAME_LEN {
        return Err(format!(
            "gateway name is longer than {MAX_GATEWAY_NAME_LEN} bytes"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "gateway name contains {c:?}; allowed are letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_64_hex_digits_and_differ() {
        let a = generate_token();
        let b = generate_token();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert_ne!(hash_token(&a), hash_token(&b));
    }

    #[test]
    fn bearer_header_is_parsed_case_insensitively_and_rejects_other_schemes() {
        assert_eq!(bearer_token(Some(b"Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(Some(b"bearer  abc ")), Ok("abc"));
        assert_eq!(bearer_token(None), Err(AuthError::Missing));
        assert_eq!(bearer_token(Some(b"Basic abc")), Err(AuthError::Malformed));
        assert_eq!(bearer_token(Some(b"Bearer")), Err(AuthError::Malformed));
        assert_eq!(
            bearer_token(Some(b"Bearer \xff")),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn gateway_names_are_restricted_to_a_safe_alphabet() {
        assert!(check_gateway_name("gw-01.site_a").is_ok());
        assert!(check_gateway_name("").is_err());
        assert!(check_gateway_name("a:b").is_err());
        assert!(check_gateway_name("a b").is_err());
        assert!(check_gateway_name(&"x".repeat(129)).is_err());
    }
}
