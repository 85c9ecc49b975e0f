// camstream web viewer. Follows the seed's client steps: find <device> → on create/join emit
// auth + heartbeatping → heartbeat 10 s after each heartbeatpong → on bridge <path> play the HLS
// URL. Settings come from the page URL (no credentials live in the page):
//   ?device=tj01            device to watch (else typed in)
//   &signal=https://host    Socket.IO server (default: this page's origin)
//   &media=https://host     media server (default: this page's origin)
//   &hls=/channel/{path}/index.m3u8   HLS URL template on the media server
//   &whep=/channel/{path}/whep        WebRTC (WHEP) URL template; MediaMTX serves it on its
//                                     WebRTC port: https://host:8889/channel/{path}/whep
//   &mode=llhls             hls | llhls | webrtc (also chosen in the page, and remembered)
//   &heartbeat=10000        heartbeat interval, ms
//   &token=...              viewing token (a signed, short-lived one: `camstream token`), sent
//                           with auth and heartbeatping; none: the seed's argument-less events
//   &measure=1              test mode: glass-to-glass delay from the timestamp QR code the
//                           device draws with camera.test_overlay = "timestamp-qr" (glass.js)
// Recordings: the device answers `recordings` with the spans it has recorded (shown on the
// timeline); a click asks to `play` from that time and the device pushes the recording to the
// media server like live (`playback`, then `bridge <path>`); `stop` ends it, and live resumes.
// `status` fills the device status panel.
import { io } from "socket.io-client";
import Hls from "hls.js/dist/hls.light.mjs";
import { Timeline, clock } from "./timeline.js";

const params = new URLSearchParams(location.search);
const HEARTBEAT_MS = Number(params.get("heartbeat")) || 10000;
const token = params.get("token");
const emitWithToken = (ev) => (token ? socket.emit(ev, token) : socket.emit(ev));
// No heartbeatpong for this long: the device is considered offline (well within the
// device's viewing lease, 30 s by default, for the default 10 s heartbeat).
const OFFLINE_MS = Number(params.get("offline")) || HEARTBEAT_MS + 5000;
// A page hidden for this long stops asking for video (and the device stops pushing it).
const HIDDEN_STOP_MS = 60000;
const signalUrl = params.get("signal") || location.origin;
const mediaBase = params.get("media") || location.origin;
const hlsTemplate = params.get("hls") || "/channel/{path}/index.m3u8";
const whepTemplate = params.get("whep") || "/channel/{path}/whep";
const MODES = ["hls", "llhls", "webrtc"];
const storedMode = (() => { try { return localStorage.getItem("camstream-mode"); } catch { return null; } })();
let mode = [params.get("mode"), storedMode].find((m) => MODES.includes(m)) || "llhls";

const video = document.getElementById("video");
const statusEl = document.getElementById("status");
const details = document.getElementById("details");
const form = document.getElementById("pick");
const deviceInput = document.getElementById("device");
const modeSelect = document.getElementById("mode");

let socket = null;
let device = null;
let hls = null;
let pc = null; // WebRTC peer connection in webrtc mode
let whepSession = null; // its URL on the media server, deleted when done
let fallbackNote = "";
let heartbeatTimer = null;
let offlineTimer = null;
let currentPath = null;
let requestedAt = 0;
let firstPictureMs = null;
let hiddenSince = null;
let paused = false;
let livePath = null; // the live stream's path, once the device announced it
// The recording being played: { path, from (asked, ms), start (first frame, ms), t0 (the
// video's clock at its first picture) }; null while live.
let recording = null;
let asked = null; // time (ms) of a `play` asked for and not answered yet
let heldBridge = null; // a `bridge` that came while `asked`
let statusTimer = null;
let recordingsTimer = null;

const recordingsEl = document.getElementById("recordings");
const goLiveButton = document.getElementById("golive");
const recInfo = document.getElementById("recinfo");
const statusPanel = document.getElementById("device-status");
const statusList = document.getElementById("status-list");

// A request with an object argument; the token, when there is one, travels in it.
const emitRequest = (ev, arg) => socket && socket.emit(ev, token ? { ...arg, token } : arg);

const say = (text, detail) => {
  statusEl.textContent = text;
  statusEl.dataset.state = text;
  if (detail !== undefined) details.textContent = detail;
};

