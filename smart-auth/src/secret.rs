//! Random opaque values, password hashes and digests of stored tokens.
//!
//! Authorization codes, refresh tokens, launch ids and client secrets are random values from
//! [`random_token`]. The database keeps only [`token_digest`] of codes and refresh tokens (a
//! stolen database yields no usable one) and [`hash_password`] of passwords and client secrets
//! (Argon2id: slow to guess even from a stolen database).

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

use crate::{CryptoError, b64url};

/// `bytes` bytes of the operating system's randomness, base64url without padding.
///
/// 32 bytes (43 characters) for codes, refresh tokens and client secrets; 16 are enough for a
/// launch id.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    b64url(buf)
}

/// Hashes a password or client secret with Argon2id (the `argon2` crate's defaults: 19 MiB,
/// 2 passes, 1 lane, as OWASP advises) and a fresh random salt, as a PHC string
/// (`$argon2id$v=19$m=19456,t=2,p=1$…`) that carries its own parameters.
pub fn hash_password(password: &str) -> Result<String, CryptoError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| CryptoError::PasswordHash(e.to_string()))
}

/// Whether `password` is the one hashed in `phc` (a string from [`hash_password`]). A `phc`
/// that cannot be read answers `false`. Costs as much as [`hash_password`].
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|hash| {
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
}

/// Lower-case hex SHA-256 of a token: what the database stores for an authorization code or a
/// refresh token, and looks it up by. A token is 256 random bits, so no salt or slow hash is
/// needed: the digest cannot be inverted.
pub fn token_digest(token: &str) -> String {
    use std::fmt::Write as _;
    Sha256::digest(token.as_bytes())
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_token_of_32_bytes_is_43_base64url_characters() {
        let token = random_token(32);
        assert_eq!(token.len(), 43);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }

    #[test]
    fn two_random_tokens_differ() {
        assert_ne!(random_token(32), random_token(32));
    }

    #[test]
    fn argon2_round_trip_accepts_the_password() {
        let phc = hash_password("correct horse battery staple").unwrap();
        assert!(verify_password("correct horse battery staple", &phc));
    }

    #[test]
    fn argon2_hash_refuses_another_password() {
        let phc = hash_password("correct horse battery staple").unwrap();
        assert!(!verify_password("correct horse battery stapler", &phc));
    }

    #[test]
    fn argon2_hash_is_argon2id_phc() {
        let phc = hash_password("pw").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$"), "{phc}");
    }

    #[test]
    fn same_password_hashes_differently_each_time() {
        assert_ne!(hash_password("pw").unwrap(), hash_password("pw").unwrap());
    }

    #[test]
    fn unreadable_phc_string_refuses() {
        assert!(!verify_password("pw", "not a phc string"));
        assert!(!verify_password("pw", ""));
    }

    #[test]
    fn token_digest_is_hex_sha256() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            token_digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
