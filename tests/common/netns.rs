//! A network namespace of the test's own with one usable address (`ADDR` on a veth pair, and a
//! default route): what headless Chromium needs to gather ICE candidates, which it does not on
//! loopback. Whatever a closure given to `run` starts (processes, sockets) lives in it; it is
//! removed on drop, also when the test panics.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// The namespace's own address (a benchmarking range, RFC 2544: routed nowhere).
pub const ADDR: &str = "198.18.0.1";

static SEQ: AtomicU32 = AtomicU32::new(0);

pub struct Netns {
    pub name: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Why a namespace cannot be made here, if it cannot.
    pub fn unavailable() -> Option<String> {
        if !nix::unistd::geteuid().is_root() {
            return Some("network namespaces need root".into());
        }
        match Command::new("ip")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(s) if s.success() => None,
            _ => Some("no `ip` (iproute2)".into()),
        }
    }

    /// `cs-<tag>-<pid>-<n>` with loopback up, `v0` (ADDR/24) paired with `v1`, and a default
    /// route through the (absent) .2 of that network.
    pub fn new(tag: &str) -> Result<Netns, String> {
        let name = format!(
            "cs-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        let addr = format!("{ADDR}/24");
        let gw = ADDR
            .rsplit_once('.')
            .map(|(n, _)| format!("{n}.2"))
            .unwrap();
        for args in [
            &["link", "set", "lo", "up"][..],
            &["link", "add", "v0", "type", "veth", "peer", "name", "v1"],
            &["link", "set", "v0", "up"],
            &["link", "set", "v1", "up"],
            &["addr", "add", &addr, "dev", "v0"],
            &["route", "add", "default", "via", &gw, "dev", "v0", "onlink"],
        ] {
            let mut all = vec!["-n", ns.name.as_str()];
            all.extend_from_slice(args);
            ip(&all)?;
        }
        Ok(ns)
    }

    /// Runs `f` in a thread inside the namespace; processes it spawns and sockets it makes
    /// stay there.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        super::link::thread_in(&self.name, f)
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}
