//! PKCE (RFC 7636) with the `S256` method, the only one SMART App Launch 2 allows.

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::b64url;

/// Whether `code_verifier` answers `code_challenge`: the verifier is 43 to 128 characters of
/// `[A-Za-z0-9-._~]` (RFC 7636 §4.1) and base64url(SHA-256(verifier)) equals the challenge.
/// The comparison takes the same time wherever the two differ.
pub fn verify_s256(code_verifier: &str, code_challenge: &str) -> bool {
    if !is_valid_verifier(code_verifier) {
        return false;
    }
    let computed = b64url(Sha256::digest(code_verifier.as_bytes()));
    computed.as_bytes().ct_eq(code_challenge.as_bytes()).into()
}

/// Whether `code_challenge` can be an `S256` challenge: 43 base64url characters (a SHA-256
/// digest without padding). The authorization endpoint refuses a request whose challenge is
/// not.
pub fn is_valid_challenge(code_challenge: &str) -> bool {
    code_challenge.len() == 43
        && code_challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_valid_verifier(code_verifier: &str) -> bool {
    (43..=128).contains(&code_verifier.len())
        && code_verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7636 Appendix B.
    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    #[test]
    fn rfc_7636_appendix_b_example_verifies() {
        assert!(verify_s256(VERIFIER, CHALLENGE));
    }

    #[test]
    fn wrong_verifier_is_refused() {
        let wrong = VERIFIER.replace('d', "e");
        assert!(!verify_s256(&wrong, CHALLENGE));
    }

    #[test]
    fn verifier_shorter_than_43_characters_is_refused() {
        // Its challenge is right, so only the length can refuse it.
        let short = "a".repeat(42);
        let challenge = b64url(Sha256::digest(short.as_bytes()));
        assert!(!verify_s256(&short, &challenge));
    }

    #[test]
    fn verifier_of_43_characters_is_accepted() {
        let verifier = "a".repeat(43);
        let challenge = b64url(Sha256::digest(verifier.as_bytes()));
        assert!(verify_s256(&verifier, &challenge));
    }

    #[test]
    fn verifier_longer_than_128_characters_is_refused() {
        let long = "a".repeat(129);
        let challenge = b64url(Sha256::digest(long.as_bytes()));
        assert!(!verify_s256(&long, &challenge));
    }

    #[test]
    fn verifier_with_a_character_outside_the_unreserved_set_is_refused() {
        let verifier = format!("{}+", "a".repeat(42));
        let challenge = b64url(Sha256::digest(verifier.as_bytes()));
        assert!(!verify_s256(&verifier, &challenge));
    }

    #[test]
    fn plain_method_challenge_equal_to_the_verifier_is_refused() {
        // A client that used `plain` sends the verifier itself as the challenge.
        assert!(!verify_s256(VERIFIER, VERIFIER));
    }

    #[test]
    fn empty_challenge_is_refused() {
        assert!(!verify_s256(VERIFIER, ""));
    }

    #[test]
    fn s256_challenge_is_a_valid_challenge() {
        assert!(is_valid_challenge(CHALLENGE));
    }

    #[test]
    fn challenge_of_the_wrong_length_is_not_valid() {
        assert!(!is_valid_challenge(&CHALLENGE[..42]));
    }

    #[test]
    fn padded_or_standard_base64_challenge_is_not_valid() {
        assert!(!is_valid_challenge(&format!("{}=", &CHALLENGE[..42])));
        assert!(!is_valid_challenge(&CHALLENGE.replace('-', "+")));
    }
}
