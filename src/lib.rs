//! camstream: a camera-streaming daemon for Linux single-board computers.
//!
//! One GStreamer graph: camera → raw tee → display; raw tee → one H.264 encode → encoded tee →
//! RTSP server (and, in later parts, recording and uplink).

pub mod backoff;
pub mod branch;
pub mod camera;
pub mod config;
pub mod daemon;
pub mod drm;
pub mod drops;
pub mod gop_gate;
pub mod keyframes;
pub mod logging;
pub mod metrics;
pub mod offload;
pub mod plan;
pub mod playback;
pub mod probe;
pub mod profile;
pub mod recording;
pub mod rtsp;
pub mod sdnotify;
pub mod signal;
pub mod stamp;
pub mod status;
pub mod uplink;
pub mod viewer_token;
