// The token ring as SVG: one band per replica position (the outer band is each range's
// first replica), a tick per virtual node, and the ranges that move while an epoch is
// unsettled outlined in the target ring.

import {h, s} from "./dom.js";
import {percent} from "./format.js";

const SIZE = 300, C = SIZE / 2;
const OUTER = 128, BAND = 22, GAP = 3;

function polar(r, fraction) {
  const a = fraction * 2 * Math.PI - Math.PI / 2;
  return [C + r * Math.cos(a), C + r * Math.sin(a)];
}

function arc(r0, r1, f0, f1) {
  const large = f1 - f0 > 0.5 ? 1 : 0;
  const [ax, ay] = polar(r1, f0), [bx, by] = polar(r1, f1);
  const [cx, cy] = polar(r0, f1), [dx, dy] = polar(r0, f0);
  const n = (v) => v.toFixed(2);
  return `M${n(ax)},${n(ay)}A${r1},${r1} 0 ${large} 1 ${n(bx)},${n(by)}` +
    `L${n(cx)},${n(cy)}A${r0},${r0} 0 ${large} 0 ${n(dx)},${n(dy)}Z`;
}

/** Adjacent segments with the same member at replica position `k`, merged. */
function runs(segments, k) {
  const out = [];
  for (const seg of segments) {
    const name = seg.replicas[k];
    if (name === undefined) continue;
    const last = out[out.length - 1];
    if (last && last.name === name && Math.abs(last.end - seg.start) < 1e-12) last.end = seg.end;
    else out.push({name, start: seg.start, end: seg.end});
  }
  return out;
}

/**
 * One ring drawing. `ring` is {members, segments: [{start, end, replicas}]} with positions
 * as fractions of the token space; `moving` the ranges whose replica set changes.
 */
export function ringDrawing(ring, {label, sub, colorOf, moving = []}) {
  const svg = s("svg", {viewBox: `0 0 ${SIZE} ${SIZE}`, class: "ring-svg", role: "img"},
    s("title", {}, `${label}: ${ring.members.join(", ")}`));
  const depth = Math.max(1, ...ring.segments.map((seg) => seg.replicas.length));
  for (let k = 0; k < depth; k += 1) {
    const r1 = OUTER - k * (BAND + GAP), r0 = r1 - BAND;
    for (const run of runs(ring.segments, k)) {
      svg.append(s("path", {d: arc(r0, r1, run.start, run.end), fill: colorOf(run.name), class: `band band-${k}`, "data-member": run.name},
        s("title", {}, `${run.name}: replica ${k + 1} of ${percent(run.end - run.start)} of the ring`)));
    }
  }
  for (const seg of ring.segments) {
    if (seg.end >= 1) continue;  // the wrap piece ends at the top, not at a vnode
    const [x1, y1] = polar(OUTER + 2, seg.end), [x2, y2] = polar(OUTER + 9, seg.end);
    svg.append(s("line", {x1, y1, x2, y2, stroke: colorOf(seg.replicas[0]), class: "vnode", "data-member": seg.replicas[0]}));
  }
  for (const m of moving) {
    svg.append(s("path", {d: arc(OUTER + 11, OUTER + 17, m.start, m.end), class: "moving"},
      s("title", {}, `moving: ${m.old.join(", ")} → ${m.new.join(", ")}`)));
  }
  svg.append(
    s("text", {x: C, y: C - 4, class: "ring-label", "text-anchor": "middle"}, label),
    s("text", {x: C, y: C + 14, class: "ring-sub", "text-anchor": "middle"}, sub),
  );
  return svg;
}

/** Light up one member's ranges in every drawing inside `scope` (null: all again). */
function focus(scope, name) {
  for (const svg of scope.querySelectorAll(".ring-svg")) {
    svg.classList.toggle("focus", name !== null);
    for (const el of svg.querySelectorAll("[data-member]")) el.classList.toggle("on", el.dataset.member === name);
  }
}

/** The members with their colour and share of the ring; hovering one lights up its ranges. */
export function ringLegend(members, colorOf) {
  return h("ul", {class: "ring-legend"}, members.map((m) =>
    h("li", {
      onmouseenter: (e) => focus(e.currentTarget.closest(".card"), m.name),
      onmouseleave: (e) => focus(e.currentTarget.closest(".card"), null),
    }, h("span", {class: "swatch", style: {background: colorOf(m.name)}}),
    h("span", {}, m.name), h("span", {class: "muted"}, percent(m.ownership)))));
}
