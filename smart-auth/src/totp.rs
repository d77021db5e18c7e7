//! RFC 6238 time-based one-time codes, the second factor a practitioner can be required to
//! pass: SHA-1, 6 digits, 30-second steps, the parameters every authenticator app supports.

use rand::RngCore as _;
use subtle::ConstantTimeEq as _;
use totp_rs::{Algorithm, Secret, TOTP};

use crate::CryptoError;

/// Length of a generated secret: 160 bits, the HMAC-SHA-1 block RFC 4226 §4 recommends.
pub const SECRET_BYTES: usize = 20;

/// The shortest secret accepted from storage: 128 bits (RFC 4226 §4).
const MIN_SECRET_BYTES: usize = 16;

const DIGITS: usize = 6;
const STEP_SECS: u64 = 30;

/// A user's TOTP secret. Store it as [`TotpSecret::as_bytes`] (encrypted, like any
/// credential); show it once, as [`TotpSecret::otpauth_url`] (a QR code) or
/// [`TotpSecret::to_base32`] (typed by hand). `Debug` does not show it.
#[derive(Clone)]
pub struct TotpSecret {
    totp: TOTP,
}

impl TotpSecret {
    /// A new secret of [`SECRET_BYTES`] random bytes from the operating system.
    pub fn generate() -> Self {
        let mut bytes = vec![0u8; SECRET_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self::new(bytes)
    }

    /// The secret from its raw bytes (at least 16).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(CryptoError::InvalidTotpSecret(format!(
                "{} bytes, at least {MIN_SECRET_BYTES} needed",
                bytes.len()
            )));
        }
        Ok(Self::new(bytes.to_vec()))
    }

    /// The secret from its base32 form (RFC 4648, padding optional, case-insensitive).
    pub fn from_base32(text: &str) -> Result<Self, CryptoError> {
        let bytes = Secret::Encoded(text.trim().to_ascii_uppercase())
            .to_bytes()
            .map_err(|_| CryptoError::InvalidTotpSecret("not base32".to_owned()))?;
        Self::from_bytes(&bytes)
    }

    fn new(bytes: Vec<u8>) -> Self {
        // Digits and length are checked by this module, so the unchecked constructor is safe.
        Self {
            totp: TOTP::new_unchecked(Algorithm::SHA1, DIGITS, 1, STEP_SECS, bytes),
        }
    }

    /// The raw secret, for storing it.
    pub fn as_bytes(&self) -> &[u8] {
        &self.totp.secret
    }

    /// The secret in base32 without padding, as authenticator apps take it typed in.
    pub fn to_base32(&self) -> String {
        self.totp.get_secret_base32()
    }

    /// The `otpauth://totp/…` URL authenticator apps read from a QR code (the Key URI format
    /// of Google Authenticator): label `issuer:account`, with the secret, issuer, algorithm,
    /// digits and period as parameters.
    pub fn otpauth_url(&self, issuer: &str, account: &str) -> String {
        format!(
            "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
            percent_encode(issuer),
            percent_encode(account),
            self.to_base32(),
            percent_encode(issuer),
        )
    }

    /// Checks a code typed at time `now` (Unix seconds) against the previous, current and next
    /// 30-second steps, to absorb clock drift and typing time. Spaces in the code are ignored.
    ///
    /// Returns the step the code belongs to (`unix time / 30`): the caller records it and
    /// refuses any later code whose step is not greater, so a code seen once (over a shoulder,
    /// in a replayed form) cannot be used again.
    pub fn verify(&self, code: &str, now: i64) -> Option<u64> {
        let code: String = code.chars().filter(|c| *c != ' ').collect();
        if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let current = u64::try_from(now).ok()? / STEP_SECS;
        [current.checked_sub(1), Some(current), Some(current + 1)]
            .into_iter()
            .flatten()
            // Every step is compared, in constant time: how long this takes says nothing of
            // which digits were right.
            .filter(|step| {
                bool::from(
                    self.totp
                        .generate(step * STEP_SECS)
                        .as_bytes()
                        .ct_eq(code.as_bytes()),
                )
            })
            .max()
    }

    /// The code for time `now` (Unix seconds), as an authenticator app would show it. For
    /// tests and for the enrolment page's "type the code you see" check.
    pub fn code_at(&self, now: i64) -> String {
        self.totp.generate(u64::try_from(now).unwrap_or(0))
    }
}

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret(..)")
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    use std::fmt::Write as _;
    text.bytes()
        .fold(String::with_capacity(text.len()), |mut out, b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(char::from(b));
            } else {
                let _ = write!(out, "%{b:02X}");
            }
            out
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The SHA-1 seed of RFC 6238 Appendix B.
    const RFC_SEED: &[u8] = b"12345678901234567890";

    /// RFC 6238 Appendix B, SHA-1 rows: (time, 8-digit code).
    const RFC_VECTORS: [(i64, &str); 6] = [
        (59, "94287082"),
        (1_111_111_109, "07081804"),
        (1_111_111_111, "14050471"),
        (1_234_567_890, "89005924"),
        (2_000_000_000, "69279037"),
        (20_000_000_000, "65353130"),
    ];

    fn rfc_secret() -> TotpSecret {
        TotpSecret::from_bytes(RFC_SEED).unwrap()
    }

    #[test]
    fn rfc_6238_sha1_vectors_with_8_digits() {
        // The same construction as `TotpSecret`, with the RFC's 8 digits.
        let totp = TOTP::new_unchecked(Algorithm::SHA1, 8, 1, STEP_SECS, RFC_SEED.to_vec());
        for (time, code) in RFC_VECTORS {
            assert_eq!(totp.generate(time as u64), code, "time {time}");
        }
    }

    #[test]
    fn six_digit_codes_are_the_last_six_digits_of_the_rfc_vectors() {
        let secret = rfc_secret();
        for (time, code) in RFC_VECTORS {
            assert_eq!(secret.code_at(time), code[2..], "time {time}");
        }
    }

    #[test]
    fn current_code_verifies_with_its_step() {
        assert_eq!(rfc_secret().verify("287082", 59), Some(1));
    }

    #[test]
    fn previous_steps_code_verifies() {
        let secret = rfc_secret();
        let code = secret.code_at(1_111_111_109);
        assert_eq!(
            secret.verify(&code, 1_111_111_109 + 30),
            Some(1_111_111_109 / 30)
        );
    }

    #[test]
    fn next_steps_code_verifies() {
        let secret = rfc_secret();
        let code = secret.code_at(1_111_111_109 + 30);
        assert_eq!(
            secret.verify(&code, 1_111_111_109),
            Some(1_111_111_109 / 30 + 1)
        );
    }

    #[test]
    fn code_two_steps_old_is_refused() {
        let secret = rfc_secret();
        let code = secret.code_at(1_234_567_890);
        assert_eq!(secret.verify(&code, 1_234_567_890 + 60), None);
    }

    #[test]
    fn wrong_code_is_refused() {
        assert_eq!(rfc_secret().verify("287083", 59), None);
    }

    #[test]
    fn code_with_a_space_verifies() {
        assert_eq!(rfc_secret().verify("287 082", 59), Some(1));
    }

    #[test]
    fn code_of_eight_digits_is_refused() {
        assert_eq!(rfc_secret().verify("94287082", 59), None);
    }

    #[test]
    fn base32_round_trip_keeps_the_secret() {
        let secret = TotpSecret::generate();
        let again = TotpSecret::from_base32(&secret.to_base32()).unwrap();
        assert_eq!(again.as_bytes(), secret.as_bytes());
    }

    #[test]
    fn generated_secret_is_20_bytes() {
        assert_eq!(TotpSecret::generate().as_bytes().len(), SECRET_BYTES);
    }

    #[test]
    fn secret_shorter_than_128_bits_is_refused() {
        assert!(TotpSecret::from_bytes(&[7; 15]).is_err());
    }

    #[test]
    fn otpauth_url_names_issuer_account_and_parameters() {
        let url = rfc_secret().otpauth_url("telemed Clinic", "dr.who@example.org");
        assert_eq!(
            url,
            "otpauth://totp/telemed%20Clinic:dr.who%40example.org\
             ?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=telemed%20Clinic\
             &algorithm=SHA1&digits=6&period=30"
        );
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        assert_eq!(format!("{:?}", rfc_secret()), "TotpSecret(..)");
    }
}