function heartbeat() {
  clearTimeout(heartbeatTimer);
  if (!paused && socket && socket.connected) emitWithToken("heartbeatping");
}

function watchOffline() {
  clearTimeout(offlineTimer);
  offlineTimer = setTimeout(() => {
    say("Device offline", "No answer from the device; waiting for it to come back.");
    heartbeat(); // keep asking: a device coming back answers and restarts its stream
    watchOffline();
  }, OFFLINE_MS);
}

function request() {
  requestedAt = performance.now();
  firstPictureMs = null;
  emitWithToken("auth");
  emitWithToken("heartbeatping");
  watchOffline();
}

const mediaUrl = (template, path) =>
  new URL(template.replace("{path}", encodeURIComponent(path)), mediaBase).toString();

function stopPlayback() {
  if (hls) { hls.destroy(); hls = null; }
  if (pc) { pc.close(); pc = null; }
  if (whepSession) {
    fetch(whepSession, { method: "DELETE" }).catch(() => {});
    whepSession = null;
  }
  video.srcObject = null;
  video.removeAttribute("src");
}

function play(path) {
  if (path === currentPath && (hls || pc || video.src)) return;
  currentPath = path;
  say("Starting video…");
  stopPlayback();
  fallbackNote = "";
  if (mode === "webrtc") {
    playWebrtc(path).catch((e) => {
      // The media server offers no WebRTC (or it cannot get through): HLS still works.
      console.warn(`webrtc: ${e.message}`);
      if (path !== currentPath) return;
      stopPlayback();
      fallbackNote = " · WebRTC unavailable, playing HLS";
      playHls(path, true);
    });
  } else {
    playHls(path, mode === "llhls");
  }
}

// HLS through hls.js; `lowLatency` plays LL-HLS parts where the server offers them (MediaMTX
// does) and holds a shorter buffer; plain HLS keeps a few segments for smoother playback.
function playHls(path, lowLatency) {
  const url = mediaUrl(hlsTemplate, path);
  if (Hls.isSupported()) {
    hls = new Hls({
      lowLatencyMode: lowLatency,
      liveSyncDurationCount: lowLatency ? 1 : 3,
      liveMaxLatencyDurationCount: lowLatency ? 4 : 8,
      maxLiveSyncPlaybackRate: 1.5,
      backBufferLength: 10,
      manifestLoadingMaxRetry: 20,
      manifestLoadingRetryDelay: 500,
      levelLoadingMaxRetry: 20,
    });
    hls.on(Hls.Events.ERROR, (_, data) => {
      console.warn(`hls: ${data.type} ${data.details}${data.fatal ? " (fatal)" : ""}`);
      if (!data.fatal) return;
      // The media server publishes the playlist a segment or two after the push starts, and the
      // stream restarts with the device: retry the same source rather than give up.
      if (data.type === Hls.ErrorTypes.NETWORK_ERROR) {
        const h = hls;
        setTimeout(() => {
          if (h !== hls || path !== currentPath) return;
          if (data.details.startsWith("manifest")) h.loadSource(url);
          else h.startLoad();
        }, 1000);
      } else if (data.type === Hls.ErrorTypes.MEDIA_ERROR) {
        hls.recoverMediaError();
      }
    });
    hls.loadSource(url);
    hls.attachMedia(video);
  } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
    video.src = url; // Safari's native HLS where hls.js is unsupported
  } else {
    say("This browser cannot play the stream");
    return;
  }
  video.play().catch(() => {});
}

