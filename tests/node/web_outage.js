// The web viewer in headless Chromium while the device's link goes away and comes back; for
// the Rust test that owns the link, on stdout:
//   STEP live                 the page plays (status "Live", the video's clock moves)
//   STEP stalled <ms>         the video's clock stopped (after the test cut the link)
//   STEP resumed <ms> <status> the clock moves again, in the same page (no reload)
// node web_outage.js VIEWER_URL
const { out, open } = require("./browser");

const [url] = process.argv.slice(2);
const clock = (page) => page.evaluate(() => [document.getElementById("status").textContent,
  document.getElementById("video").currentTime, window.__samePage === true]);

(async () => {
  const { ctx, page } = await open(url);
  // A mark a reload would wipe.
  await page.evaluate(() => { window.__samePage = true; });
  let last = -1;
  const t0 = Date.now();
  for (;;) {
    const [status, t] = await clock(page);
    if (status === "Live" && last >= 0 && t > last) break;
    last = t;
    if (Date.now() - t0 > 60000) throw new Error(`not live: ${status}`);
    await page.waitForTimeout(500);
  }
  await out("STEP live");
  // Stalled: the clock has not moved for 2 s.
  let since = Date.now();
  last = -1;
  for (;;) {
    const [, t] = await clock(page);
    if (t !== last) { last = t; since = Date.now(); }
    if (Date.now() - since >= 2000) break;
    if (Date.now() - t0 > 120000) throw new Error("the video never stalled");
    await page.waitForTimeout(250);
  }
  const stalledAt = Date.now();
  await out(`STEP stalled ${stalledAt - t0}`);
  // Resumed: the clock moves on for 3 s in a row, in the same page.
  let moving = null;
  for (;;) {
    const [status, t, same] = await clock(page);
    if (!same) throw new Error("the page was reloaded");
    if (t > last) { moving = moving ?? Date.now(); } else { moving = null; }
    last = t;
    if (moving && Date.now() - moving >= 3000) {
      await out(`STEP resumed ${moving - stalledAt} ${status}`);
      break;
    }
    if (Date.now() - stalledAt > 90000) throw new Error(`not resumed: ${status}`);
    await page.waitForTimeout(250);
  }
  await ctx.close();
})().catch(async (e) => {
  await out("FAILED " + e.message.split("\n")[0]);
  process.exit(1);
});
