// Numbers as a person reads them.

export function count(n) {
  if (n === undefined || n === null) return "–";
  return Math.round(n).toLocaleString("en-US");
}

export function rate(n) {
  if (n === undefined || n === null) return "–";
  if (n === 0) return "0";
  if (n < 1) return n.toFixed(2);
  if (n < 10) return n.toFixed(1);
  return Math.round(n).toLocaleString("en-US");
}

export function ms(n) {
  if (n === undefined || n === null) return "–";
  if (n === 0) return "0";
  if (n < 1) return `${n.toFixed(2)} ms`;
  if (n < 10) return `${n.toFixed(1)} ms`;
  if (n < 1000) return `${Math.round(n)} ms`;
  return `${(n / 1000).toFixed(2)} s`;
}

export function bytes(n) {
  if (n === undefined || n === null) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${i === 0 ? Math.round(n) : n.toFixed(n < 10 ? 2 : 1)} ${units[i]}`;
}

export function duration(seconds) {
  if (seconds === undefined || seconds === null || !isFinite(seconds)) return "–";
  seconds = Math.max(0, Math.round(seconds));
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ${String(seconds % 60).padStart(2, "0")}s`;
  return `${Math.floor(seconds / 3600)}h ${String(Math.floor(seconds / 60) % 60).padStart(2, "0")}m`;
}

export function clock(ms) {
  return new Date(ms).toLocaleTimeString("en-GB", {hour12: false});
}

export function when(ms, now) {
  const ago = (now - ms) / 1000;
  if (ago < 5) return "just now";
  if (ago < 3600) return `${duration(ago)} ago`;
  return new Date(ms).toLocaleString("en-GB", {hour12: false});
}

export function percent(fraction) {
  if (fraction === undefined || fraction === null) return "–";
  return `${(fraction * 100).toFixed(1)}%`;
}