// WebRTC through WHEP (RFC 9725): one recvonly H.264 video transceiver. The offer is POSTed
// before this side gathers any candidate, so a media server without WHEP costs nothing (no
// ICE gathering, no mDNS announcements); the candidates then follow by trickle ICE (PATCH).
async function playWebrtc(path) {
  if (!window.RTCPeerConnection) throw new Error("no WebRTC in this browser");
  const conn = new RTCPeerConnection({ iceServers: [] });
  pc = conn;
  const transceiver = conn.addTransceiver("video", { direction: "recvonly" });
  const h264 = (RTCRtpReceiver.getCapabilities?.("video")?.codecs || [])
    .filter((c) => c.mimeType === "video/H264");
  if (h264.length && transceiver.setCodecPreferences) transceiver.setCodecPreferences(h264);
  conn.ontrack = (e) => {
    video.srcObject = e.streams[0] || new MediaStream([e.track]);
    video.play().catch(() => {});
  };
  const offer = await conn.createOffer();
  const url = mediaUrl(whepTemplate, path);
  const res = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/sdp" },
    body: offer.sdp,
  });
  if (res.status !== 201) throw new Error(`WHEP answered ${res.status}`);
  if (conn !== pc) return;
  const location = res.headers.get("Location");
  if (location) whepSession = new URL(location, url).toString();
  const session = whepSession;
  conn.onicecandidate = (e) => {
    // mDNS names (*.local) mean nothing to a server elsewhere: not sent.
    if (!e.candidate || !e.candidate.candidate || !session || /\.local /.test(e.candidate.candidate)) return;
    fetch(session, {
      method: "PATCH",
      headers: { "Content-Type": "application/trickle-ice-sdpfrag" },
      body: sdpFragment(offer.sdp, e.candidate),
    }).catch(() => {});
  };
  await conn.setLocalDescription(offer);
  await conn.setRemoteDescription({ type: "answer", sdp: await res.text() });
  await new Promise((resolve, reject) => {
    const check = () => {
      if (conn.connectionState === "connected") resolve();
      if (conn.connectionState === "failed") reject(new Error("WebRTC connection failed"));
    };
    conn.addEventListener("connectionstatechange", check);
    setTimeout(() => reject(new Error("WebRTC did not connect within 10 s")), 10000);
    check();
  });
  // A connection lost later: start over on the same path (the device is still pushing).
  conn.addEventListener("connectionstatechange", () => {
    if (conn === pc && conn.connectionState === "failed") {
      const p = currentPath;
      currentPath = null;
      play(p);
    }
  });
}

// One candidate as an SDP fragment (RFC 8840) for the offer's ICE credentials and m-line.
function sdpFragment(sdp, candidate) {
  const line = (key) => (sdp.match(new RegExp(`^a=${key}:(.*)$`, "m")) || [])[1] || "";
  const media = (sdp.match(/^m=.*$/m) || ["m=video 9 UDP/TLS/RTP/SAVPF 96"])[0];
  return [`a=ice-ufrag:${line("ice-ufrag").trim()}`, `a=ice-pwd:${line("ice-pwd").trim()}`,
    media, `a=mid:${candidate.sdpMid ?? line("mid").trim()}`, `a=${candidate.candidate}`, ""].join("\r\n");
}

// Current live delay: hls.js's estimate, or for WebRTC the receiver's jitter buffer.
async function liveDelay() {
  if (hls && hls.latency) return hls.latency.toFixed(1) + " s";
  if (pc) {
    const stats = await pc.getStats();
    for (const r of stats.values()) {
      if (r.type === "inbound-rtp" && r.kind === "video" && r.jitterBufferEmittedCount) {
        return Math.round((1000 * r.jitterBufferDelay) / r.jitterBufferEmittedCount) + " ms";
      }
    }
  }
  return "?";
}

// Test mode (&measure=1): glass.js, a bundle of its own fetched only then, reads each shown
// frame's capture time; its figures go on window.camstreamGlass and its line in the details.
const playing = () => ({
  mode,
  transport: pc && pc.connectionState === "connected" ? "webrtc"
    : hls ? (hls.config.lowLatencyMode ? "llhls" : "hls") : video.src ? "native-hls" : "none",
});
let glassLine = () => "";
if (params.get("measure") === "1") {
  window.camstreamGlassInit = (start) => { glassLine = start(video, playing); };
  const s = document.createElement("script");
  s.src = new URL("glass.js", document.currentScript ? document.currentScript.src : location.href).toString();
  document.head.append(s);
}

video.addEventListener("playing", () => {
  if (firstPictureMs === null && requestedAt) {
    firstPictureMs = Math.round(performance.now() - requestedAt);
    window.camstreamFirstPictureMs = firstPictureMs;
  }
});

