//! Which camera the device streams, by an identity that survives an unplug: a replugged camera
//! may come back under another node (`/dev/video1` while something still holds the old
//! `/dev/video0`, or a different USB port), so the node number is not the camera.
//!
//! The identity is read from sysfs: the device behind the node (its bus path: the USB port, or
//! the platform device) and the node's index on it (a UVC camera has a capture node, index 0,
//! and a metadata node, index 1), with the device's name as a fallback for a camera moved to
//! another port.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The device in sysfs ("/sys/devices/platform/vivid.0", "…/usb1/1-1/1-1:1.0").
    pub device: PathBuf,
    /// The node's index on its device.
    pub index: u32,
    /// The device's name ("vivid", "HD Pro Webcam C920").
    pub name: String,
}

const SYS: &str = "/sys/class/video4linux";

/// The identity of the camera at `node` (a /dev path, or a symlink to one such as
/// /dev/v4l/by-id/…), if the node exists now.
pub fn identify(node: &str) -> Option<Identity> {
    let real = std::fs::canonicalize(node).ok()?;
    let base = real.file_name()?.to_str()?.to_string();
    identity_of(&Path::new(SYS).join(base))
}

fn identity_of(sys_node: &Path) -> Option<Identity> {
    let device = std::fs::canonicalize(sys_node.join("device")).ok()?;
    let index = std::fs::read_to_string(sys_node.join("index"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let name = std::fs::read_to_string(sys_node.join("name"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    Some(Identity {
        device,
        index,
        name,
    })
}

/// The node that has `id` now: the same device and index, else (moved to another port) the
/// only node with the same name and index.
pub fn find(id: &Identity) -> Option<String> {
    let nodes: Vec<(String, Identity)> = std::fs::read_dir(SYS)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            name.starts_with("video")
                .then(|| identity_of(&e.path()).map(|i| (format!("/dev/{name}"), i)))
                .flatten()
        })
        .filter(|(node, _)| Path::new(node).exists())
        .collect();
    if let Some((node, _)) = nodes
        .iter()
        .find(|(_, i)| i.device == id.device && i.index == id.index)
    {
        return Some(node.clone());
    }
    let same_name: Vec<&String> = nodes
        .iter()
        .filter(|(_, i)| i.name == id.name && i.index == id.index && !id.name.is_empty())
        .map(|(n, _)| n)
        .collect();
    (same_name.len() == 1).then(|| same_name[0].clone())
}

/// The device number of the node at `node`, if it exists.
pub fn rdev(node: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(node).ok().map(|m| m.rdev())
}

/// Points every descriptor of this process that is open on device `rdev` at /dev/null instead,
/// which lets the device go; returns how many. Called once the camera's source is stopped and
/// gone, so no live element uses them. The descriptor numbers stay taken (by /dev/null), so
/// whatever still owns one may later close it without closing anything else.
pub fn release_handles(rdev: u64) -> usize {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut released = 0;
    for e in entries.filter_map(|e| e.ok()) {
        let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        // The link's target, stat'ed through the descriptor itself (the node may be gone).
        let Ok(meta) = std::fs::metadata(e.path()) else {
            continue;
        };
        if meta.file_type().is_char_device() && meta.rdev() == rdev && fd != null.as_raw_fd() {
            // SAFETY: dup2 onto a descriptor number this process holds; both are valid.
            if unsafe { nix::libc::dup2(null.as_raw_fd(), fd) } == fd {
                released += 1;
            }
        }
    }
    released
}

/// The first node, by number, that opens as a camera: for a configured node that does not
/// exist (a camera that came up under another number), so the device still streams the camera
/// it has. Opens each node briefly.
pub fn first_camera() -> Option<String> {
    let mut nodes: Vec<(u32, String)> = std::fs::read_dir("/dev")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let n = name.strip_prefix("video")?.parse().ok()?;
            Some((n, format!("/dev/{name}")))
        })
        .collect();
    nodes.sort();
    nodes
        .into_iter()
        .map(|(_, node)| node)
        .find(|node| crate::plan::camera_caps(node).is_ok())
}
