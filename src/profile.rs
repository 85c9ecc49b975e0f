//! Board profiles: what differs between boards (encoder order, decoders, per-element properties)
//! lives as data in `pipelines/*.toml`, built into the binary and overridable from a directory.
//! Porting camstream to a new board means adding a file, not code.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use serde::Deserialize;

use crate::config::Config;

/// Profiles compiled into the binary, so a bare binary works without its data directory.
const BUILTIN: &[(&str, &str)] = &[
    ("generic", include_str!("../pipelines/generic.toml")),
    ("rpi4", include_str!("../pipelines/rpi4.toml")),
    ("rpi5", include_str!("../pipelines/rpi5.toml")),
    ("virt", include_str!("../pipelines/virt.toml")),
];
const BUILTIN_ENCODERS: &str = include_str!("../pipelines/encoders.toml");

pub type Properties = BTreeMap<String, String>;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderMapping {
    pub input_format: String,
    pub profiles: Vec<String>,
    #[serde(default)]
    pub properties: Properties,
    #[serde(default)]
    pub low_latency: Properties,
    /// Set while the encoder runs to change its bitrate (the uplink follows its link);
    /// empty: the element cannot, and a narrow link costs whole GOPs instead.
    #[serde(default)]
    pub rate: Properties,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardProfile {
    #[serde(skip)]
    pub name: String,
    pub description: String,
    #[serde(rename = "match")]
    pub matches: Vec<String>,
    pub encoders: Vec<String>,
    pub jpeg_decoders: Vec<String>,
    pub h264_decoders: Vec<String>,
    #[serde(default)]
    pub display_properties: BTreeMap<String, Properties>,
    #[serde(default)]
    pub display_fit: DisplayFit,
    /// Per-encoder properties that replace or extend `encoders.toml` on this board.
    #[serde(default)]
    pub encoder_properties: BTreeMap<String, Properties>,
    /// Where the uplink's H.264 comes from on this board (`uplink.encode = "auto"`).
    #[serde(default)]
    pub uplink_encode: UplinkEncode,
}

/// The uplink's encoding: the one the recording uses, or one of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UplinkEncode {
    /// The encoded tee: one encode for everything; a narrow link lowers the recording's
    /// bitrate too (down to `uplink.min_bitrate_kbps`), then costs the uplink whole GOPs.
    #[default]
    Shared,
    /// A second encoder on the raw tee for the uplink alone: the recording keeps its quality
    /// whatever the link; below the floor the uplink's frame rate goes down instead. Costs a
    /// second encode (x264 at 720p30: about as much CPU again).
    Own,
}

/// How the picture is made to fit the screen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DisplayFit {
    /// The display controller scales a plane to the screen's current mode (vc4's HVS does):
    /// the picture goes as it is.
    #[default]
    Plane,
    /// The primary plane cannot scale (virtio-gpu, many PC GPUs): the picture is scaled in
    /// software, aspect kept, to the screen's preferred mode, which kmssink then sets
    /// (`force-modesetting` in the profile's kmssink properties).
    Mode,
}

/// A resolved profile plus the encoder mapping table.
#[derive(Debug, Clone)]
pub struct Profiles {
    pub board: BoardProfile,
    pub encoders: BTreeMap<String, EncoderMapping>,
}

