// The recordings timeline: recorded spans and the gaps between them over a window of time
// (the last 24 h at first), zoomed with the buttons, the wheel or a pinch, panned by dragging, and a
// click (or tap) on it asks to play from that time. Spans are elements, not pixels on a
// canvas: a screen reader can read them and a test can find them.

const MIN_WINDOW_S = 60;
const MAX_WINDOW_S = 7 * 86400;

// "14:02:10" in the viewer's local time, with the date when it is not today.
export function clock(ms, withSeconds = true) {
  const d = new Date(ms);
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: withSeconds ? "2-digit" : undefined, hour12: false });
  const today = new Date();
  if (d.toDateString() === today.toDateString()) return time;
  return d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + time;
}

export class Timeline {
  // `el`: the container; `onPick(ms)`: a time was clicked.
  constructor(el, onPick) {
    this.el = el;
    this.onPick = onPick;
    this.spans = []; // { start, end } in ms since the epoch; end null: still recording
    this.windowS = 86400;
    this.end = Date.now(); // right edge of the window, ms
    this.follow = true; // the window's right edge follows now
    this.cursor = null; // time being played, ms
    this.track = el.querySelector(".track");
    this.axis = el.querySelector(".axis");
    this.label = el.querySelector(".window");
    el.querySelectorAll("[data-zoom]").forEach((b) =>
      b.addEventListener("click", () => this.zoomTo(Number(b.dataset.zoom), this.cursor)));
    this.track.addEventListener("wheel", (e) => {
      e.preventDefault();
      this.zoomTo(this.windowS * (e.deltaY > 0 ? 1.5 : 1 / 1.5), this.timeAt(e.clientX));
    }, { passive: false });
    // One pointer drags (or taps to play); two pinch: the window zooms by the change in their
    // distance, around the time between them (phones have no wheel).
    let down = null;
    const touches = new Map(); // pointerId -> clientX
    let pinch = null;
    const spread = () => { const [a, b] = [...touches.values()]; return Math.max(1, Math.abs(a - b)); };
    const middle = () => { const [a, b] = [...touches.values()]; return (a + b) / 2; };
    this.track.addEventListener("pointerdown", (e) => {
      touches.set(e.pointerId, e.clientX);
      try { this.track.setPointerCapture(e.pointerId); } catch { /* a pointer already gone */ }
      if (touches.size === 2) {
        down = null; // a pinch is not a tap
        pinch = { dist: spread(), windowS: this.windowS, around: this.timeAt(middle()) };
        return;
      }
      if (touches.size === 1) down = { x: e.clientX, end: this.end, moved: false };
    });
    this.track.addEventListener("pointermove", (e) => {
      if (!touches.has(e.pointerId)) return;
      touches.set(e.pointerId, e.clientX);
      if (pinch && touches.size === 2) {
        this.zoomTo(pinch.windowS * (pinch.dist / spread()), pinch.around);
        return;
      }
      if (!down) return;
      const dx = e.clientX - down.x;
      if (Math.abs(dx) > 5) down.moved = true;
      if (!down.moved) return;
      const msPerPx = (this.windowS * 1000) / this.track.clientWidth;
      this.end = Math.min(Date.now(), down.end - dx * msPerPx);
      this.follow = Date.now() - this.end < 1000;
      this.render();
    });
    const lift = (e) => {
      touches.delete(e.pointerId);
      if (touches.size < 2) pinch = null;
    };
    this.track.addEventListener("pointerup", (e) => {
      const wasPinch = pinch !== null || touches.size > 1;
      lift(e);
      const d = down;
      down = null;
      if (d && !d.moved && !wasPinch) this.onPick(Math.min(this.timeAt(e.clientX), Date.now()));
    });
    this.track.addEventListener("pointercancel", (e) => { lift(e); down = null; });
    this.track.addEventListener("keydown", (e) => {
      const step = (this.windowS * 1000) / 10;
      if (e.key === "ArrowLeft") { this.end -= step; this.follow = false; this.render(); }
      if (e.key === "ArrowRight") { this.end = Math.min(Date.now(), this.end + step); this.render(); }
    });
  }

  start() { return this.end - this.windowS * 1000; }

  timeAt(clientX) {
    const r = this.track.getBoundingClientRect();
    const f = Math.min(1, Math.max(0, (clientX - r.left) / r.width));
    return this.start() + f * this.windowS * 1000;
  }

  // Zooms to `seconds` wide, keeping `around` (ms) in view (at the same place when possible).
  zoomTo(seconds, around) {
    const w = Math.min(MAX_WINDOW_S, Math.max(MIN_WINDOW_S, seconds));
    const keep = around ?? this.end;
    const f = (keep - this.start()) / (this.windowS * 1000);
    this.windowS = w;
    this.end = Math.min(Date.now(), keep + (1 - f) * w * 1000);
    this.follow = Date.now() - this.end < 1000;
    this.render();
  }

  // A `recordings` answer: spans with RFC 3339 start and end (null while being written).
  setSpans(answer) {
    this.spans = (answer.spans || [])
      .map((s) => ({ start: Date.parse(s.start), end: s.end ? Date.parse(s.end) : null }))
      .filter((s) => Number.isFinite(s.start));
    this.unsynced = (answer.unsynced || []).length;
    this.render();
  }

  setCursor(ms) {
    this.cursor = ms;
    this.render();
  }

  render() {
    if (this.follow) this.end = Date.now();
    const t0 = this.start();
    const span = this.windowS * 1000;
    const pct = (ms) => (100 * (ms - t0)) / span;
    const now = Date.now();
    const parts = [];
    for (const s of this.spans) {
      const end = s.end ?? now;
      if (end < t0 || s.start > this.end) continue;
      const left = Math.max(0, pct(s.start));
      const right = Math.min(100, pct(end));
      parts.push(`<div class="span${s.end ? "" : " open"}" data-start="${new Date(s.start).toISOString()}" ` +
        `data-end="${s.end ? new Date(s.end).toISOString() : ""}" style="left:${left}%;width:${Math.max(0.3, right - left)}%" ` +
        `title="Recorded ${clock(s.start)} – ${s.end ? clock(s.end) : "now"}"></div>`);
    }
    if (this.cursor !== null && this.cursor >= t0 && this.cursor <= this.end) {
      parts.push(`<div class="cursor" style="left:${pct(this.cursor)}%"></div>`);
    }
    this.track.innerHTML = parts.join("");
    this.track.setAttribute("aria-label",
      `Recordings from ${clock(t0, false)} to ${clock(this.end, false)}: ${this.spans.length} recorded spans; click a time to play it`);
    // Axis: five labels across the window.
    this.axis.innerHTML = [0, 0.25, 0.5, 0.75, 1]
      .map((f) => `<span style="left:${f * 100}%">${clock(t0 + f * span, this.windowS < 3600)}</span>`)
      .join("");
    const hours = this.windowS / 3600;
    this.label.textContent = hours >= 1 ? `${+hours.toFixed(1)} h` : `${Math.round(this.windowS / 60)} min`;
  }
}
