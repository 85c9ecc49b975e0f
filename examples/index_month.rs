//! How long the recordings index takes to build from a card holding a month of 60 s segments
//! (43,200 files), what it costs in memory, and how long a listing takes: the figures
//! `scripts/bench` reports for remote browsing of recordings.
//!
//! The files are hard links to one real 60 s MP4 (made here by x264 at a tiny size), named and
//! laid out as the recorder names them, so the build reads a real MP4 index per file.
//!
//! Usage: index_month [--files N] [--dir DIR]
//! Prints one JSON line: files, build_ms, rss_kib (before and after), list_day_ms,
//! list_month_ms, answer bytes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use camstream::recording::index::{self, Index};
use camstream::recording::naming::{self, SegmentId, SegmentName};
use gst::prelude::*;

const SEGMENT_S: u64 = 60;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// One 60 s MP4 at 1 frame/s, 64x64: a real index to read.
fn make_segment(path: &Path) -> Result<()> {
    let launch = format!(
        "videotestsrc num-buffers={SEGMENT_S} ! video/x-raw,width=64,height=64,framerate=1/1 \
         ! x264enc speed-preset=ultrafast key-int-max=1 ! h264parse ! mp4mux ! filesink location={}",
        path.display()
    );
    let pipeline = gst::parse::launch(&launch)?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow!("not a pipeline"))?;
    pipeline.set_state(gst::State::Playing)?;
    let bus = pipeline.bus().ok_or_else(|| anyhow!("no bus"))?;
    let msg = bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(60),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    );
    pipeline.set_state(gst::State::Null)?;
    match msg.map(|m| m.type_()) {
        Some(gst::MessageType::Eos) => Ok(()),
        _ => Err(anyhow!("could not make the sample segment")),
    }
}

fn main() -> Result<()> {
    gst::init()?;
    let mut files = 43_200u64;
    let mut dir: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().ok_or_else(|| anyhow!("{a} needs a value"))?;
        match a.as_str() {
            "--files" => files = v.parse()?,
            "--dir" => dir = Some(PathBuf::from(v)),
            _ => return Err(anyhow!("unknown option {a}")),
        }
    }
    let dir = dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("camstream-index-month-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir)?;
    let sample = dir.join("sample.mp4");
    make_segment(&sample)?;

    // A month ending now, one boot, back to back.
    let now = naming::wall_clock().ok_or_else(|| anyhow!("the clock is not set"))?;
    let first = now - files * SEGMENT_S;
    for i in 0..files {
        let name = SegmentName {
            id: SegmentId {
                boot: 1,
                segment: i as u32 + 1,
            },
            start: Some(first + i * SEGMENT_S),
        };
        let path = dir.join(naming::relative_path("bench", &name));
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::hard_link(&sample, &path)
            .with_context(|| format!("cannot link {}", path.display()))?;
    }
    std::fs::remove_file(&sample)?;

    let rss_before = rss_kib();
    let idx = Index::new();
    let t0 = Instant::now();
    idx.build(&dir, "bench");
    let build_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let rss_after = rss_kib();

    let now_us = index::now_us();
    let t1 = Instant::now();
    let day = idx.list(now_us - 86_400_000_000, now_us, now_us);
    let list_day_ms = t1.elapsed().as_secs_f64() * 1000.0;
    let t2 = Instant::now();
    let month = idx.list(now_us - 31 * 86_400_000_000, now_us, now_us);
    let list_month_ms = t2.elapsed().as_secs_f64() * 1000.0;
    let spans = month["spans"].as_array().map(|s| s.len()).unwrap_or(0);
    println!(
        "{}",
        serde_json::json!({
            "files": files,
            "build_ms": (build_ms * 10.0).round() / 10.0,
            "rss_kib_before": rss_before,
            "rss_kib_after": rss_after,
            "list_day_ms": (list_day_ms * 100.0).round() / 100.0,
            "list_month_ms": (list_month_ms * 100.0).round() / 100.0,
            "answer_bytes_day": day.to_string().len(),
            "answer_bytes_month": month.to_string().len(),
            "spans_month": spans,
        })
    );
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
