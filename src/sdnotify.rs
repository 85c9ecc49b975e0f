//! systemd's notify protocol without a library: datagrams to $NOTIFY_SOCKET. `READY=1` once the
//! graph runs and the RTSP server listens; `WATCHDOG=1` from the main loop, so a wedged main
//! loop (not a merely busy streaming thread) gets the service restarted.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

fn send(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let res = if let Some(name) = bytes.strip_prefix(b"@") {
        // Abstract socket namespace.
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| sock.send_to_addr(msg.as_bytes(), &addr))
    } else {
        sock.send_to(msg.as_bytes(), &path)
    };
    if let Err(e) = res {
        log::warn!("sd_notify {msg:?}: {e}");
    }
}

pub fn ready() {
    send("READY=1");
}

/// One line for `systemctl status`.
pub fn status(text: &str) {
    send(&format!("STATUS={}", text.replace('\n', " ")));
}

pub fn stopping() {
    send("STOPPING=1");
}

/// The keep-alive period systemd asked for (half of WatchdogSec), if any.
pub fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    {
        if pid != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

pub fn watchdog() {
    send("WATCHDOG=1");
}
