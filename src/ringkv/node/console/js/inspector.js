// The key inspector: which members hold a key, which version, size, content type and
// expiry each holds (GET /v1/replicas/{key}), and a preview of the value (GET /v1/kv/{key}).

import {api, ApiError} from "./api.js";
import {fill, h} from "./dom.js";
import * as fmt from "./format.js";

const PREVIEW_BYTES = 4096;
const TEXTUAL = /^(text\/|application\/(json|xml|javascript|x-ndjson|yaml|x-yaml|toml)|[^;]*\+(json|xml))/i;

/** A version "<hlc>.<node>": its wall-clock time (the hlc's top bits are milliseconds). */
export function versionTime(version) {
  const hlc = version.slice(0, version.indexOf("."));
  try {
    return Number(BigInt(hlc) >> 16n);
  } catch {
    return null;
  }
}

function compareVersions(a, b) {
  const [ha, na] = [BigInt(a.slice(0, a.indexOf("."))), a.slice(a.indexOf(".") + 1)];
  const [hb, nb] = [BigInt(b.slice(0, b.indexOf("."))), b.slice(b.indexOf(".") + 1)];
  if (ha !== hb) return ha < hb ? -1 : 1;
  return na < nb ? -1 : na > nb ? 1 : 0;
}

function expiry(r, now) {
  if (!r.expires_ms) return "never";
  return r.expires_ms <= now ? "expired" : `in ${fmt.duration((r.expires_ms - now) / 1000)}`;
}

function replicaTable(replicas, colorOf) {
  const versions = replicas.filter((r) => r.version).map((r) => r.version);
  const newest = versions.length ? versions.reduce((a, b) => (compareVersions(a, b) >= 0 ? a : b)) : null;
  const now = Date.now();
  const rows = replicas.map((r) => {
    const stale = r.version && r.version !== newest;
    const written = r.version ? versionTime(r.version) : null;
    const held = r.status !== "ok" ? r.status : r.tombstone ? "deleted" : r.live === false ? "expired" : "live";
    return h("tr", {class: `replica ${r.status} ${stale ? "stale" : ""}`, "data-node": r.node},
      h("td", {}, h("span", {class: "swatch", style: {background: colorOf(r.node)}}), r.node),
      h("td", {}, [r.in_base ? h("span", {class: "tag"}, "base") : null, r.in_target ? h("span", {class: "tag"}, "target") : null]),
      h("td", {}, h("span", {class: `pill ${held === "live" ? "ok" : held === "unavailable" ? "bad" : "warn"}`}, held)),
      h("td", {class: "mono small version"}, r.version || "–", stale ? h("span", {class: "flag warn"}, "older") : null),
      h("td", {class: "small"}, written ? fmt.clock(written) : "–"),
      h("td", {class: "num"}, r.size === undefined ? "–" : fmt.bytes(r.size)),
      h("td", {class: "mono small"}, r.content_type || "–"),
      h("td", {class: "small"}, r.status === "ok" ? expiry(r, now) : "–"));
  });
  return h("table", {class: "table"},
    h("thead", {}, h("tr", {}, ["replica", "ring", "holds", "version", "written", "size", "content type", "expires"].map((t) => h("th", {}, t)))),
    h("tbody", {}, rows));
}

function hexDump(view) {
  const lines = [];
  for (let i = 0; i < view.length; i += 16) {
    const chunk = [...view.slice(i, i + 16)];
    const hex = chunk.map((b) => b.toString(16).padStart(2, "0")).join(" ");
    const ascii = chunk.map((b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : ".")).join("");
    lines.push(`${i.toString(16).padStart(6, "0")}  ${hex.padEnd(47)}  ${ascii}`);
  }
  return lines.join("\n");
}

async function preview(key) {
  let response;
  try {
    response = await api.value(key);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return h("p", {class: "muted"}, "No live value: the key is absent, deleted or expired.");
    return h("p", {class: "error"}, `The value could not be read: ${err.message}`);
  }
  const type = response.headers.get("Content-Type") || "application/octet-stream";
  const data = new Uint8Array(await response.arrayBuffer());
  const head = data.slice(0, PREVIEW_BYTES);
  const cut = data.length > PREVIEW_BYTES ? ` (first ${fmt.bytes(PREVIEW_BYTES)} shown)` : "";
  let body = null;
  if (TEXTUAL.test(type)) {
    try {
      let text = new TextDecoder("utf-8", {fatal: true}).decode(head);
      if (/json/i.test(type) && !cut) {
        try { text = JSON.stringify(JSON.parse(text), null, 2); } catch { /* shown as sent */ }
      }
      body = h("pre", {class: "preview text"}, text);
    } catch {
      body = null;  // not valid UTF-8 (or cut mid-character): show the bytes
    }
  }
  return h("div", {},
    h("div", {class: "muted small"}, `value · ${type} · ${fmt.bytes(data.length)}${cut}`),
    body || h("pre", {class: "preview hex"}, hexDump(head)));
}

export async function inspect(key, colorOf) {
  if (!key) return;
  fill("inspector", h("p", {class: "muted"}, "asking the replicas…"));
  let replicas;
  try {
    replicas = await api.replicas(key);
  } catch (err) {
    fill("inspector", h("p", {class: "error"}, `${err.message}${err.code ? ` (${err.code})` : ""}`));
    return;
  }
  const held = replicas.replicas.filter((r) => r.status === "ok").length;
  fill("inspector",
    h("p", {class: "inspect-head"}, h("span", {class: "mono key"}, replicas.key),
      h("span", {class: "muted"}, ` · ${held} of ${replicas.replicas.length} replicas hold a version`)),
    replicaTable(replicas.replicas, colorOf),
    h("div", {id: "preview"}, h("p", {class: "muted small"}, "reading the value…")));
  fill("preview", await preview(key));
}
