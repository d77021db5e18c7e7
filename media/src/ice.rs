//! ICE servers handed to clients with their signaling answer: STUN, and TURN with short-lived
//! credentials.
//!
//! TURN credentials follow the "TURN REST API" convention that coturn implements
//! (`use-auth-secret` / `static-auth-secret`): the username is `"{expiry_unix}:{user}"` and the
//! password is `base64(HMAC-SHA1(secret, username))`. The TURN server shares only the secret with
//! us, recomputes the password from the username it is shown, and refuses it after the expiry, so
//! no per-user state is kept anywhere and a leaked credential dies on its own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha1::Sha1;

/// One entry of a client's ICE server list, shaped like the W3C `RTCIceServer` dictionary so a
/// browser can pass it to `new RTCPeerConnection({ iceServers })` unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:`, `stuns:`, `turn:` or `turns:` URLs (RFC 7064, RFC 7065).
    pub urls: Vec<String>,
    /// TURN username; absent for STUN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password; absent for STUN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Which ICE servers clients are told about.
///
/// The default lists none: the SFU itself answers on a public address, so a client on an open
/// network needs no help; STUN and TURN are for clients behind restrictive NATs or firewalls.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IceConfig {
    /// STUN URLs, handed out as they are (e.g. `stun:stun.example.org:3478`).
    pub stun_urls: Vec<String>,
    /// A coturn-style TURN service sharing a secret with us, if any.
    pub turn: Option<TurnConfig>,
}

/// A TURN service using ephemeral REST credentials.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TurnConfig {
    /// `turn:` / `turns:` URLs of the service, e.g. `turn:turn.example.org:3478?transport=udp`.
    pub urls: Vec<String>,
    /// The secret configured in coturn as `static-auth-secret`.
    pub secret: TurnSecret,
    /// How long a credential stays valid. It must outlast a visit's reconnects but not by much:
    /// whoever holds it can relay through our TURN server until then.
    #[serde(with = "seconds", rename = "ttl_secs")]
    pub ttl: Duration,
}

/// The shared TURN secret; `Debug` does not print it.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct TurnSecret(String);

impl TurnSecret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }
}

impl std::fmt::Debug for TurnSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TurnSecret(..)")
    }
}

mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// A configured URL with a scheme that is not an ICE server's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("ICE server URL {url:?} must start with {expected}")]
pub struct IceUrlError {
    /// The URL as configured.
    pub url: String,
    /// The schemes allowed where it was found.
    pub expected: &'static str,
}

impl IceConfig {
    /// Checks URL schemes at startup, so a typo is reported to the operator rather than
    /// silently ignored by every client's browser.
    pub fn validate(&self) -> Result<(), IceUrlError> {
        check_schemes(&self.stun_urls, &["stun:", "stuns:"], "stun: or stuns:")?;
        if let Some(turn) = &self.turn {
            check_schemes(&turn.urls, &["turn:", "turns:"], "turn: or turns:")?;
        }
        Ok(())
    }

    /// The ICE servers for `user` (an opaque name for the participant, never its id or name:
    /// TURN servers log usernames), with TURN credentials valid from `now` for the configured
    /// time to live.
    pub fn servers(&self, user: &str, now: SystemTime) -> Vec<IceServer> {
        let mut servers = Vec::with_capacity(2);
        if !self.stun_urls.is_empty() {
            servers.push(IceServer {
                urls: self.stun_urls.clone(),
                username: None,
                credential: None,
            });
        }
        if let Some(turn) = self.turn.as_ref().filter(|t| !t.urls.is_empty()) {
            let expiry = now
                .checked_add(turn.ttl)
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            let (username, credential) = turn_credential(&turn.secret, expiry, user);
            servers.push(IceServer {
                urls: turn.urls.clone(),
                username: Some(username),
                credential: Some(credential),
            });
        }
        servers
    }
}

fn check_schemes(
    urls: &[String],
    schemes: &[&str],
    expected: &'static str,
) -> Result<(), IceUrlError> {
    match urls.iter().find(|url| {
        !schemes.iter().any(|s| {
            url.get(..s.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(s))
        })
    }) {
        Some(url) => Err(IceUrlError {
            url: url.clone(),
            expected,
        }),
        None => Ok(()),
    }
}

