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
const { WEBRTC_ARGS, keepPeerConnections, out, open, waitPlaying } = require("./browser");

const [url, seconds, ...modes] = process.argv.slice(2);

async function measure(mode) {
  const { page, close } = await open(`${url}&mode=${mode}&measure=1`, { args: WEBRTC_ARGS, init: keepPeerConnections });
  try {
    await waitPlaying(page, "Live", 60000);
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
    await close();
  }
}

(async () => {
  for (const mode of modes) await measure(mode);
  process.exit(0);
})().catch(async (e) => { await out("FAILED " + e.message); process.exit(1); });
