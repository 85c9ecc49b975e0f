// Headless Debian Chromium through playwright-core, as every web test drives it: one way to
// launch it, open the page, wait for a playing picture and read how busy the picture is.
const fs = require("fs");
const os = require("os");
const path = require("path");
const { chromium } = require("playwright-core");

const ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--autoplay-policy=no-user-gesture-required"];

// A line on stdout for the Rust test, written before the promise resolves.
const out = (line) => new Promise((r) => process.stdout.write(line + "\n", r));

// A fresh browser (its own profile directory) on `url`; the page's console goes to stderr.
// `args`: more Chromium flags; `init`: a script run in the page before its own; `before(page)`:
// called before the page loads (to watch its requests); `mode`: picked in the page's selector.
async function open(url, { args = [], init, before, mode } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "camstream-chromium-"));
  const ctx = await chromium.launchPersistentContext(dir, {
    executablePath: "/usr/bin/chromium", headless: true, args: [...ARGS, ...args],
  });
  if (init) await ctx.addInitScript(init);
  const page = ctx.pages()[0] || await ctx.newPage();
  page.on("console", (m) => console.error("[page] " + m.text()));
  if (before) await before(page);
  await page.goto(url);
  if (mode) await page.selectOption("#mode", mode);
  // Closes the browser and removes its profile.
  const close = async () => {
    await ctx.close();
    fs.rmSync(dir, { recursive: true, force: true });
  };
  return { ctx, page, close };
}

// The page's status starts with `prefix` and the video's clock moves; returns the status.
async function waitPlaying(page, prefix, timeoutMs) {
  const t0 = Date.now();
  let last = -1;
  while (Date.now() - t0 < timeoutMs) {
    const [status, t] = await page.evaluate(() => [document.getElementById("status").textContent,
      document.getElementById("video").currentTime]);
    if (status.startsWith(prefix) && last >= 0 && t > last) return status;
    last = status.startsWith(prefix) ? t : -1;
    await page.waitForTimeout(500);
  }
  throw new Error(`not "${prefix}" within ${timeoutMs} ms: ${await page.textContent("#status")} | ${await page.textContent("#details")}`);
}

// The variance of the picture's luma (a blank or frozen-black picture has none).
async function variance(page) {
  return page.evaluate(() => {
    const v = document.getElementById("video");
    const c = document.createElement("canvas");
    c.width = 160; c.height = 90;
    const g = c.getContext("2d");
    g.drawImage(v, 0, 0, 160, 90);
    const d = g.getImageData(0, 0, 160, 90).data;
    let sum = 0, sq = 0, n = 0;
    for (let i = 0; i < d.length; i += 4) {
      const y = 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2];
      sum += y; sq += y * y; n++;
    }
    const mean = sum / n;
    return sq / n - mean * mean;
  });
}

// For WebRTC: plain host candidates rather than mDNS names (a media server cannot resolve
// *.local), and the page's peer connections kept in window.camstreamPeerConnections so a test
// can read their state and statistics from outside the page's code.
const WEBRTC_ARGS = ["--disable-features=WebRtcHideLocalIpsWithMdns"];
function keepPeerConnections() {
  const Native = window.RTCPeerConnection;
  if (!Native) return;
  window.camstreamPeerConnections = [];
  window.RTCPeerConnection = class extends Native {
    constructor(...a) { super(...a); window.camstreamPeerConnections.push(this); }
  };
}

module.exports = { ARGS, WEBRTC_ARGS, keepPeerConnections, out, open, waitPlaying, variance };