setInterval(async () => {
  if (!currentPath || video.paused || video.readyState < 3) return;
  if (asked !== null) return; // a recording was asked for: its answer says what comes next
  if (recording) {
    if (recording.path !== currentPath) return;
    if (recording.ended && video.currentTime === recording.lastT) {
      say("Recording ended", recording.ended);
      return;
    }
    recording.lastT = video.currentTime;
    if (recording.t0 === null) recording.t0 = video.currentTime;
    // The pushed stream starts at the recording's first frame: the picture's wall-clock time
    // is that plus how far the video has played since.
    const shown = recording.start + 1000 * (video.currentTime - recording.t0);
    timeline.setCursor(shown);
    say(`Recording from ${clock(recording.from)}`, `Picture from ${clock(shown)} · ${new Date(shown).toISOString().slice(0, 19)}Z`);
    return;
  }
  timeline.setCursor(null);
  const delay = await liveDelay();
  say("Live", `First picture after ${firstPictureMs ?? "?"} ms · live delay ${delay}${fallbackNote}${glassLine()}`);
}, 500);

// The recordings of the last 24 h, again every minute while the page shows them.
function askRecordings() {
  clearTimeout(recordingsTimer);
  if (!socket || !socket.connected) return;
  const now = Date.now();
  emitRequest("recordings", { from: Math.floor(now / 1000) - 86400, to: Math.floor(now / 1000), id: "timeline" });
  recordingsTimer = setTimeout(askRecordings, 60000);
}

function playFrom(ms) {
  asked = ms;
  if (recording) emitRequest("stop", { path: recording.path });
  recording = null;
  timeline.setCursor(ms);
  say("Starting recording…", `From ${clock(ms)}`);
  emitRequest("play", { from: ms / 1000, id: "timeline" });
}

function goLive() {
  if (recording) emitRequest("stop", { path: recording.path });
  recording = null;
  asked = null;
  goLiveButton.hidden = true;
  timeline.setCursor(null);
  currentPath = null;
  requestedAt = performance.now();
  firstPictureMs = null;
  // The device ended this viewer's live lease when the recording started (the uplink may be
  // gone with it): ask again; `bridge` says where live video is now.
  livePath = null;
  request();
}

function askStatus() {
  clearTimeout(statusTimer);
  if (!socket || !socket.connected) return;
  emitRequest("status", { id: "panel" });
  statusTimer = setTimeout(askStatus, 30000);
}

const bytes = (n) => (n >= 1e9 ? (n / 1e9).toFixed(1) + " GB" : (n / 1e6).toFixed(0) + " MB");
const duration = (s) => (s >= 86400 ? `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`
  : s >= 3600 ? `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min` : `${Math.floor(s / 60)} min`);

// The device's status, the parts a person looks at.
function showStatus(st) {
  const rows = [];
  const add = (k, v) => { if (v !== undefined && v !== null && v !== "") rows.push([k, String(v)]); };
  add("Version", st.version);
  if (typeof st.uptime_s === "number") add("Up", duration(st.uptime_s));
  const cam = st.camera || {};
  if (cam.width) add("Camera", `${cam.width}×${cam.height}${cam.fps ? " @ " + (+cam.fps).toFixed(1) + " fps" : ""}${cam.running === false ? " (not running)" : ""}`);
  const rec = st.recording || {};
  add("Recording", rec.enabled ? (rec.attached ? "on" : "stopped") : "off");
  if (rec.oldest_start) add("Oldest recording", clock(Date.parse(rec.oldest_start), false));
  if (st.disk) add("Card", `${bytes(st.disk.free_bytes)} free of ${bytes(st.disk.size_bytes)}`);
  const net = st.network;
  if (net) {
    let link = `${net.type || net.kind || "link"} (${net.interface})`;
    if (net.wifi && net.wifi.signal_dbm != null) link += ` ${net.wifi.signal_dbm} dBm`;
    if (net.modem) link += ` ${net.modem.operator || ""} ${net.modem.signal_percent != null ? net.modem.signal_percent + " %" : ""}`;
    add("Network", link.trim());
  }
  if (typeof st.temperature_c === "number") add("Temperature", `${st.temperature_c.toFixed(0)} °C`);
  add("Clock", st.clock_synced === false ? "not synchronised" : st.clock_synced ? "synchronised" : undefined);
  const last = (st.last_errors || []).slice(-1)[0];
  if (last) add("Last problem", `${last.message}`);
  statusList.replaceChildren(...rows.flatMap(([k, v]) => {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = k;
    dd.textContent = v;
    return [dt, dd];
  }));
  statusPanel.hidden = false;
}

const timeline = new Timeline(recordingsEl, playFrom);
goLiveButton.addEventListener("click", goLive);
setInterval(() => { if (!recordingsEl.hidden) timeline.render(); }, 10000);

