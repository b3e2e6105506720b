// A stacked daily bar chart drawn as SVG (colours as attributes: no inline style).

import { h, s } from "./dom.js";
import { short } from "./format.js";

/** Series colours (readable on light and dark backgrounds). */
export const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f"];

/**
 * `days`: the x axis (`YYYY-MM-DD`); `series`: [{name, values: Map(day → number)}].
 * More series than colours are folded into "other".
 */
export function stackedBars(title, days, series, format = short) {
  const width = 720;
  const height = 220;
  const left = 48;
  const bottom = 22;
  let shown = series;
  if (series.length > PALETTE.length) {
    const rest = series.slice(PALETTE.length - 1);
    const other = new Map();
    for (const one of rest) for (const [day, v] of one.values) other.set(day, (other.get(day) || 0) + v);
    shown = [...series.slice(0, PALETTE.length - 1), { name: "other", values: other }];
  }
  const totals = days.map((day) => shown.reduce((sum, one) => sum + (one.values.get(day) || 0), 0));
  const max = Math.max(1, ...totals);
  const slot = (width - left) / Math.max(1, days.length);
  const bar = Math.max(1, slot * 0.8);
  const plot = height - bottom;
  const bars = [];
  days.forEach((day, i) => {
    let y = plot;
    shown.forEach((one, k) => {
      const value = one.values.get(day) || 0;
      if (!value) return;
      const barHeight = (value / max) * (plot - 8);
      y -= barHeight;
      bars.push(s("rect", { x: (left + i * slot + (slot - bar) / 2).toFixed(1), y: y.toFixed(1), width: bar.toFixed(1), height: barHeight.toFixed(1), fill: PALETTE[k] },
        s("title", {}, `${day} · ${one.name}: ${format(value)}`)));
    });
  });
  const every = Math.ceil(days.length / 8);
  const labels = days.map((day, i) => (i % every === 0
    ? s("text", { x: (left + i * slot + slot / 2).toFixed(1), y: height - 6, "text-anchor": "middle", class: "axis" }, day.slice(5))
    : null));
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title, class: "chart" },
    s("line", { x1: left, y1: plot, x2: width, y2: plot, class: "axis-line" }),
    s("text", { x: left - 6, y: 14, "text-anchor": "end", class: "axis" }, format(max)),
    s("text", { x: left - 6, y: plot, "text-anchor": "end", class: "axis" }, "0"),
    bars, labels);
  const legend = h("ul", { class: "legend" }, shown.map((one, k) =>
    h("li", {}, s("svg", { viewBox: "0 0 10 10", width: 10, height: 10, "aria-hidden": "true" },
      s("rect", { width: 10, height: 10, fill: PALETTE[k] })), one.name)));
  return h("figure", { class: "chart-box" }, h("figcaption", {}, title), svg, legend);
}
