//! Gateway and operator bearer tokens.
//!
//! A token is 32 bytes from the OS-seeded CSPRNG, shown once as 64 hex digits.
//! The sink stores only its SHA-256: gateway token hashes in the database,
//! operator token hashes in the file `api.operator_tokens_file`
//! ([`OperatorTokens`]). A plain (unsalted, fast) hash is enough
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

/// The operators allowed to call the API's mutating routes (training jobs,
/// alert labels), loaded from `api.operator_tokens_file`.
///
/// The file holds one operator per line, `NAME SHA256-HEX` (the SHA-256 of
/// the token, 64 hex digits, as `outpost-cloud-sink operator-token NAME`
/// prints it); blank lines and lines starting with `#` are ignored. Names
/// follow the gateway-name alphabet. The file holds no secret, only
/// hashes. It is read at start; restart the sink to apply a change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OperatorTokens {
    by_hash: std::collections::HashMap<TokenHash, String>,
}

impl OperatorTokens {
    /// Parses the file's text; `Err` names the first bad line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut by_hash = std::collections::HashMap::new();
        let mut names = std::collections::HashSet::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |m: String| format!("line {}: {m}", i + 1);
            let fields: Vec<&str> = line.split_whitespace().collect();
            let &[name, hash] = fields.as_slice() else {
                return Err(at("expected `NAME SHA256-HEX`".to_owned()));
            };
            check_gateway_name(name).map_err(|e| at(e.replace("gateway name", "name")))?;
            let mut digest = [0u8; 32];
            hex::decode_to_slice(hash, &mut digest)
                .map_err(|_| at("the hash is not 64 hex digits".to_owned()))?;
            if !names.insert(name.to_owned()) {
                return Err(at(format!("operator {name:?} appears twice")));
            }
            if by_hash.insert(digest, name.to_owned()).is_some() {
                return Err(at("this hash appears twice".to_owned()));
            }
        }
        if by_hash.is_empty() {
            return Err("no operator token in the file".to_owned());
        }
        Ok(OperatorTokens { by_hash })
    }

    /// Reads and parses the file.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!("file not found: {}", path.display()),
            _ => format!("cannot read {}: {e}", path.display()),
        })?;
        Self::parse(&text).map_err(|m| format!("{}: {m}", path.display()))
    }

    /// The operator a token belongs to.
    pub fn operator(&self, token: &str) -> Option<&str> {
        self.by_hash.get(&hash_token(token)).map(String::as_str)
    }

    /// The line for the tokens file of operator `name` with `token`.
    pub fn line(name: &str, token: &str) -> String {
        format!("{name} {}", hex::encode(hash_token(token)))
    }
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
    fn operator_token_files_map_tokens_to_names_and_name_the_bad_line() {
        let t = generate_token();
        let text = format!(
            "# operators\n\n{}\n{}\n",
            OperatorTokens::line("ann", &t),
            OperatorTokens::line("bob", "other")
        );
        let ops = OperatorTokens::parse(&text).unwrap();
        assert_eq!(ops.operator(&t), Some("ann"));
        assert_eq!(ops.operator("other"), Some("bob"));
        assert_eq!(ops.operator("nope"), None);
        let hash = hex::encode(hash_token("x"));
        for (bad, needle) in [
            ("", "no operator token"),
            ("# only a comment", "no operator token"),
            ("ann", "line 1: expected"),
            (&format!("ann {hash} extra"), "line 1: expected"),
            ("ann abc", "line 1: the hash"),
            (&format!("a:b {hash}"), "line 1: name contains"),
            (
                &format!("ann {hash}\nann {}", hex::encode(hash_token("y"))),
                "line 2: operator \"ann\" appears twice",
            ),
            (
                &format!("ann {hash}\nbob {hash}"),
                "line 2: this hash appears twice",
            ),
        ] {
            let err = OperatorTokens::parse(bad).unwrap_err();
            assert!(err.contains(needle), "{bad:?}: {err}");
        }
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
