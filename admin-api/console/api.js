// The admin API from the page: the session's credential, JSON calls, downloads
// and Server-Sent-Events streams read with fetch() (so the credential travels in
// the Authorization header, never in a URL).

const TOKEN_KEY = "tally.token";

/** The credential of this tab (sessionStorage: gone when the tab closes). */
export const session = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  set(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  },
  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
  },
};

/** An error answer of the API (`{"error": {"code", "message"}}`). */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

let onUnauthorized = () => {};

/** Called with the message when a call answers 401 (the credential is no longer valid). */
export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

/** `{a: "1", b: ""}` → `a=1` (empty values left out). */
export function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params || {})) {
    if (value === null || value === undefined || value === "") continue;
    if (Array.isArray(value)) value.forEach((v) => search.append(name, v));
    else search.append(name, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

function headers(extra) {
  const result = { Accept: "application/json", ...extra };
  const token = session.token;
  if (token) result.Authorization = `Bearer ${token}`;
  return result;
}

async function failure(response) {
  let code = "http_" + response.status;
  let message = response.statusText || `HTTP ${response.status}`;
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    // not JSON: keep the status line
  }
  if (response.status === 401) onUnauthorized(message);
  return new ApiError(response.status, code, message);
}

/**
 * Requests (live feeds apart) the page has in progress at once, at most: the
 * admin API's default `admin_api.limits.max_concurrent_per_caller`. The rest
 * wait here, first come first served, rather than be answered 429.
 */
const MAX_IN_FLIGHT = 4;
/** Times a request answered 429 (over a lower limit, or another tab's) is retried. */
const RETRIES_429 = 3;
let inFlight = 0;
const waiting = [];

function abortError() {
  return new DOMException("The request was cancelled.", "AbortError");
}

/** Resolves once one of the MAX_IN_FLIGHT places is the caller's; rejects on `signal`'s abort. */
function acquire(signal) {
  if (signal && signal.aborted) return Promise.reject(abortError());
  if (inFlight < MAX_IN_FLIGHT) {
    inFlight++;
    return Promise.resolve();
  }
  return new Promise((resolve, reject) => {
    const waiter = { resolve, signal, onAbort: null };
    if (signal) {
      waiter.onAbort = () => {
        const at = waiting.indexOf(waiter);
        if (at >= 0) waiting.splice(at, 1);
        reject(abortError());
      };
      signal.addEventListener("abort", waiter.onAbort, { once: true });
    }
    waiting.push(waiter);
  });
}

/** Gives the place to the next waiting request, or frees it. */
function release() {
  const next = waiting.shift();
  if (!next) {
    inFlight--;
    return;
  }
  if (next.signal) next.signal.removeEventListener("abort", next.onAbort);
  next.resolve();
}

function wait(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    if (signal) signal.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(abortError());
    }, { once: true });
  });
}

/**
 * `fetch` within the page's MAX_IN_FLIGHT places, its answer read by `read`
 * (an error answer throws ApiError) before the place is freed; a 429 is
 * retried after its `Retry-After`, RETRIES_429 times.
 */
async function limitedFetch(url, init, read) {
  for (let attempt = 0; ; attempt++) {
    await acquire(init.signal);
    let retryAfter;
    try {
      const response = await fetch(url, init);
      if (response.status === 429 && attempt < RETRIES_429) {
        retryAfter = Number(response.headers.get("Retry-After"));
      } else {
        if (!response.ok) throw await failure(response);
        return await read(response);
      }
    } finally {
      release();
    }
    await wait(1000 * (Number.isFinite(retryAfter) && retryAfter > 0 ? Math.min(retryAfter, 10) : 1), init.signal);
  }
}

/** GET `path` with `params`; the JSON body, or throws ApiError. */
export function getJson(path, params, options = {}) {
  return limitedFetch(path + query(params), {
    headers: headers(),
    signal: options.signal,
    cache: "no-store",
  }, (response) => response.json());
}

/** POST `body` as JSON to `path`; the JSON answer, or throws ApiError. */
export function postJson(path, body) {
  return limitedFetch(path, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify(body || {}),
  }, (response) => response.json());
}

/**
 * GETs `path` and saves the answer as `filename` (the credential stays in the
 * header); answers the response's headers.
 */
export async function download(path, params, filename) {
  const [blob, answered] = await limitedFetch(path + query(params), { headers: headers({ Accept: "*/*" }) },
    async (response) => [await response.blob(), response.headers]);
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  return answered;
}

/**
 * Reads a Server-Sent-Events stream; yields `{id, event, data}` per event.
 * `options.lastEventId` resumes after that seq; `options.onOpen` is called once
 * the server has accepted the stream. Throws ApiError on an error answer; ends
 * when the server ends the stream.
 */
export async function* events(path, params, options = {}) {
  const extra = { Accept: "text/event-stream" };
  if (options.lastEventId !== null && options.lastEventId !== undefined) {
    extra["Last-Event-ID"] = String(options.lastEventId);
  }
  const response = await fetch(path + query(params), {
    headers: headers(extra),
    signal: options.signal,
    cache: "no-store",
  });
  if (!response.ok) throw await failure(response);
  if (options.onOpen) options.onOpen();
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let id = null;
  let event = "message";
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      let line = buffer.slice(0, end);
      buffer = buffer.slice(end + 1);
      if (line.endsWith("\r")) line = line.slice(0, -1);
      if (line === "") {
        if (data.length) yield { id, event, data: data.join("\n") };
        event = "message";
        data = [];
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const name = colon < 0 ? line : line.slice(0, colon);
      let text = colon < 0 ? "" : line.slice(colon + 1);
      if (text.startsWith(" ")) text = text.slice(1);
      if (name === "id") id = text;
      else if (name === "event") event = text;
      else if (name === "data") data.push(text);
    }
  }
}

/** Whether `error` is the abort of a fetch we cancelled. */
export function aborted(error) {
  return error && error.name === "AbortError";
}
