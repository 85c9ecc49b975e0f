//! Who may watch: the shared token of the config, or a short-lived signed viewer token.
//!
//! A signed token grants one named viewer the right to watch one device until a time, without
//! handing out a long-lived secret. It is checked offline on the device:
//!
//! ```text
//! cs1.<expires, Unix seconds>.<viewer name>.<hex HMAC-SHA256(viewer_secret, message)>
//! message = "camstream viewer v1\n<device id>\n<expires>\n<viewer name>"
//! ```
//!
//! `camstream token --viewer NAME --valid SECONDS` mints one from the config's
//! `signal.viewer_secret`. Expiry is judged by the device's clock: a device that never set its
//! clock refuses signed tokens (it cannot tell an expired one) and still accepts the shared one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;

const PREFIX: &str = "cs1";
/// Before this (2025-01-01) the clock has not been set: boards without a battery-backed clock
/// start in 1970 or at their image's build date.
const CLOCK_SET_AFTER: u64 = 1_735_689_600;

/// A viewer the device let in, and until when its token holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The name in a signed token, "token" for the shared token, "anyone" on an open device.
    pub viewer: String,
    /// When the token stops being valid; None for the shared token and open devices.
    pub expires: Option<SystemTime>,
}

/// Why a viewer was refused. Kept vague on purpose in what goes back to the network (nothing
/// does); precise in the device's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Wrong,
    Malformed,
    OtherDevice,
    Expired,
    ClockNotSet,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Missing => "no token",
            Refusal::Wrong => "wrong token",
            Refusal::Malformed => "malformed signed token",
            Refusal::OtherDevice => "signed token with a bad signature or for another device",
            Refusal::Expired => "signed token expired",
            Refusal::ClockNotSet => "signed token refused: the device's clock is not set",
        })
    }
}

/// The device's rules, from `[signal]`.
#[derive(Debug, Clone)]
pub struct Policy {
    pub device: String,
    /// Shared token; empty: none.
    pub token: String,
    /// Key for signed tokens; empty: signed tokens are not accepted.
    pub viewer_secret: String,
    /// Anyone in the room may watch (the owner chose it; the config allows no token with it).
    pub open: bool,
}

impl Policy {
    /// Nobody can watch: no token, no viewer secret, not open (the default).
    pub fn is_closed(&self) -> bool {
        !self.open && self.token.is_empty() && self.viewer_secret.is_empty()
    }

    pub fn check(&self, given: Option<&str>, now: SystemTime) -> Result<Grant, Refusal> {
        if self.open {
            return Ok(Grant {
                viewer: "anyone".into(),
                expires: None,
            });
        }
        let Some(given) = given.filter(|g| !g.is_empty()) else {
            return Err(Refusal::Missing);
        };
        if given.starts_with("cs1.") && !self.viewer_secret.is_empty() {
            return self.check_signed(given, now);
        }
        if !self.token.is_empty() && same(given.as_bytes(), self.token.as_bytes()) {
            return Ok(Grant {
                viewer: "token".into(),
                expires: None,
            });
        }
        Err(Refusal::Wrong)
    }

    fn check_signed(&self, given: &str, now: SystemTime) -> Result<Grant, Refusal> {
        let mut parts = given.splitn(4, '.');
        let (Some(_), Some(expires), Some(name), Some(sig)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Refusal::Malformed);
        };
        let Ok(expires_s) = expires.parse::<u64>() else {
            return Err(Refusal::Malformed);
        };
        if !valid_name(name) || sig.len() != 64 {
            return Err(Refusal::Malformed);
        }
        let want = sign(&self.viewer_secret, &self.device, expires_s, name)
            .map_err(|_| Refusal::Malformed)?;
        if !same(sig.as_bytes(), want.as_bytes()) {
            return Err(Refusal::OtherDevice);
        }
        let now_s = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if now_s < CLOCK_SET_AFTER {
            return Err(Refusal::ClockNotSet);
        }
        if now_s >= expires_s {
            return Err(Refusal::Expired);
        }
        Ok(Grant {
            viewer: name.to_string(),
            expires: Some(UNIX_EPOCH + Duration::from_secs(expires_s)),
        })
    }
}

