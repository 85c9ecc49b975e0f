// camstream web viewer. Follows the seed's client steps: find <device> → on create/join emit
// auth + heartbeatping → heartbeat 10 s after each heartbeatpong → on bridge <path> play the HLS
// URL. Settings come from the page URL (no credentials live in the page):
//   ?device=tj01            device to watch (else typed in)
//   &signal=https://host    Socket.IO server (default: this page's origin)
//   &media=https://host     media server (default: this page's origin)
//   &hls=/channel/{path}/index.m3u8   HLS URL template on the media server
//   &heartbeat=10000        heartbeat interval, ms
import { io } from "socket.io-client";
import Hls from "hls.js/dist/hls.light.mjs";

const params = new URLSearchParams(location.search);
const HEARTBEAT_MS = Number(params.get("heartbeat")) || 10000;
// No heartbeatpong for this long: the device is considered offline (well within the
// device's viewing lease, 30 s by default, for the default 10 s heartbeat).
const OFFLINE_MS = Number(params.get("offline")) || HEARTBEAT_MS + 5000;
// A page hidden for this long stops asking for video (and the device stops pushing it).
const HIDDEN_STOP_MS = 60000;
const signalUrl = params.get("signal") || location.origin;
const mediaBase = params.get("media") || location.origin;
const hlsTemplate = params.get("hls") || "/channel/{path}/index.m3u8";

const video = document.getElementById("video");
const statusEl = document.getElementById("status");
const details = document.getElementById("details");
const form = document.getElementById("pick");
const deviceInput = document.getElementById("device");

let socket = null;
let device = null;
let hls = null;
let heartbeatTimer = null;
let offlineTimer = null;
let currentPath = null;
let requestedAt = 0;
let firstPictureMs = null;
let hiddenSince = null;
let paused = false;

const say = (text, detail) => {
  statusEl.textContent = text;
  statusEl.dataset.state = text;
  if (detail !== undefined) details.textContent = detail;
};

function heartbeat() {
  clearTimeout(heartbeatTimer);
  if (!paused && socket && socket.connected) socket.emit("heartbeatping");
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
  socket.emit("auth");
  socket.emit("heartbeatping");
  watchOffline();
}

function play(path) {
  const url = new URL(hlsTemplate.replace("{path}", encodeURIComponent(path)), mediaBase).toString();
  if (path === currentPath && hls) return;
  currentPath = path;
  say("Starting video…");
  if (hls) { hls.destroy(); hls = null; }
  if (Hls.isSupported()) {
    hls = new Hls({
      lowLatencyMode: true,
      liveSyncDurationCount: 1,
      liveMaxLatencyDurationCount: 4,
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

video.addEventListener("playing", () => {
  if (firstPictureMs === null && requestedAt) {
    firstPictureMs = Math.round(performance.now() - requestedAt);
    window.camstreamFirstPictureMs = firstPictureMs;
  }
});

setInterval(() => {
  if (!currentPath || video.paused || video.readyState < 3) return;
  const delay = hls && hls.latency ? hls.latency.toFixed(1) + " s" : "?";
  say("Live", `First picture after ${firstPictureMs ?? "?"} ms · live delay ${delay}`);
}, 500);

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
    if (paused) { paused = false; request(); }
  }
});
window.addEventListener("pagehide", () => { paused = true; if (socket) socket.close(); });

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
  socket.on("join", () => { say("Starting video…"); request(); });
  socket.on("heartbeatpong", () => {
    clearTimeout(heartbeatTimer);
    heartbeatTimer = setTimeout(heartbeat, HEARTBEAT_MS);
    watchOffline();
    if (!currentPath) say("Starting video…");
  });
  socket.on("bridge", (path) => {
    if (typeof path !== "string" || !/^[A-Za-z0-9_-]{1,64}$/.test(path)) return;
    watchOffline();
    if (path !== currentPath) play(path);
  });
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  const id = deviceInput.value.trim();
  if (!id) return;
  history.replaceState(null, "", "?" + new URLSearchParams({ ...Object.fromEntries(params), device: id }));
  watch(id);
});

if (params.get("device")) watch(params.get("device"));
