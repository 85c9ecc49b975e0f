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

/// The shells that run firstboot: this machine's sh, and BusyBox's, which the Buildroot image
/// runs it with (when installed here).
fn shells() -> Vec<Vec<&'static str>> {
    let mut v = vec![vec!["sh"]];
    if Command::new("busybox")
        .arg("true")
        .status()
        .is_ok_and(|s| s.success())
    {
        v.push(vec!["busybox", "sh"]);
    } else {
        eprintln!("SKIPPED: firstboot under BusyBox's sh (busybox is not installed)");
    }
    v
}

fn firstboot_with(shell: &[&str], data: &Path, txt: &Path) -> std::process::Output {
    Command::new(shell[0])
        .args(&shell[1..])
        .arg("overlay/usr/libexec/camstream/firstboot")
        .env("CAMSTREAM_DATA", data)
        .env("CAMSTREAM_TXT", txt)
        .output()
        .unwrap()
}

fn firstboot(data: &Path, txt: &Path) {
    let out = firstboot_with(&["sh"], data, txt);
    assert!(
        out.status.success(),
        "firstboot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
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
         signal_token=s3cr\"t\r\nsignal_viewer_secret=0123456789abcdef!\r\n\
         signal_device_key=ab12\r\nuplink_url=rtsps://media.example.com:8322/channel/{path}\r\n\
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
    assert_eq!(
        t["signal"]["viewer_secret"].as_str(),
        Some("0123456789abcdef!")
    );
    assert_eq!(t["signal"]["device_key"].as_str(), Some("ab12"));
    assert!(
        t["signal"].get("open").is_none(),
        "open without signal_open"
    );
    assert_eq!(t["uplink"]["password"].as_str(), Some("p\"w\\d"));
    let (ok, err) = check(&[Path::new(IMAGE_SETTINGS), &site]);
    assert!(ok, "the daemon refuses the generated settings: {err}");

    // Secrets: readable by the daemon's user (or root here) only.
    assert_eq!(
        mode(&site),
        0o600,
        "site.toml (uplink password, token) readable by others"
    );
    assert_eq!(mode(&dir.join("camstream")), 0o755);

    // wpa_supplicant strings have no escapes: as they are, in quotes.
    let wpa_file = dir.join("camstream/wpa_supplicant.conf");
    let wpa = std::fs::read_to_string(&wpa_file).unwrap();
    assert!(wpa.contains("ssid=\"My \"Net\"\""), "{wpa}");
    assert!(wpa.contains("psk=\"pass phrase\""), "{wpa}");
    assert!(wpa.contains("country=DE"), "{wpa}");
    assert_eq!(mode(&wpa_file), 0o600);

    let modem = dir.join("camstream/modem.conf");
    let m = std::fs::read_to_string(&modem).unwrap();
    assert!(
        m.contains("apn=internet.example\n") && m.contains("pin=1234\n"),
        "{m}"
    );
    assert_eq!(
        mode(&modem),
        0o600,
        "modem settings (SIM PIN) readable by others"
    );

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
    assert!(!wpa_file.exists(), "Wi-Fi settings left behind");
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

/// What `wpa_supplicant` itself read from `conf`: the SSID's bytes and the passphrase's bytes
/// (or the raw PSK's), from its debug output (-dd -K) while it parses the file for an
/// interface that does not exist. None when wpa_supplicant is not installed.
#[allow(clippy::type_complexity)]
fn wpa_reads(conf: &Path) -> Option<Result<(Vec<u8>, Vec<u8>, bool), String>> {
    let out = match Command::new("wpa_supplicant")
        .args(["-dd", "-K", "-D", "none", "-i", "camstream-none0", "-c"])
        .arg(conf)
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!("SKIPPED: wpa_supplicant's own reading of the file ({e})");
            return None;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    // "<what> - hexdump_ascii(len=N):" then lines of up to 16 hex bytes and their ASCII.
    let dump = |what: &str| -> Option<Vec<u8>> {
        let i = lines
            .iter()
            .position(|l| l.starts_with(&format!("{what} - hexdump_ascii(len=")))?;
        let n: usize = lines[i]
            .split("len=")
            .nth(1)?
            .split(')')
            .next()?
            .parse()
            .ok()?;
        let mut bytes = Vec::new();
        for l in &lines[i + 1..] {
            let take = (n - bytes.len()).min(16);
            bytes.extend(
                l.split_whitespace()
                    .take(take)
                    .map(|h| u8::from_str_radix(h, 16).unwrap()),
            );
            if bytes.len() >= n {
                break;
            }
        }
        Some(bytes)
    };
    let Some(ssid) = dump("ssid") else {
        return Some(Err(format!("wpa_supplicant read no SSID:\n{text}")));
    };
    if let Some(p) = dump("PSK (ASCII passphrase)") {
        return Some(Ok((ssid, p, false)));
    }
    // "PSK - hexdump(len=32): 01 23 ..."
    let raw = lines
        .iter()
        .find_map(|l| l.strip_prefix("PSK - hexdump(len=32): "))
        .map(|h| {
            h.split_whitespace()
                .map(|b| u8::from_str_radix(b, 16).unwrap())
                .collect()
        });
    match raw {
        Some(r) => Some(Ok((ssid, r, true))),
        None => Some(Err(format!("wpa_supplicant read no PSK:\n{text}"))),
    }
}

fn hex_bytes(h: &str) -> Vec<u8> {
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn firstboot_writes_wifi_passphrases_as_wpa_supplicant_reads_them() {
    let hex64 = "0123456789abcdefABCDEF0123456789abcdef0123456789abcdef0123456789";
    // (SSID, passphrase): what wpa_supplicant must read back, byte for byte.
    let accepted: &[(&str, &str)] = &[
        // Quote, backslash, spaces (inside and at the end).
        ("My \"Net\" \\ x", "pa\"ss\\ w0rd  two "),
        // A non-ASCII SSID (written as hex); '#' after an even number of quotes.
        ("Café", "a\"b\"c#d1234"),
        ("home#1", "hash#in the middle"),
        // 63 characters, the longest passphrase.
        (
            "edge",
            "~!@#$%^&*()_+{}|:<>?`-=[];',./ 0123456789abcdefghijklmnopqrstu",
        ),
        // 64 hex digits: the PSK itself.
        ("raw", hex64),
    ];
    // (passphrase, what the message says)
    let refused: &[(&str, &str)] = &[
        ("pässwort123", "printable ASCII only"),
        ("tab\tinside1", "printable ASCII only"),
        ("short", "8 to 63 characters, this one has 5"),
        (&format!("{hex64}a"), "8 to 63 characters, this one has 65"),
        ("pa\"ss#word1", "64 hexadecimal digits"),
    ];
    for shell in shells() {
        let who = shell.join(" ");
        let dir = temp_dir("firstboot-wifi");
        let txt = dir.join("camstream.txt");
        let wpa = dir.join("camstream/wpa_supplicant.conf");
        for (ssid, psk) in accepted {
            std::fs::write(
                &txt,
                format!("wifi_ssid={ssid}\r\nwifi_psk={psk}\r\nwifi_country=DE\r\n"),
            )
            .unwrap();
            let out = firstboot_with(&shell, &dir, &txt);
            assert!(
                out.status.success(),
                "{who}: {ssid:?}/{psk:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let conf = std::fs::read_to_string(&wpa).unwrap();
            assert_eq!(mode(&wpa), 0o600);
            eprintln!("{who}: {ssid:?} / {psk:?} ->\n{conf}");
            if *psk == hex64 {
                assert!(conf.contains(&format!("\tpsk={hex64}\n")), "{conf}");
            }
            if let Some(read) = wpa_reads(&wpa) {
                let (s, p, raw) = read.unwrap_or_else(|e| panic!("{who}: {e}"));
                assert_eq!(s, ssid.as_bytes(), "{who}: SSID as wpa_supplicant reads it");
                if *psk == hex64 {
                    assert!(raw, "{who}: 64 hex digits read as a passphrase");
                    assert_eq!(p, hex_bytes(hex64), "{who}: PSK");
                } else {
                    assert!(!raw);
                    assert_eq!(
                        p,
                        psk.as_bytes(),
                        "{who}: passphrase as wpa_supplicant reads it"
                    );
                }
            }
        }
        for (psk, why) in refused {
            // A good network first: a refused passphrase must not leave it (or half a file).
            std::fs::write(&txt, "wifi_ssid=net\nwifi_psk=good passphrase\n").unwrap();
            assert!(firstboot_with(&shell, &dir, &txt).status.success());
            assert!(wpa.exists());
            std::fs::write(
                &txt,
                format!(
                    "device_id=after-{}\nwifi_ssid=net\nwifi_psk={psk}\n",
                    psk.len()
                ),
            )
            .unwrap();
            let out = firstboot_with(&shell, &dir, &txt);
            let err = String::from_utf8_lossy(&out.stderr);
            eprintln!("{who}: {psk:?}: exit {:?}: {err}", out.status.code());
            assert_eq!(out.status.code(), Some(1), "{who}: {psk:?} accepted");
            assert!(
                err.contains(&format!("wifi_psk in {} refused", txt.display()))
                    && err.contains(why),
                "{who}: {psk:?}: {err}"
            );
            assert!(
                !err.contains(psk),
                "{who}: the message shows the passphrase"
            );
            assert!(!wpa.exists(), "{who}: {psk:?}: a Wi-Fi file was left");
            assert!(
                !dir.join("camstream/wpa_supplicant.conf.new").exists(),
                "{who}: half-written file"
            );
            // The rest of the card's settings still applied.
            let t = table(&dir.join("camstream/site.toml"));
            assert_eq!(
                t["device"]["id"].as_str(),
                Some(format!("after-{}", psk.len()).as_str())
            );
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// `camstream run` with the image's settings (its camstream.toml and the site.toml firstboot
/// wrote), on `port`, with the test picture instead of a camera and no recording.
fn image_device(tag: &str, port: u16, site: Option<&Path>) -> Device {
    let image = std::fs::read_to_string(IMAGE_SETTINGS).unwrap().replace(
        "bind = \"127.0.0.1\"",
        &format!("bind = \"127.0.0.1\"\nport = {port}"),
    );
    assert!(image.contains(&format!("port = {port}")));
    let site = site.map(|s| s.display().to_string());
    let mut args = vec![];
    if let Some(s) = &site {
        args.extend(["--optional-config", s.as_str()]);
    }
    args.extend([
        "--set",
        "camera.source=test",
        "--set",
        "camera.width=320",
        "--set",
        "camera.height=240",
        "--set",
        "display.sink=none",
        "--set",
        "recording.enabled=false",
    ]);
    Device::start(tag, &image, &args)
}

#[test]
fn the_image_rtsp_server_is_closed_by_default() {
    let dir = temp_dir("firstboot-rtsp");
    let txt = dir.join("camstream.txt");
    std::fs::write(&txt, "device_id=tj01\n").unwrap();
    firstboot(&dir, &txt);
    let site = dir.join("camstream/site.toml");
    let t = table(&site);
    let user = t["rtsp"]["user"].as_str().unwrap().to_string();
    let password = t["rtsp"]["password"].as_str().unwrap().to_string();
    assert_eq!(user, "viewer");
    assert!(
        password.len() == 20 && password.chars().all(|c| c.is_ascii_alphanumeric()),
        "{password:?}"
    );
    assert_eq!(t["rtsp"]["bind"].as_str(), Some("0.0.0.0"));
    assert_eq!(mode(&site), 0o600);
    assert_eq!(mode(&dir.join("camstream/rtsp-password")), 0o600);
    // Shown to the owner beside camstream.txt, once.
    let shown = dir.join("camstream-credentials.txt");
    let note = std::fs::read_to_string(&shown).unwrap();
    eprintln!("{note}");
    assert!(
        note.contains(&format!("rtsp://viewer:{password}@")) && note.contains("\r\n"),
        "{note}"
    );
    std::fs::remove_file(&shown).unwrap();
    firstboot(&dir, &txt);
    assert!(
        !shown.exists(),
        "the credentials were written a second time"
    );
    assert_eq!(
        table(&site)["rtsp"]["password"].as_str(),
        Some(password.as_str()),
        "the generated password changed at the next boot"
    );
    let (ok, err) = check(&[Path::new(IMAGE_SETTINGS), &site]);
    assert!(ok, "{err}");

    // The daemon with these settings: every address, credentials required, no warning.
    let port = free_port();
    let dev = image_device("image-closed", port, Some(&site));
    let denied = ffprobe(&dev.url(), "tcp", 1);
    eprintln!("without credentials: {denied:?}");
    let why = denied.expect_err("the image's RTSP server plays without credentials");
    assert!(why.contains("401") || why.contains("Unauthorized"), "{why}");
    let url = format!("rtsp://{user}:{password}@127.0.0.1:{port}/live");
    let (codec, _, _, frames) = ffprobe(&url, "tcp", 1).expect("the generated credentials work");
    assert_eq!(codec, "h264");
    assert!(frames > 0);
    let log = dev.log_text();
    assert!(!log.contains("OPEN TO EVERYONE"), "{log}");
    drop(dev);

    // The owner's credentials from camstream.txt replace the generated ones.
    std::fs::write(&txt, "rtsp_user=me\nrtsp_password=mine-secret\n").unwrap();
    firstboot(&dir, &txt);
    let t = table(&site);
    assert_eq!(t["rtsp"]["user"].as_str(), Some("me"));
    assert_eq!(t["rtsp"]["password"].as_str(), Some("mine-secret"));
    assert!(!shown.exists());

    // No data partition (no site.toml): loopback only, so still nobody outside can watch.
    let port = free_port();
    let dev = image_device("image-no-data", port, None);
    let log = dev.log_text();
    let ready = log
        .lines()
        .find(|l| l.contains("RTSP server ready at"))
        .unwrap();
    assert!(
        ready.ends_with(&format!("rtsp://127.0.0.1:{port}/live")),
        "{ready}"
    );
    assert!(!log.contains("OPEN TO EVERYONE"), "{log}");
    std::fs::remove_dir_all(&dir).ok();
}