/// Viewer names: what a log line and a token can carry without quoting.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Equal in constant time (for equal lengths; a length is not a secret worth hiding).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a, b)
}

fn sign(secret: &str, device: &str, expires: u64, name: &str) -> Result<String> {
    let key = PKey::hmac(secret.as_bytes())?;
    let mut s = Signer::new(MessageDigest::sha256(), &key)?;
    s.update(format!("camstream viewer v1\n{device}\n{expires}\n{name}").as_bytes())?;
    let mac = s.sign_to_vec()?;
    Ok(mac.iter().map(|b| format!("{b:02x}")).collect())
}

/// A token for `name` on `device`, valid until `expires`.
pub fn mint(secret: &str, device: &str, name: &str, expires: SystemTime) -> Result<String> {
    if secret.is_empty() {
        bail!("signal.viewer_secret is not set: this device accepts no signed tokens");
    }
    if !valid_name(name) {
        bail!("viewer name {name:?}: 1 to 32 letters, digits, '-' or '_'");
    }
    let expires = expires
        .duration_since(UNIX_EPOCH)
        .context("expiry before 1970")?
        .as_secs();
    Ok(format!(
        "{PREFIX}.{expires}.{name}.{}",
        sign(secret, device, expires, name)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(token: &str, secret: &str) -> Policy {
        Policy {
            device: "cam-1".into(),
            token: token.into(),
            viewer_secret: secret.into(),
            open: false,
        }
    }

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn shared_token_and_open_device() {
        let p = policy("tok", "");
        assert_eq!(p.check(Some("tok"), at(NOW)).unwrap().viewer, "token");
        assert_eq!(p.check(Some("tox"), at(NOW)), Err(Refusal::Wrong));
        assert_eq!(p.check(Some("to"), at(NOW)), Err(Refusal::Wrong));
        assert_eq!(p.check(None, at(NOW)), Err(Refusal::Missing));
        // Closed by default; open only when the owner says so.
        assert_eq!(
            policy("", "").check(Some("x"), at(NOW)),
            Err(Refusal::Wrong)
        );
        assert_eq!(policy("", "").check(None, at(NOW)), Err(Refusal::Missing));
        let open = Policy {
            open: true,
            ..policy("", "")
        };
        assert!(open.check(None, at(NOW)).is_ok());
    }

    #[test]
    fn signed_tokens() {
        let p = policy("", "0123456789abcdef");
        let t = mint(&p.viewer_secret, "cam-1", "alice", at(NOW + 3600)).unwrap();
        let g = p.check(Some(&t), at(NOW)).unwrap();
        assert_eq!(g.viewer, "alice");
        assert_eq!(g.expires, Some(at(NOW + 3600)));
        assert_eq!(p.check(Some(&t), at(NOW + 3600)), Err(Refusal::Expired));
        assert_eq!(p.check(Some(&t), at(1000)), Err(Refusal::ClockNotSet));
        // Another device's token, a changed expiry or name, a forged signature.
        let other = mint(&p.viewer_secret, "cam-2", "alice", at(NOW + 3600)).unwrap();
        assert_eq!(p.check(Some(&other), at(NOW)), Err(Refusal::OtherDevice));
        let longer = t.replacen(&(NOW + 3600).to_string(), &(NOW + 7200).to_string(), 1);
        assert_eq!(p.check(Some(&longer), at(NOW)), Err(Refusal::OtherDevice));
        let renamed = t.replacen("alice", "mallo", 1);
        assert_eq!(p.check(Some(&renamed), at(NOW)), Err(Refusal::OtherDevice));
        let mut forged = t.clone();
        forged.pop();
        forged.push(if t.ends_with('0') { '1' } else { '0' });
        assert_eq!(p.check(Some(&forged), at(NOW)), Err(Refusal::OtherDevice));
        assert_eq!(p.check(Some("cs1.x.y.z"), at(NOW)), Err(Refusal::Malformed));
        // Without a viewer secret, signed tokens are just wrong tokens.
        assert_eq!(
            policy("tok", "").check(Some(&t), at(NOW)),
            Err(Refusal::Wrong)
        );
        assert!(mint("", "cam-1", "a", at(NOW)).is_err());
        assert!(mint("k", "cam-1", "a b", at(NOW)).is_err());
    }
}
