// Drives the web viewer's WebRTC mode in headless Chromium (Debian's chromium, through
// playwright-core) against a media server with WHEP, and reports on stdout for the Rust test:
//   STEP codecs <H.264 receive codecs, comma-separated>   RTCRtpReceiver.getCapabilities
//   STEP webrtc <json>            the page plays through WebRTC: its peer connection's state,
//                                 the codec and frames decoded (inbound-rtp), frames shown in 2 s
//                                 (getVideoPlaybackQuality, requestVideoFrameCallback), the
//                                 picture's pixel variance, the WHEP answer's status and Location,
//                                 the page's details line
//   STEP deleted <json>           after the page left WebRTC (mode hls): what the session's
//                                 Location answers to a PATCH, and whether the UDP port of the
//                                 media server's candidate was given back
// Run it where Chromium gathers ICE candidates (a network namespace with an address and a
// default route): on loopback alone it gathers none.
// node web_webrtc.js VIEWER_URL SCREENSHOT_PATH
const dgram = require("dgram");
const { WEBRTC_ARGS, keepPeerConnections, out, open, variance: pictureVariance } = require("./browser");

const [url, shot] = process.argv.slice(2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Whether this UDP port on this address is free (the media server let go of it).
function udpFree(address, port) {
  return new Promise((resolve) => {
    const s = dgram.createSocket("udp4");
    s.once("error", () => { s.close(); resolve(false); });
    s.bind(port, address, () => { s.close(); resolve(true); });
  });
}

(async () => {
  let whep = null;
  const { ctx, page } = await open(url, {
    args: WEBRTC_ARGS,
    init: keepPeerConnections,
    before: (page) => page.on("response", async (r) => {
      if (r.request().method() === "POST" && /\/whep$/.test(new URL(r.url()).pathname)) {
        whep = { status: r.status(), location: r.headers()["location"] || null, url: r.url(), sdp: await r.text().catch(() => "") };
      }
    }),
  });
  const codecs = await page.evaluate(() => (RTCRtpReceiver.getCapabilities("video")?.codecs || [])
    .filter((c) => c.mimeType === "video/H264").map((c) => c.sdpFmtpLine.replace(/level-asymmetry-allowed=1;/, "")));
  await out("STEP codecs " + codecs.join(","));
  const mode = await page.evaluate(() => document.getElementById("mode").value);
  if (mode !== "webrtc") throw new Error(`the page's mode is ${mode}, not webrtc`);

  // Live through WebRTC: a connected peer connection feeds the video element, frames come.
  const t0 = Date.now();
  let state = null;
  while (Date.now() - t0 < 45000) {
    state = await page.evaluate(() => {
      const v = document.getElementById("video");
      const pcs = window.camstreamPeerConnections || [];
      return {
        status: document.getElementById("status").textContent,
        details: document.getElementById("details").textContent,
        srcObject: v.srcObject instanceof MediaStream,
        connected: pcs.some((pc) => pc.connectionState === "connected"),
        time: v.currentTime,
      };
    });
    if (/playing HLS/.test(state.details)) throw new Error("the page fell back to HLS: " + state.details);
    if (state.status === "Live" && state.srcObject && state.connected && state.time > 0) break;
    await sleep(250);
  }
  if (!(state.status === "Live" && state.srcObject && state.connected)) {
    throw new Error("not live through WebRTC within 45 s: " + JSON.stringify(state) + " whep " + JSON.stringify(whep && { ...whep, sdp: undefined }));
  }
  const firstMs = await page.evaluate(() => window.camstreamFirstPictureMs);
  // Frames shown over 2 s, counted two ways, and the receiver's own figures.
  const shown = await page.evaluate(async () => {
    const v = document.getElementById("video");
    const q0 = v.getVideoPlaybackQuality().totalVideoFrames;
    let callbacks = 0;
    const count = () => { callbacks++; v.requestVideoFrameCallback(count); };
    v.requestVideoFrameCallback(count);
    await new Promise((r) => setTimeout(r, 2000));
    return { quality: v.getVideoPlaybackQuality().totalVideoFrames - q0, callbacks };
  });
  const rtp = await page.evaluate(async () => {
    const pc = window.camstreamPeerConnections.find((p) => p.connectionState === "connected");
    const stats = [...(await pc.getStats()).values()];
    const inbound = stats.find((s) => s.type === "inbound-rtp" && s.kind === "video") || {};
    const codec = stats.find((s) => s.id === inbound.codecId) || {};
    const pair = stats.find((s) => s.type === "candidate-pair" && s.nominated && s.state === "succeeded") || {};
    const remote = stats.find((s) => s.id === pair.remoteCandidateId) || {};
    return { state: pc.connectionState, codec: codec.mimeType || null, framesDecoded: inbound.framesDecoded || 0,
      width: inbound.frameWidth || 0, remote: remote.address ? `${remote.address}:${remote.port} ${remote.protocol} ${remote.candidateType}` : null };
  });
  const variance = await pictureVariance(page);
  await page.screenshot({ path: shot });
  const details = await page.textContent("#details");
  await out("STEP webrtc " + JSON.stringify({ firstMs, shown, rtp, variance: Math.round(variance),
    whep: whep && { status: whep.status, location: whep.location }, details }));

  // The page leaves WebRTC: its WHEP session is deleted and the media server lets it go.
  const session = whep && whep.location ? new URL(whep.location, whep.url).toString() : null;
  const cand = ((whep && whep.sdp) || "").match(/^a=candidate:\S+ 1 UDP \d+ (\S+) (\d+) typ host/mi);
  const portBusyBefore = cand ? !(await udpFree(cand[1], Number(cand[2]))) : null;
  await page.selectOption("#mode", "hls");
  let patch = null;
  let portFree = null;
  const t1 = Date.now();
  while (session && Date.now() - t1 < 10000) {
    patch = (await fetch(session, { method: "PATCH", headers: { "Content-Type": "application/trickle-ice-sdpfrag" },
      body: "a=ice-ufrag:x\r\na=ice-pwd:y\r\nm=video 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n" })).status;
    portFree = cand ? await udpFree(cand[1], Number(cand[2])) : null;
    if (patch === 404 && portFree !== false) break;
    await sleep(250);
  }
  await out("STEP deleted " + JSON.stringify({ session, patch, candidate: cand && `${cand[1]}:${cand[2]}`, portBusyBefore, portFree }));
  await ctx.close();
  process.exit(0);
})().catch(async (e) => { await out("FAILED " + e.message); process.exit(1); });
