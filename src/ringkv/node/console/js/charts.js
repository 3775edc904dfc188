// Time-series line charts drawn as SVG by hand (no library, no build step).

import {h, s} from "./dom.js";
import {clock} from "./format.js";

const W = 520, H = 190;
const PAD = {left: 46, right: 12, top: 12, bottom: 24};

/** A y-axis above `max` that reads well: its top (1, 2, 2.5 or 5 times a power of ten)
 * and how many gridline steps divide it into round numbers. */
export function niceAxis(max) {
  if (!(max > 0)) return {top: 1, steps: 4};
  const power = 10 ** Math.floor(Math.log10(max));
  for (const [m, steps] of [[1, 4], [2, 4], [2.5, 5], [5, 5], [10, 4]]) {
    if (m * power >= max) return {top: m * power, steps};
  }
  return {top: 10 * power, steps: 4};
}

/**
 * A line chart of `series` ([{name, color, points: [[ms, value|null], ...]}]) over the
 * window [now - spanMs, now]. `format` turns a value into text. Returns the chart and
 * its legend (each series with its latest value).
 */
export function lineChart(series, {now, spanMs, format, empty = "no traffic yet"}) {
  const x0 = now - spanMs;
  const plotW = W - PAD.left - PAD.right, plotH = H - PAD.top - PAD.bottom;
  const values = series.flatMap((sr) => sr.points.map((p) => p[1]).filter((v) => v !== null));
  const {top, steps} = niceAxis(Math.max(0, ...values));
  const x = (t) => PAD.left + ((t - x0) / spanMs) * plotW;
  const y = (v) => PAD.top + plotH - (v / top) * plotH;

  const svg = s("svg", {viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img"});
  for (let i = 0; i <= steps; i += 1) {
    const v = (top * i) / steps;
    svg.append(
      s("line", {x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v), class: "grid"}),
      s("text", {x: PAD.left - 6, y: y(v) + 4, class: "axis", "text-anchor": "end"}, format(v)),
    );
  }
  // Ticks on round instants (30 s, 1, 2 or 5 minutes apart), labelled to the second when closer.
  const tickMs = [30e3, 60e3, 120e3, 300e3].find((step) => spanMs / step <= 6) || 600e3;
  for (let t = Math.ceil(x0 / tickMs) * tickMs; t <= now; t += tickMs) {
    svg.append(s("text", {x: x(t), y: H - 6, class: "axis", "text-anchor": "middle"},
      tickMs < 60e3 ? clock(t) : clock(t).slice(0, 5)));
  }
  series.forEach((sr, i) => {
    const pts = sr.points.filter((p) => p[0] >= x0);
    let d = "", area = "", run = [];
    const flush = () => {
      if (run.length) {
        d += run.map((p, j) => `${j ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
        if (i === 0 && run.length > 1) {
          area += `M${x(run[0][0]).toFixed(1)},${y(0)}` +
            run.map((p) => `L${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("") +
            `L${x(run[run.length - 1][0]).toFixed(1)},${y(0)}Z`;
        }
      }
      run = [];
    };
    for (const p of pts) { if (p[1] === null) flush(); else run.push(p); }
    flush();
    if (area) svg.append(s("path", {d: area, fill: sr.color, class: "area"}));
    if (d) svg.append(s("path", {d, stroke: sr.color, class: "line"}));
  });
  if (!values.length) {
    svg.append(s("text", {x: PAD.left + plotW / 2, y: PAD.top + plotH / 2, class: "empty", "text-anchor": "middle"}, empty));
  }
  addCrosshair(svg, series, {x, x0, now, spanMs, format, plotH});

  const legend = h("ul", {class: "legend"}, series.map((sr) => {
    const last = [...sr.points].reverse().find((p) => p[1] !== null);
    return h("li", {},
      h("span", {class: "swatch", style: {background: sr.color}}),
      h("span", {class: "legend-name"}, sr.name),
      h("span", {class: "legend-value"}, last ? format(last[1]) : "–"));
  }));
  return h("div", {class: "chart-box"}, svg, legend);
}

function addCrosshair(svg, series, {x, x0, now, spanMs, format, plotH}) {
  const line = s("line", {y1: PAD.top, y2: PAD.top + plotH, class: "crosshair", visibility: "hidden"});
  const tip = s("g", {visibility: "hidden", class: "tip"});
  svg.append(line, tip);
  svg.addEventListener("mousemove", (event) => {
    const box = svg.getBoundingClientRect();
    const px = ((event.clientX - box.left) / box.width) * W;
    const t = x0 + ((px - PAD.left) / (W - PAD.left - PAD.right)) * spanMs;
    if (t < x0 || t > now) return;
    const rows = series.map((sr) => {
      let best = null;
      for (const p of sr.points) if (!best || Math.abs(p[0] - t) < Math.abs(best[0] - t)) best = p;
      return [sr, best];
    }).filter(([, p]) => p && p[1] !== null);
    if (!rows.length) return;
    const at = rows[0][1][0];
    line.setAttribute("x1", x(at)); line.setAttribute("x2", x(at));
    line.setAttribute("visibility", "visible");
    const left = x(at) > W / 2;
    const tx = left ? x(at) - 8 : x(at) + 8;
    const anchor = left ? "end" : "start";
    tip.replaceChildren(s("text", {x: tx, y: PAD.top + 12, "text-anchor": anchor, class: "tip-time"}, clock(at)),
      ...rows.map(([sr, p], i) => s("text", {x: tx, y: PAD.top + 27 + i * 14, "text-anchor": anchor, fill: sr.color, class: "tip-row"},
        `${sr.name} ${format(p[1])}`)));
    tip.setAttribute("visibility", "visible");
  });
  svg.addEventListener("mouseleave", () => {
    line.setAttribute("visibility", "hidden");
    tip.setAttribute("visibility", "hidden");
  });
}
