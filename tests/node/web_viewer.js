// Drives the web viewer in headless Chromium (Debian's chromium, through playwright-core) and
// reports each step on stdout for the Rust test that owns the device:
//   STEP live <first-picture-ms> <pixel-variance>   first context plays
//   STEP page <files> <bytes>                       what the page itself cost to load (its own
//                                                   origin: document and assets, as transferred)
//   STEP second-live <details>                      a second context, which chose WebRTC in
//                                                   the page, plays at the same time (through
//                                                   HLS when the media server has no WHEP)
//   STEP offline <ms>                               after the device stopped
//   STEP resumed                                    after the device came back, without a reload
// node web_viewer.js VIEWER_URL SCREENSHOT_PATH
const fs = require("fs");
const os = require("os");
const path = require("path");
const { chromium } = require("playwright-core");

const [url, shot] = process.argv.slice(2);
const args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--autoplay-policy=no-user-gesture-required"];
const out = (line) => new Promise((r) => process.stdout.write(line + "\n", r));

async function open(mode) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "camstream-chromium-"));
  const ctx = await chromium.launchPersistentContext(dir, { executablePath: "/usr/bin/chromium", headless: true, args });
  const page = ctx.pages()[0] || await ctx.newPage();
  page.on("console", (m) => console.error("[page] " + m.text()));
  await page.goto(url);
  // The playback mode as a person picks it: in the page's selector.
  if (mode) await page.selectOption("#mode", mode);
  return { ctx, page };
}

// Live: the page says so and the video's clock moves.
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

(async () => {
  const a = await open();
  await waitLive(a.page, 45000);
  const firstMs = await a.page.evaluate(() => window.camstreamFirstPictureMs);
  const v = await variance(a.page);
  await a.page.screenshot({ path: shot });
  await out(`STEP live ${firstMs} ${v.toFixed(1)}`);
  const [files, bytes] = await a.page.evaluate(() => {
    const own = [...performance.getEntriesByType("navigation"), ...performance.getEntriesByType("resource")]
      .filter((e) => new URL(e.name).origin === location.origin && !e.name.includes("/socket.io/"));
    return [own.length, own.reduce((n, e) => n + e.transferSize, 0)];
  });
  await out(`STEP page ${files} ${bytes}`);
  const b = await open("webrtc");
  await waitLive(b.page, 45000);
  await out("STEP second-live " + await b.page.textContent("#details"));
  await b.ctx.close();
  // The test stops the device now.
  const t0 = Date.now();
  await a.page.waitForFunction(() => document.getElementById("status").textContent === "Device offline",
    null, { timeout: 60000, polling: 200 });
  await out(`STEP offline ${Date.now() - t0}`);
  // The test starts the device again.
  await waitLive(a.page, 90000);
  await out("STEP resumed");
  await a.ctx.close();
  process.exit(0);
})().catch(async (e) => { await out("FAILED " + e.message); process.exit(1); });
