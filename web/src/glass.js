// Test mode of the viewer (page URL `&measure=1`): the glass-to-glass delay of the frames the
// page shows. A device with `camera.test_overlay = "timestamp-qr"` draws each frame's capture
// wall-clock time (µs since the epoch, as text) as a QR code near the top-left corner
// (qroverlay x=5 y=5: 5 % in from the left and top, modules of height/60 px clamped to 2..16,
// so the code with its quiet zone is at most about half the frame's height).
//
// For each displayed frame (requestVideoFrameCallback), at most MAX_PER_SECOND times a second,
// the top-left region is drawn to a small canvas (modules scaled to about 4 px, so a decode costs
// the same whatever the resolution), jsQR reads it, and
//   delay = wall-clock time the frame is shown (timeOrigin + expectedDisplayTime) − capture time.
// Both clocks must agree: the same machine, or both synchronised.
//
// Built as a bundle of its own (dist/glass.js), fetched by app.js only in this mode; results on
// `window.camstreamGlass`: { mode, transport, samples, median_ms, p95_ms, min_ms, max_ms,
// last_ms, recent_ms, misses, decode_ms }.
import jsQR from "jsqr";

const MAX_PER_SECOND = 10;
const KEEP = 600; // the recent delays the figures are computed over
const MODULE_PX = 4;

function start(video, playing) {
  const canvas = document.createElement("canvas");
  const g = canvas.getContext("2d", { willReadFrequently: true });
  let state = null;
  let lastDecode = 0;
  let misses = 0; // consecutive frames without a readable code
  let decodeTotal = 0;
  let decodes = 0;

  const reset = (p) => {
    state = { mode: p.mode, transport: p.transport, samples: 0, median_ms: null, p95_ms: null,
      min_ms: null, max_ms: null, last_ms: null, recent_ms: [], misses: 0, decode_ms: null };
    window.camstreamGlass = state;
  };
  reset(playing());

  // The region the code is in, or after a run of misses the whole frame (a scaled stream, an
  // overlay elsewhere), scaled so a module is about MODULE_PX pixels.
  const read = () => {
    const w = video.videoWidth;
    const h = video.videoHeight;
    if (!w || !h) return null;
    const whole = misses >= 10 && misses % 10 === 0;
    const rw = whole ? w : Math.min(w, Math.ceil(0.06 * w + 0.56 * h));
    const rh = whole ? h : Math.min(h, Math.ceil(0.6 * h));
    const scale = Math.min(1, MODULE_PX / Math.min(16, Math.max(2, h / 60)));
    const cw = Math.max(1, Math.round(rw * scale));
    const ch = Math.max(1, Math.round(rh * scale));
    if (canvas.width !== cw || canvas.height !== ch) {
      canvas.width = cw;
      canvas.height = ch;
    }
    g.drawImage(video, 0, 0, rw, rh, 0, 0, cw, ch);
    const img = g.getImageData(0, 0, cw, ch);
    const code = jsQR(img.data, cw, ch, { inversionAttempts: "dontInvert" });
    return code && /^\d{13,17}$/.test(code.data) ? Number(code.data) / 1000 : null;
  };

  const onFrame = (now, meta) => {
    video.requestVideoFrameCallback(onFrame);
    const p = playing();
    if (p.mode !== state.mode || p.transport !== state.transport) reset(p);
    if (now - lastDecode < 1000 / MAX_PER_SECOND) return;
    lastDecode = now;
    const shown = performance.timeOrigin + (meta.expectedDisplayTime || meta.presentationTime || now);
    const t0 = performance.now();
    let captured = null;
    try {
      captured = read();
    } catch (e) {
      console.warn(`glass: ${e.message}`);
    }
    decodeTotal += performance.now() - t0;
    decodes += 1;
    state.decode_ms = +(decodeTotal / decodes).toFixed(1);
    if (captured === null) {
      misses += 1;
      state.misses += 1;
      return;
    }
    misses = 0;
    const delay = Math.round(shown - captured);
    state.samples += 1;
    state.last_ms = delay;
    state.recent_ms.push(delay);
    if (state.recent_ms.length > KEEP) state.recent_ms.shift();
    const sorted = [...state.recent_ms].sort((a, b) => a - b);
    const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
    state.median_ms = at(0.5);
    state.p95_ms = at(0.95);
    state.min_ms = sorted[0];
    state.max_ms = sorted[sorted.length - 1];
  };

  if (!video.requestVideoFrameCallback) {
    return () => " · glass-to-glass: not measurable in this browser (no requestVideoFrameCallback)";
  }
  video.requestVideoFrameCallback(onFrame);
  return () => {
    if (state.samples) {
      return ` · glass-to-glass ${state.median_ms} ms median, ${state.p95_ms} ms p95 (${state.samples} frames, ${state.transport})`;
    }
    return state.misses ? " · glass-to-glass: no timestamp QR code in the picture" : "";
  };
}

// app.js set this up before fetching this bundle.
if (window.camstreamGlassInit) window.camstreamGlassInit(start);
