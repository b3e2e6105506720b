// Number, money and time formatting for display.

const integer = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
const compact = new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 });
const usd = new Intl.NumberFormat(undefined, { style: "currency", currency: "USD", maximumFractionDigits: 4 });

/** `1234567` → `1,234,567`; null → `—`. */
export function int(value) {
  return value === null || value === undefined ? "—" : integer.format(value);
}

/** `1234567` → `1.2M`. */
export function short(value) {
  return value === null || value === undefined ? "—" : compact.format(value);
}

/** Dollars, up to 4 decimals; null (unpriced) → `—`. */
export function money(value) {
  return value === null || value === undefined ? "—" : usd.format(value);
}

/** A ratio as a percentage. */
export function percent(ratio) {
  return ratio === null || ratio === undefined || Number.isNaN(ratio)
    ? "—" : `${(ratio * 100).toFixed(1)} %`;
}

/** An RFC 3339 timestamp as local `YYYY-MM-DD HH:MM:SS.mmm`. */
export function time(text) {
  if (!text) return "—";
  const date = new Date(text);
  if (Number.isNaN(date.getTime())) return String(text);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
}

/** A value for a table cell: null → `—`, objects as JSON. */
export function cell(value) {
  if (value === null || value === undefined || value === "") return "—";
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

/** The UTC day `offset` days from today, as `YYYY-MM-DD`. */
export function utcDay(offset = 0) {
  const date = new Date();
  date.setUTCHours(0, 0, 0, 0);
  date.setUTCDate(date.getUTCDate() + offset);
  return date.toISOString().slice(0, 10);
}

/** A `datetime-local` value (local time) as RFC 3339 UTC; empty stays empty. */
export function localToRfc3339(value) {
  if (!value) return "";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? "" : date.toISOString();
}
