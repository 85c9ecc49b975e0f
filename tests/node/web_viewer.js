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
const { out, open: openPage, waitPlaying, variance } = require("./browser");

const [url, shot] = process.argv.slice(2);
const open = (mode) => openPage(url, { mode });
const waitLive = (page, ms) => waitPlaying(page, "Live", ms);

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
