// Glass-to-glass delay in the web viewer, per playback mode: headless Chromium (Debian's
// chromium, through playwright-core) opens the page with &measure=1 and &mode=<mode> for each
// mode, waits until it is live, lets it play SECONDS seconds and reports what the page measured
// (window.camstreamGlass: each shown frame's display time minus the capture time the device drew
// on it as a QR code):
//   STEP glass <mode> <transport> <samples> <median_ms> <p95_ms> <min_ms> <max_ms> <decode_ms> <misses> <rtc> | <details>
// <rtc>: the page's connected peer connection, if any, as <remote address>:<port>/<protocol>
// (the nominated candidate pair's remote end) and the frames it decoded; "-" without one.
// For WebRTC, run it where Chromium gathers ICE candidates (a network namespace with an address
// and a default route): on loopback alone it gathers none and the page falls back to HLS.
// node web_glass.js VIEWER_URL SECONDS MODE...
const fs = require("fs");
const os = require("os");
const path = require("path");
const { chromium } = require("playwright-core");

const [url, seconds, ...modes] = process.argv.slice(2);
const args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--autoplay-policy=no-user-gesture-required", "--disable-features=WebRtcHideLocalIpsWithMdns"];
const out = (line) => new Promise((r) => process.stdout.write(line + "\n", r));

async function waitLive(page, timeoutMs) {
  const t0 = Date.now();
  let last = -1;
  while (Date.now() - t0 < timeoutMs) {
    const [status, t] = await page.evaluate(() => [document.getElementById("status").textContent,
      document.getElementById("video").currentTime]);
    if (status === "Live" && last >= 0 && t > last) return;
    last = t;
    await page.waitForTimeout(500);
  }
  throw new Error("not live within " + timeoutMs + " ms: " + await page.textContent("#status"));
}

async function measure(mode) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "camstream-chromium-"));
  const ctx = await chromium.launchPersistentContext(dir, { executablePath: "/usr/bin/chromium", headless: true, args });
  try {
    // The page's peer connections, to read their state and statistics from outside the page.
    await ctx.addInitScript(() => {
      const Native = window.RTCPeerConnection;
      if (!Native) return;
      window.camstreamPeerConnections = [];
      window.RTCPeerConnection = class extends Native {
        constructor(...a) { super(...a); window.camstreamPeerConnections.push(this); }
      };
    });
    const page = ctx.pages()[0] || await ctx.newPage();
    page.on("console", (m) => console.error(`[page ${mode}] ` + m.text()));
    await page.goto(`${url}&mode=${mode}&measure=1`);
    await waitLive(page, 60000);
    // The figures restart when the transport changes (WebRTC falling back to HLS): from here on.
    await page.waitForTimeout(1000 * Number(seconds));
    const g = await page.evaluate(() => window.camstreamGlass);
    if (!g) throw new Error(`${mode}: no window.camstreamGlass (glass.js not loaded)`);
    console.error(`${mode} delays (ms): ${g.recent_ms.join(" ")}`);
    const rtc = await page.evaluate(async () => {
      const pc = (window.camstreamPeerConnections || []).find((p) => p.connectionState === "connected");
      if (!pc) return "-";
      const stats = [...(await pc.getStats()).values()];
      const inbound = stats.find((s) => s.type === "inbound-rtp" && s.kind === "video") || {};
      const pair = stats.find((s) => s.type === "candidate-pair" && s.nominated && s.state === "succeeded") || {};
      const remote = stats.find((s) => s.id === pair.remoteCandidateId) || {};
      return `${remote.address}:${remote.port}/${remote.protocol},decoded=${inbound.framesDecoded || 0}`;
    });
    const details = await page.textContent("#details");
    await out(["STEP glass", mode, g.transport, g.samples, g.median_ms, g.p95_ms, g.min_ms, g.max_ms,
      g.decode_ms, g.misses, rtc, "|", details].join(" "));
  } finally {
    await ctx.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

(async () => {
  for (const mode of modes) await measure(mode);
  process.exit(0);
})().catch(async (e) => { await out("FAILED " + e.message); process.exit(1); });
