// The HTTP side of the page: every call carries the tab's API key (if any), and every failure
// becomes an ApiError whose title and detail a person can read.

const KEY = "convoy.apiKey";
const TITLES = {
  0: "Cannot reach Convoy",
  400: "Refused",
  401: "API key needed",
  404: "Not found",
  409: "Not now",
  410: "Gone",
  422: "Invalid input",
  429: "Rate limited",
  503: "Convoy is unavailable",
};

export class ApiError extends Error {
  constructor(status, detail, code = null) {
    super(detail);
    this.status = status;
    this.detail = detail;
    this.code = code;
    this.title = TITLES[status] || (status >= 500 ? "Server error" : `Error ${status}`);
  }
}

let keyPrompt = null;

/** Called with the server's reason when a request is refused for want of a key; resolves once the
 * person has entered one. */
export function onKeyNeeded(prompt) {
  keyPrompt = prompt;
}

export function apiKey() {
  return sessionStorage.getItem(KEY);
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

function headers(json) {
  const h = json ? { "content-type": "application/json" } : {};
  const key = apiKey();
  if (key) h.authorization = `Bearer ${key}`;
  return h;
}

/** The readable reason of a refused response: Convoy's `detail` (or `message`), plus when to retry. */
export async function errorOf(response) {
  let detail = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    code = body.code || body.error_code || null;
    if (typeof body.detail === "string") detail = body.detail;
    else if (body.message) detail = body.message;
    else if (body.error && body.error.message) detail = body.error.message;
  } catch {
    // not JSON: keep the status line
  }
  const retry = response.headers.get("retry-after");
  if (retry && (response.status === 429 || response.status === 503)) detail += ` (retry in ${retry} s)`;
  return new ApiError(response.status, detail, code);
}

/** One API call. `raw` returns the Response (for a stream); otherwise the parsed JSON. */
export async function call(method, path, { body, query, signal, raw = false } = {}) {
  const url = query ? `${path}?${new URLSearchParams(query)}` : path;
  for (let attempt = 0; ; attempt += 1) {
    let response;
    try {
      response = await fetch(url, {
        method,
        headers: headers(body !== undefined),
        body: body !== undefined ? JSON.stringify(body) : undefined,
        signal,
      });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError(0, "The server did not answer. Is `convoy serve` still running?");
    }
    if (response.status === 401 && keyPrompt && attempt < 3) {
      const refused = await errorOf(response);
      if (refused.code === "invalid_stream_token") throw refused;
      await keyPrompt(refused.detail);
      continue;
    }
    if (!response.ok) throw await errorOf(response);
    return raw ? response : response.json();
  }
}

export const get = (path, query) => call("GET", path, { query });
export const post = (path, body, query) => call("POST", path, { body, query });