modeSelect.value = mode;
modeSelect.addEventListener("change", () => {
  mode = modeSelect.value;
  try { localStorage.setItem("camstream-mode", mode); } catch { /* private mode */ }
  if (currentPath) {
    const p = currentPath;
    currentPath = null;
    requestedAt = performance.now();
    firstPictureMs = null;
    play(p);
  }
});

document.addEventListener("visibilitychange", () => {
  if (document.hidden) {
    hiddenSince = Date.now();
    setTimeout(() => {
      if (hiddenSince && Date.now() - hiddenSince >= HIDDEN_STOP_MS) {
        paused = true;
        clearTimeout(heartbeatTimer);
      }
    }, HIDDEN_STOP_MS);
  } else {
    hiddenSince = null;
    // A recording's lease ran out while hidden: back to live.
    if (paused) { paused = false; if (recording) goLive(); else request(); }
  }
});
window.addEventListener("pagehide", () => { paused = true; stopPlayback(); if (socket) socket.close(); });

function watch(id) {
  device = id;
  deviceInput.value = id;
  if (socket) socket.close();
  say("Connecting…", "");
  socket = io(signalUrl, { transports: ["websocket", "polling"] });
  socket.on("connect", () => {
    say("Waiting for the device…");
    socket.emit("find", device); // a reconnected socket has no rooms: find again each time
  });
  socket.on("disconnect", () => say("Reconnecting…"));
  socket.on("connect_error", () => say("Reconnecting…", "The signalling server does not answer."));
  socket.on("create", () => { say("Device offline", "Waiting for the device to come online."); request(); });
  socket.on("join", () => { say("Starting video…"); request(); askRecordings(); askStatus(); });
  socket.on("heartbeatpong", () => {
    clearTimeout(heartbeatTimer);
    heartbeatTimer = setTimeout(heartbeat, HEARTBEAT_MS);
    watchOffline();
    if (!currentPath && !recording) say("Starting video…");
    if (recordingsEl.hidden) askRecordings();
    if (statusPanel.hidden) askStatus();
  });
  socket.on("bridge", (path) => {
    if (typeof path !== "string" || !/^[A-Za-z0-9_-]{1,64}$/.test(path)) return;
    watchOffline();
    if (recording && path === recording.path) {
      if (path !== currentPath) play(path);
      return;
    }
    // While a recording is asked for, a `bridge` may be its path arriving before `playback`
    // (the relay does not keep the two in order): held until `playback` says which it is.
    if (asked !== null) { heldBridge = path; return; }
    livePath = path;
    if (!recording && path !== currentPath) play(path);
  });
  socket.on("recordings", (answer) => {
    if (!answer || typeof answer !== "object" || !Array.isArray(answer.spans)) return;
    recordingsEl.hidden = false;
    timeline.setSpans(answer);
  });
  socket.on("playback", (p) => {
    if (!p || typeof p.path !== "string" || asked === null) return;
    recording = { path: p.path, from: asked, start: Date.parse(p.start) || asked, t0: null };
    asked = null;
    if (heldBridge && heldBridge !== p.path) livePath = heldBridge;
    heldBridge = null;
    goLiveButton.hidden = false;
    say("Starting recording…", `From ${clock(recording.start)}`);
    play(p.path); // the device sent `playback` once the stream was there
  });
  socket.on("playback-ended", (p) => {
    if (!recording || !p || p.path !== recording.path) return;
    // The device has sent the last frame; the page still plays what the player holds.
    recording.ended = p.next ? `More from ${clock(Date.parse(p.next))}: click the timeline` : "Back to live or pick another time";
  });
  socket.on("error", (e) => {
    if (!e || typeof e !== "object" || typeof e.reason !== "string") return;
    if (e.request === "play" || e.request === "seek") {
      asked = null;
      if (heldBridge) livePath = heldBridge;
      heldBridge = null;
      say(recording ? "Recording" : currentPath ? "Live" : "Starting video…", `Cannot play that time: ${e.reason}`);
    } else {
      recInfo.textContent = `${e.request}: ${e.reason}`;
    }
  });
  socket.on("status", (st) => { if (st && typeof st === "object") showStatus(st); });
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  const id = deviceInput.value.trim();
  if (!id) return;
  history.replaceState(null, "", "?" + new URLSearchParams({ ...Object.fromEntries(params), device: id }));
  watch(id);
});

if (params.get("device")) watch(params.get("device"));
