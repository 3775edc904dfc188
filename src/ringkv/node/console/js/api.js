// The node's JSON API, relative to this page (`ui/` -> `../v1/...`), so the console works
// behind `kubectl port-forward` and behind a path prefix alike. The token travels in the
// Authorization header only: never in a URL, never logged.

const TOKEN_KEY = "ringkv.token";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

function url(path) {
  return new URL(`../${path}`, document.baseURI).href;
}

async function request(path, {raw = false, timeoutMs = 8000} = {}) {
  const headers = {Accept: raw ? "*/*" : "application/json"};
  const t = token.get();
  if (t) headers.Authorization = `Bearer ${t}`;
  let response;
  try {
    response = await fetch(url(path), {
      headers, cache: "no-store", credentials: "omit", redirect: "error",
      referrerPolicy: "no-referrer", signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (err) {
    throw new ApiError(0, "unreachable", err.name === "TimeoutError"
      ? "the node did not answer in time" : "the node cannot be reached");
  }
  if (!response.ok) {
    let code = `http_${response.status}`;
    let message = response.statusText || `HTTP ${response.status}`;
    try {
      const body = await response.json();
      code = body.error.code;
      message = body.error.message;
    } catch {
      // not our JSON error shape (a proxy in between): keep the status line
    }
    throw new ApiError(response.status, code, message);
  }
  return raw ? response : response.json();
}

/** A key as one path segment: '/' and every other reserved character percent-encoded. */
export function keyPath(key) {
  return encodeURIComponent(key);
}

export const api = {
  /** Whether the node wants a token: its public OpenAPI document says so. */
  needsToken: async () => (await request("openapi.json")).security.length > 0,
  cluster: () => request("v1/cluster"),
  stats: (since) => request(since ? `v1/stats?since=${since}` : "v1/stats"),
  history: () => request("v1/cluster/history"),
  ring: () => request("v1/ring"),
  replicas: (key) => request(`v1/replicas/${keyPath(key)}`),
  value: (key) => request(`v1/kv/${keyPath(key)}`, {raw: true}),
};
