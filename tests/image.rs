//! The image's own scripts, run for real on this machine: the boot-time settings conversion
//! (overlay/usr/libexec/camstream/firstboot) and the virtual board's post-build step, each
//! checked by loading the result into the daemon's config parser.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

const IMAGE_SETTINGS: &str = "overlay/etc/camstream/camstream.toml";

/// `camstream check-config` over the settings files `layers`, in order.
fn check(layers: &[&Path]) -> (bool, String) {
    let mut c = Command::new(BIN);
    c.arg("check-config");
    for l in layers {
        c.arg("--config").arg(l);
    }
    let out = c.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn firstboot(data: &Path, txt: &Path) {
    let out = Command::new("sh")
        .arg("overlay/usr/libexec/camstream/firstboot")
        .env("CAMSTREAM_DATA", data)
        .env("CAMSTREAM_TXT", txt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "firstboot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn table(path: &Path) -> toml::Table {
    toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn firstboot_turns_camstream_txt_into_settings() {
    let dir = temp_dir("firstboot");
    let txt = dir.join("camstream.txt");
    // Written on a PC: CRLF line ends, comments, spaces around '=', quotes and backslashes.
    std::fs::write(
        &txt,
        "# settings\r\ndevice_id = tj01\r\nsignal_url=https://signal.example.com\r\n\
         signal_token=s3cr\"t\r\nuplink_url=rtsps://media.example.com:8322/channel/{path}\r\n\
         uplink_user=cam\r\nuplink_password=p\"w\\d\r\n#wifi_ssid=ignored\r\n\
         wifi_ssid=My \"Net\"\r\nwifi_psk=pass phrase\r\nwifi_country=DE\r\n\
         modem_apn=internet.example\r\nmodem_pin=1234\r\n",
    )
    .unwrap();
    firstboot(&dir, &txt);

    let site = dir.join("camstream/site.toml");
    let t = table(&site);
    assert_eq!(t["device"]["id"].as_str(), Some("tj01"));
    assert_eq!(
        t["signal"]["url"].as_str(),
        Some("https://signal.example.com")
    );
    assert_eq!(t["signal"]["token"].as_str(), Some("s3cr\"t"));
    assert_eq!(t["uplink"]["password"].as_str(), Some("p\"w\\d"));
    let (ok, err) = check(&[Path::new(IMAGE_SETTINGS), &site]);
    assert!(ok, "the daemon refuses the generated settings: {err}");

    let wpa = std::fs::read_to_string(dir.join("camstream/wpa_supplicant.conf")).unwrap();
    assert!(wpa.contains("ssid=\"My \\\"Net\\\"\""), "{wpa}");
    assert!(wpa.contains("psk=\"pass phrase\""), "{wpa}");
    assert!(wpa.contains("country=DE"), "{wpa}");

    let modem = dir.join("camstream/modem.conf");
    let m = std::fs::read_to_string(&modem).unwrap();
    assert!(
        m.contains("apn=internet.example\n") && m.contains("pin=1234\n"),
        "{m}"
    );
    let mode = std::fs::metadata(&modem).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "modem settings (SIM PIN) readable by others");

    // Settings removed from the card are removed from the device at the next boot; the id
    // falls back to the board's serial (here the machine id).
    std::fs::write(&txt, "signal_url=http://127.0.0.1:3000\n").unwrap();
    firstboot(&dir, &txt);
    let t = table(&site);
    assert!(
        t["device"]["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("cam-") && id.len() == 12),
        "{t:?}"
    );
    assert!(t.get("uplink").is_none());
    assert!(!modem.exists(), "modem settings left behind");
    let (ok, err) = check(&[Path::new(IMAGE_SETTINGS), &site]);
    assert!(ok, "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn firstboot_reads_the_data_disk_when_there_is_no_boot_partition() {
    let dir = temp_dir("firstboot-data");
    std::fs::write(dir.join("camstream.txt"), "device_id=qemu01\n").unwrap();
    firstboot(&dir, &dir.join("no-boot-partition/camstream.txt"));
    let t = table(&dir.join("camstream/site.toml"));
    assert_eq!(t["device"]["id"].as_str(), Some("qemu01"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn virtual_board_post_build_selects_the_test_source_and_no_display() {
    let target = temp_dir("qemu-target");
    std::fs::create_dir_all(target.join("etc/camstream")).unwrap();
    let conf = target.join("etc/camstream/camstream.toml");
    std::fs::copy(IMAGE_SETTINGS, &conf).unwrap();
    let run = || {
        Command::new("sh")
            .arg("buildroot/board/camstream/qemu/post-build.sh")
            .env("TARGET_DIR", &target)
            .status()
            .unwrap()
            .success()
    };
    assert!(run());
    let t = table(&conf);
    assert_eq!(t["camera"]["source"].as_str(), Some("test"));
    assert_eq!(t["display"]["sink"].as_str(), Some("none"));
    let (ok, err) = check(&[&conf]);
    assert!(ok, "{err}");
    // A second run over the same file (no fresh overlay copy) refuses rather than writing a
    // second [display] table the daemon would reject.
    assert!(!run());
    std::fs::remove_dir_all(&target).ok();
}

#[test]
fn firstboot_rtsp_credentials_and_a_bad_value_named_by_its_camstream_txt_key() {
    let dir = temp_dir("firstboot-bad");
    let txt = dir.join("camstream.txt");
    std::fs::write(
        &txt,
        "device_id=tj01\nrtsp_user=viewer\nrtsp_password=s3cret\n",
    )
    .unwrap();
    firstboot(&dir, &txt);
    let site = dir.join("camstream/site.toml");
    let t = table(&site);
    assert_eq!(t["rtsp"]["user"].as_str(), Some("viewer"));
    assert_eq!(t["rtsp"]["password"].as_str(), Some("s3cret"));
    let (ok, err) = check(&[Path::new(IMAGE_SETTINGS), &site]);
    assert!(ok, "{err}");

    // A device id with a space: the daemon refuses it and says which camstream.txt line to fix.
    std::fs::write(&txt, "device_id=my cam\n").unwrap();
    firstboot(&dir, &txt);
    let (ok, err) = check(&[Path::new(IMAGE_SETTINGS), &site]);
    assert!(!ok);
    assert!(
        err.contains("key `device.id`")
            && err.contains(&format!("(set by device_id in {})", txt.display())),
        "{err}"
    );
    std::fs::remove_dir_all(dir).ok();
}