fn read_override(dir: &Path, file: &str) -> Result<Option<String>> {
    let path = dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn parse_board(name: &str, text: &str) -> Result<BoardProfile> {
    let mut p: BoardProfile =
        toml::from_str(text).map_err(|e| anyhow!("board profile {name}: {e}"))?;
    p.name = name.to_string();
    Ok(p)
}

/// The board's model string from the device tree ("Raspberry Pi 4 Model B Rev 1.4"), if any.
pub fn board_model() -> Option<String> {
    [
        "/proc/device-tree/model",
        "/sys/firmware/devicetree/base/model",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .map(|s| s.trim_end_matches('\0').trim().to_string())
}

/// Every known profile: the directory's files shadow built-ins of the same name.
pub fn all_boards(dir: &Path) -> Result<Vec<BoardProfile>> {
    let mut out = Vec::new();
    for (name, text) in BUILTIN {
        let text = read_override(dir, &format!("{name}.toml"))?.unwrap_or_else(|| text.to_string());
        out.push(parse_board(name, &text)?);
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut extra: Vec<_> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        extra.sort();
        for path in extra {
            let name = path
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            if name == "encoders" || BUILTIN.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            out.push(parse_board(&name, &text)?);
        }
    }
    Ok(out)
}

impl Profiles {
    pub fn load(cfg: &Config) -> Result<Self> {
        let dir = Path::new(&cfg.pipeline.profiles_dir);
        let boards = all_boards(dir)?;
        let wanted = cfg.pipeline.profile.as_str();
        let board = if wanted == "auto" {
            let model = board_model().unwrap_or_default();
            boards
                .iter()
                .find(|b| b.matches.iter().any(|m| model.contains(m.as_str())))
                .or_else(|| boards.iter().find(|b| b.name == "generic"))
                .cloned()
                .ok_or_else(|| anyhow!("no board profile matches and no generic profile"))?
        } else {
            boards
                .iter()
                .find(|b| b.name == wanted)
                .cloned()
                .ok_or_else(|| {
                    let names: Vec<_> = boards.iter().map(|b| b.name.as_str()).collect();
                    anyhow!(
                        "key `pipeline.profile`: unknown profile {wanted:?}; known: {}",
                        names.join(", ")
                    )
                })?
        };
        let enc_text =
            read_override(dir, "encoders.toml")?.unwrap_or_else(|| BUILTIN_ENCODERS.to_string());
        let encoders: BTreeMap<String, EncoderMapping> =
            toml::from_str(&enc_text).map_err(|e| anyhow!("encoders.toml: {e}"))?;
        Ok(Self { board, encoders })
    }

    /// Encoders to try, in order: the pinned one alone, or the board's priority list.
    pub fn encoder_candidates(&self, cfg: &Config) -> Vec<String> {
        if cfg.encoder.name == "auto" {
            self.board.encoders.clone()
        } else {
            vec![cfg.encoder.name.clone()]
        }
    }

    /// The properties to set on `encoder`, placeholders filled in from the config.
    pub fn encoder_properties(&self, encoder: &str, cfg: &Config) -> Properties {
        let mut props = Properties::new();
        if let Some(m) = self.encoders.get(encoder) {
            props.extend(m.properties.clone());
            if cfg.encoder.low_latency {
                props.extend(m.low_latency.clone());
            }
        }
        if let Some(extra) = self.board.encoder_properties.get(encoder) {
            props.extend(extra.clone());
        }
        let kbps = cfg.encoder.bitrate_kbps.get();
        for v in props.values_mut() {
            *v = v
                .replace("{bitrate_kbps}", &kbps.to_string())
                .replace("{bitrate_bps}", &(kbps * 1000).to_string())
                .replace("{keyframe_frames}", &cfg.keyframe_frames().to_string());
        }
        props
    }

    /// How to change `encoder`'s bitrate while it runs (placeholders left in).
    pub fn encoder_rate(&self, encoder: &str) -> Properties {
        self.encoders
            .get(encoder)
            .map(|m| m.rate.clone())
            .unwrap_or_default()
    }

    pub fn encoder_input_format(&self, encoder: &str) -> &str {
        self.encoders
            .get(encoder)
            .map(|m| m.input_format.as_str())
            .unwrap_or("I420")
    }

    /// The profile to force on the encoder's output caps, if this encoder can produce it.
    pub fn encoder_profile(&self, encoder: &str, cfg: &Config) -> Option<&'static str> {
        let want = cfg.encoder.profile.caps_name();
        match self.encoders.get(encoder) {
            Some(m) if m.profiles.iter().any(|p| p == want) => Some(want),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profiles_parse_and_map_settings() {
        let mut cfg = Config::default();
        cfg.pipeline.profile = "generic".into();
        cfg.pipeline.profiles_dir = "/nonexistent".into();
        let p = Profiles::load(&cfg).unwrap();
        assert_eq!(p.board.encoders.last().unwrap(), "openh264enc");
        let props = p.encoder_properties("x264enc", &cfg);
        assert_eq!(props["bitrate"], "2500");
        assert_eq!(props["key-int-max"], "30");
        assert_eq!(props["tune"], "zerolatency");
        for name in ["rpi4", "rpi5", "virt"] {
            cfg.pipeline.profile = name.into();
            let p = Profiles::load(&cfg).unwrap();
            for enc in &p.board.encoders {
                assert!(p.encoders.contains_key(enc), "{name}: {enc} has no mapping");
            }
        }
    }
}
