// Building DOM nodes without ever parsing markup: every string given here becomes a text
// node or an attribute value, so a key like `<img src=x onerror=...>` is shown, never run.
// Nothing in the console uses innerHTML, insertAdjacentHTML or document.write.

const SVG_NS = "http://www.w3.org/2000/svg";

function build(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) {
      if (typeof value !== "function") throw new TypeError(`${name} must be a function`);
      el.addEventListener(name.slice(2), value);
    } else if (name === "text") {
      el.textContent = String(value);
    } else if (name === "style") {
      // CSSOM properties, not a style attribute: allowed by the page's CSP.
      Object.assign(el.style, value);
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** An HTML element: h("td", {class: "num"}, "42"). */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element: s("circle", {cx: 5, cy: 5, r: 2}). */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** Replace everything inside the element with `id`. */
export function fill(id, ...children) {
  const el = document.getElementById(id);
  el.replaceChildren();
  build(el, null, children);
  return el;
}

export function show(id, visible) {
  document.getElementById(id).hidden = !visible;
}