/// The coturn REST username and password for `user` until `expiry_unix`.
pub fn turn_credential(secret: &TurnSecret, expiry_unix: u64, user: &str) -> (String, String) {
    let username = format!("{expiry_unix}:{user}");
    // HMAC accepts keys of any length, so this cannot fail.
    let credential = match Hmac::<Sha1>::new_from_slice(secret.0.as_bytes()) {
        Ok(mut mac) => {
            mac.update(username.as_bytes());
            STANDARD.encode(mac.finalize().into_bytes())
        }
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    (username, credential)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> IceConfig {
        IceConfig {
            stun_urls: vec!["stun:stun.example.org:3478".into()],
            turn: Some(TurnConfig {
                urls: vec![
                    "turn:turn.example.org:3478?transport=udp".into(),
                    "turns:turn.example.org:5349?transport=tcp".into(),
                ],
                secret: TurnSecret::new("coturn-shared-secret"),
                ttl: Duration::from_secs(600),
            }),
        }
    }

    #[test]
    fn turn_credential_matches_an_independent_computation() {
        // Computed outside Rust, in the shell, both ways giving the same answer:
        //   echo -n "1800000600:participant-7" \
        //     | openssl dgst -sha1 -hmac "coturn-shared-secret" -binary | base64
        //   python3 -c "import hmac,hashlib,base64; print(base64.b64encode(hmac.new(
        //     b'coturn-shared-secret', b'1800000600:participant-7', hashlib.sha1).digest()))"
        let (username, credential) = turn_credential(
            &TurnSecret::new("coturn-shared-secret"),
            1_800_000_600,
            "participant-7",
        );
        assert_eq!(username, "1800000600:participant-7");
        assert_eq!(credential, "6Rn4ucGxm/TJjIA0YT4HyBJH968=");
    }

    #[test]
    fn servers_list_stun_then_turn_with_expiry_after_ttl() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let servers = config().servers("participant-7", now);
        assert_eq!(
            servers,
            vec![
                IceServer {
                    urls: vec!["stun:stun.example.org:3478".into()],
                    username: None,
                    credential: None,
                },
                IceServer {
                    urls: vec![
                        "turn:turn.example.org:3478?transport=udp".into(),
                        "turns:turn.example.org:5349?transport=tcp".into(),
                    ],
                    username: Some("1800000600:participant-7".into()),
                    credential: Some("6Rn4ucGxm/TJjIA0YT4HyBJH968=".into()),
                },
            ]
        );
    }

    #[test]
    fn credentials_change_with_time_and_user() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let a = config().servers("a", now);
        let b = config().servers("b", now);
        let later = config().servers("a", now + Duration::from_secs(1));
        assert_ne!(a[1].credential, b[1].credential);
        assert_ne!(a[1].credential, later[1].credential);
    }

    #[test]
    fn default_lists_no_servers() {
        assert!(
            IceConfig::default()
                .servers("a", SystemTime::now())
                .is_empty()
        );
    }

    #[test]
    fn stun_serializes_as_rtc_ice_server_without_credentials() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let json = serde_json::to_value(config().servers("p", now)).expect("json");
        assert_eq!(
            json[0],
            serde_json::json!({ "urls": ["stun:stun.example.org:3478"] })
        );
        assert_eq!(json[1]["username"], "1800000600:p");
        assert!(json[1]["credential"].is_string());
    }

    #[test]
    fn config_reads_from_toml_like_data_and_hides_the_secret() {
        let config: IceConfig = serde_json::from_value(serde_json::json!({
            "stun_urls": ["stun:s.example.org"],
            "turn": { "urls": ["turn:t.example.org"], "secret": "s3cr3t-value", "ttl_secs": 900 }
        }))
        .expect("config");
        let turn = config.turn.as_ref().expect("turn");
        assert_eq!(turn.ttl, Duration::from_secs(900));
        assert!(!format!("{config:?}").contains("s3cr3t-value"));
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn wrong_schemes_are_reported() {
        let mut c = config();
        c.stun_urls.push("http://stun.example.org".into());
        assert_eq!(
            c.validate(),
            Err(IceUrlError {
                url: "http://stun.example.org".into(),
                expected: "stun: or stuns:",
            })
        );
        let mut c = config();
        if let Some(turn) = c.turn.as_mut() {
            turn.urls = vec!["stun:turn.example.org".into()];
        }
        assert!(c.validate().is_err());
        let mut c = config();
        c.stun_urls = vec!["STUN:upper.example.org".into(), "s".into()];
        assert!(c.validate().is_err());
    }
}
