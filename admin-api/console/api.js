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

/** GET `path` with `params`; the JSON body, or throws ApiError. */
export async function getJson(path, params, options = {}) {
  const response = await fetch(path + query(params), {
    headers: headers(),
    signal: options.signal,
    cache: "no-store",
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

/** POST `body` as JSON to `path`; the JSON answer, or throws ApiError. */
export async function postJson(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify(body || {}),
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

/**
 * GETs `path` and saves the answer as `filename` (the credential stays in the
 * header); answers the response's headers.
 */
export async function download(path, params, filename) {
  const response = await fetch(path + query(params), { headers: headers({ Accept: "*/*" }) });
  if (!response.ok) throw await failure(response);
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  return response.headers;
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
