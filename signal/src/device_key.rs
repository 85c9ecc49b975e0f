//! Device keys: what lets a socket be the device of a room. A device's key is
//! `hex(HMAC-SHA256(relay secret, "camstream device v1\n" + device id))`, so the relay keeps one
//! secret for every device it will ever see and no list; `camstream-signal device-key <id>`
//! prints the key to put in the device's `signal.device_key`.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use hmac::{KeyInit, Mac};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The relay's secret; unset: an open relay (the seed's behaviour: every member of a room sees
/// every relayed event).
static SECRET: OnceLock<Vec<u8>> = OnceLock::new();

/// Reads the secret (the file's first line, 16 bytes or more) and makes the relay closed.
pub fn load(file: &Path) -> Result<()> {
    let s = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the device secret {}", file.display()))?;
    let s = s.lines().next().unwrap_or("").trim().to_string();
    if s.len() < 16 {
        bail!(
            "{}: the device secret must be 16 characters or more",
            file.display()
        );
    }
    let _ = SECRET.set(s.into_bytes());
    Ok(())
}

/// Closed relay: devices prove who they are and events go only where they are meant to.
pub fn closed() -> bool {
    SECRET.get().is_some()
}

fn mac(secret: &[u8], device: &str) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    m.update(format!("camstream device v1\n{device}").as_bytes());
    m
}

/// The key of `device` under the loaded secret.
pub fn key_for(device: &str) -> Option<String> {
    let secret = SECRET.get()?;
    let tag = mac(secret, device).finalize().into_bytes();
    Some(tag.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `given` is `device`'s key (compared in constant time).
pub fn verify(device: &str, given: &str) -> bool {
    let Some(secret) = SECRET.get() else {
        return false;
    };
    let Some(bytes) = from_hex(given) else {
        return false;
    };
    mac(secret, device).verify_slice(&bytes).is_ok()
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}
