// Drives the web viewer's recordings timeline in headless Chromium (Debian's chromium, through
// playwright-core) and reports each step on stdout for the Rust test that owns the device:
//   STEP live                                   the page plays live
//   STEP spans <n> <first-start> <first-end>    the timeline shows recorded spans
//   STEP status <json>                          the status panel's rows
//   STEP recording <status> | <details>         a click on the timeline plays a recording
//   STEP back-live                              "Back to live" plays live again
//   STEP pinch <before> -> <after>              a two-finger pinch zooms the timeline
// node web_recordings.js VIEWER_URL SCREENSHOT_PATH
const { out, open, waitPlaying } = require("./browser");

const [url, shot] = process.argv.slice(2);

(async () => {
  const { ctx, page } = await open(url);
  await waitPlaying(page, "Live", 45000);
  await out("STEP live");

  // Zoomed to the last 10 minutes, where a few seconds of recording are wide enough to hit.
  await page.click("#recordings button[data-zoom='600']");
  await page.waitForFunction(() => document.querySelectorAll("#recordings .span").length > 0, null, { timeout: 30000 });
  const spans = await page.$$eval("#recordings .span", (els) => els.map((e) => [e.dataset.start, e.dataset.end]));
  await out(`STEP spans ${spans.length} ${spans[0][0]} ${spans[0][1] || "open"}`);

  await page.waitForFunction(() => !document.getElementById("device-status").hidden, null, { timeout: 30000 });
  const rows = await page.$$eval("#status-list dt", (dts) => dts.map((dt) => [dt.textContent, dt.nextElementSibling.textContent]));
  await out(`STEP status ${JSON.stringify(Object.fromEntries(rows))}`);

  // Click near the start of the first span (scrolled into view first: the timeline is
  // below the video).
  await page.locator("#recordings .track").scrollIntoViewIfNeeded();
  const box = await page.locator("#recordings .span").first().boundingBox();
  await page.mouse.click(box.x + Math.max(2, box.width / 10), box.y + box.height / 2);
  const status = await waitPlaying(page, "Recording from", 45000);
  const details = await page.textContent("#details");
  await page.screenshot({ path: shot });
  await out(`STEP recording ${status} | ${details}`);

  await page.click("#golive");
  await waitPlaying(page, "Live", 45000);
  await out("STEP back-live");

  // A two-finger pinch (real touch input through the DevTools protocol) zooms in around the
  // middle of the fingers.
  const cdp = await ctx.newCDPSession(page);
  await cdp.send("Emulation.setTouchEmulationEnabled", { enabled: true, maxTouchPoints: 5 });
  await page.locator("#recordings .track").scrollIntoViewIfNeeded();
  const tb = await page.locator("#recordings .track").boundingBox();
  const y = tb.y + tb.height / 2;
  const at = (f1, f2) => [{ x: tb.x + tb.width * f1, y, id: 1 }, { x: tb.x + tb.width * f2, y, id: 2 }];
  const before = await page.textContent("#recordings .window");
  await cdp.send("Input.dispatchTouchEvent", { type: "touchStart", touchPoints: at(0.4, 0.6) });
  for (const [a, b] of [[0.38, 0.62], [0.35, 0.65], [0.3, 0.7]]) {
    await cdp.send("Input.dispatchTouchEvent", { type: "touchMove", touchPoints: at(a, b) });
  }
  await cdp.send("Input.dispatchTouchEvent", { type: "touchEnd", touchPoints: [] });
  const after = await page.textContent("#recordings .window");
  await out(`STEP pinch ${before} -> ${after}`);

  await ctx.close();
})().catch(async (e) => {
  await out("FAILED " + e.message.split("\n")[0]);
  process.exit(1);
});
