//! The screen as the kernel's DRM subsystem sees it: which card drives a connected connector,
//! that card's DRM driver name and the connector's preferred mode. Read from sysfs and one
//! DRM_IOCTL_VERSION, so nothing about a particular driver lives in code: kmssink is told the
//! driver of the card that has the screen (it only guesses among a built-in list otherwise, which
//! misses virtio_gpu among others).

use std::os::fd::AsRawFd;
use std::path::Path;

/// A connected screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Screen {
    /// "card0".
    pub card: String,
    /// "card0-HDMI-A-1".
    pub connector: String,
    /// The DRM driver's name ("vc4", "virtio_gpu", "i915"), when the card answered.
    pub driver: Option<String>,
    /// The connector's preferred mode (the first one it lists), when it lists any.
    pub mode: Option<(u32, u32)>,
}

/// The first connected connector, in sysfs order.
pub fn connected_screen() -> Option<Screen> {
    connected_screen_in(Path::new("/sys/class/drm"), Path::new("/dev/dri"))
}

fn connected_screen_in(sys: &Path, dev: &Path) -> Option<Screen> {
    let mut entries: Vec<_> = std::fs::read_dir(sys)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("card") && n.contains('-'))
        .collect();
    entries.sort();
    entries.into_iter().find_map(|connector| {
        let dir = sys.join(&connector);
        let status = std::fs::read_to_string(dir.join("status")).ok()?;
        if status.trim() != "connected" {
            return None;
        }
        let card = connector.split('-').next()?.to_string();
        let mode = std::fs::read_to_string(dir.join("modes"))
            .ok()
            .and_then(|m| m.lines().next().and_then(parse_mode));
        Some(Screen {
            driver: driver_name(&dev.join(&card)),
            card,
            connector,
            mode,
        })
    })
}

/// "1024x768" (sysfs lists interlaced modes as "1920x1080i").
fn parse_mode(line: &str) -> Option<(u32, u32)> {
    let (w, h) = line.trim().split_once('x')?;
    let h: String = h.chars().take_while(|c| c.is_ascii_digit()).collect();
    Some((w.parse().ok()?, h.parse().ok()?))
}

/// struct drm_version from <drm/drm.h>.
#[repr(C)]
struct DrmVersion {
    major: i32,
    minor: i32,
    patchlevel: i32,
    name_len: usize,
    name: *mut u8,
    date_len: usize,
    date: *mut u8,
    desc_len: usize,
    desc: *mut u8,
}

/// DRM_IOWR(0x00, struct drm_version).
const DRM_IOCTL_VERSION: u64 =
    (3 << 30) | ((std::mem::size_of::<DrmVersion>() as u64) << 16) | ((b'd' as u64) << 8);

/// The DRM driver's name of the card at `node`.
fn driver_name(node: &Path) -> Option<String> {
    let file = std::fs::File::open(node).ok()?;
    let mut name = [0u8; 64];
    let mut v = DrmVersion {
        major: 0,
        minor: 0,
        patchlevel: 0,
        name_len: name.len(),
        name: name.as_mut_ptr(),
        date_len: 0,
        date: std::ptr::null_mut(),
        desc_len: 0,
        desc: std::ptr::null_mut(),
    };
    // SAFETY: `v` is a valid drm_version whose name buffer outlives the call and whose length
    // fields bound what the kernel writes; the other buffers are zero-length.
    let rc = unsafe {
        nix::libc::ioctl(
            file.as_raw_fd(),
            DRM_IOCTL_VERSION as _,
            &mut v as *mut DrmVersion,
        )
    };
    if rc != 0 {
        return None;
    }
    let len = v.name_len.min(name.len());
    let s = String::from_utf8_lossy(&name[..len])
        .trim_end_matches('\0')
        .to_string();
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!(parse_mode("1024x768"), Some((1024, 768)));
        assert_eq!(parse_mode("1920x1080i\n"), Some((1920, 1080)));
        assert_eq!(parse_mode("junk"), None);
    }

    #[test]
    fn the_first_connected_connector_is_the_screen() {
        let dir = std::env::temp_dir().join(format!("camstream-drm-{}", std::process::id()));
        for (c, status, modes) in [
            ("card0-HDMI-A-1", "disconnected", ""),
            ("card0-HDMI-A-2", "connected", "1280x1024\n1024x768\n"),
        ] {
            std::fs::create_dir_all(dir.join(c)).unwrap();
            std::fs::write(dir.join(c).join("status"), format!("{status}\n")).unwrap();
            std::fs::write(dir.join(c).join("modes"), modes).unwrap();
        }
        std::fs::create_dir_all(dir.join("card0")).unwrap();
        let s = connected_screen_in(&dir, &dir.join("nodev")).unwrap();
        assert_eq!(s.connector, "card0-HDMI-A-2");
        assert_eq!(s.card, "card0");
        assert_eq!(s.mode, Some((1280, 1024)));
        assert_eq!(s.driver, None);
        std::fs::remove_dir_all(dir).ok();
    }
}
