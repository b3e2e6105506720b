// The Usage view: stat cards (`/stats`, plus what `/stats/stream` reports as it
// is committed), daily charts per model and provider (`/tokens/usage`), top
// users, tenants and actions; a window picker (today, 7, 30, 90 days).

import { h, fill, notice, table } from "./dom.js";
import { getJson, events, ApiError, aborted } from "./api.js";
import { int, short, money, percent, utcDay, cell } from "./format.js";
import { stackedBars } from "./chart.js";

const WINDOWS = [["1", "Today"], ["7", "7 days"], ["30", "30 days"], ["90", "90 days"]];
/** Pages of an aggregate read at most for a top list. */
const MAX_PAGES = 5;

async function allItems(path, params) {
  const items = [];
  let cursor = null;
  for (let page = 0; page < MAX_PAGES; page++) {
    const body = await getJson(path, { ...params, cursor });
    items.push(...(body.items || []));
    cursor = body.next_cursor;
    if (!cursor) return { items, complete: true };
  }
  return { items, complete: false };
}

/**
 * The page's own progress signals, once per page load: `tally:usage-cards` when
 * the stat cards hold the window's figures, `tally:usage-complete` when the
 * charts and top lists are drawn too (`tally-bench console` measures them).
 */
function mark(name) {
  if (!performance.getEntriesByName(name).length) performance.mark(name);
}

function days(from, count) {
  const result = [];
  const start = new Date(`${from}T00:00:00Z`);
  for (let i = 0; i < count; i++) {
    const day = new Date(start);
    day.setUTCDate(start.getUTCDate() + i);
    result.push(day.toISOString().slice(0, 10));
  }
  return result;
}

export function createUsage(root, ctx) {
  let windowDays = 7;
  let streamController = null;
  let generation = 0;
  const cards = h("div", { class: "cards", id: "usage-cards" });
  const live = h("p", { class: "muted", id: "usage-live", role: "status" });
  const charts = h("div", { class: "charts", id: "usage-charts" });
  const tops = h("div", { class: "tops", id: "usage-tops" });
  const tenant = h("input", { id: "usage-tenant", autocomplete: "off", placeholder: "every tenant" });
  const picker = h("div", { class: "tabs", role: "group", "aria-label": "Window" },
    WINDOWS.map(([value, label]) => {
      const button = h("button", { type: "button", "data-days": value, id: `usage-window-${value}`, "aria-pressed": String(Number(value) === windowDays) }, label);
      button.addEventListener("click", () => {
        windowDays = Number(value);
        for (const other of picker.querySelectorAll("button")) other.setAttribute("aria-pressed", String(other === button));
        load();
      });
      return button;
    }));
  const tenantForm = ctx.allTenants
    ? h("form", { class: "inline", "aria-label": "Tenant" }, h("label", { for: "usage-tenant" }, "Tenant "), tenant,
      h("button", { type: "submit" }, "Apply"))
    : null;
  if (tenantForm) tenantForm.addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });

  fill(root, h("div", { class: "toolbar" }, h("h2", {}, "Usage"), picker, tenantForm), cards, live, charts,
    h("p", { class: "muted" }, "Cards: the window's totals from the rollups plus what the live feed has counted since the page read them (cost: rollups only). " +
      "Charts and top lists read the rollups, which hold token calls once they are older than the attribution delay (5 min by default)."),
    tops);

  // The cards: [key, label, value from the current figures].
  const figures = {};
  const cardNodes = {};
  function card(key, label, hint) {
    const value = h("span", { class: "value", id: `card-${key}` }, "—");
    cardNodes[key] = value;
    return h("div", { class: "card" }, h("span", { class: "label" }, label), value,
      hint ? h("span", { class: "hint" }, hint) : null);
  }
  function render() {
    const show = {
      requests: int(figures.requests), events: int(figures.events), input: int(figures.input),
      output: int(figures.output), cost: money(figures.cost), users: int(figures.users),
      success: percent(figures.success), tps: short(figures.tps), eps: short(figures.eps),
    };
    for (const [key, text] of Object.entries(show)) if (cardNodes[key]) cardNodes[key].textContent = text;
  }

  async function stream(gen, tenantValue) {
    if (streamController) streamController.abort();
    const controller = new AbortController();
    streamController = controller;
    while (gen === generation) {
      try {
        for await (const message of events("/api/v1/stats/stream", { tenant: tenantValue }, { signal: controller.signal })) {
          if (gen !== generation) return;
          if (message.event !== "stats") continue;
          const delta = JSON.parse(message.data);
          if (delta.activity) {
            figures.events = (figures.events || 0) + delta.activity.events;
            figures.eps = delta.activity.events_per_second;
          }
          if (delta.tokens) {
            figures.requests = (figures.requests || 0) + delta.tokens.requests;
            figures.input = (figures.input || 0) + delta.tokens.input_tokens;
            figures.output = (figures.output || 0) + delta.tokens.output_tokens;
            figures.tps = delta.tokens.tokens_per_second;
          }
          live.textContent = `Live · updated ${new Date(delta.ts).toLocaleTimeString()}`;
          render();
        }
      } catch (error) {
        if (aborted(error) || gen !== generation) return;
        if (error instanceof ApiError && error.status < 500 && error.status !== 429) {
          live.textContent = `Live counts stopped: ${error.message}`;
          return;
        }
      }
      live.textContent = "Live counts reconnecting…";
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }

  async function load() {
    generation++;
    const gen = generation;
    const from = utcDay(1 - windowDays);
    const to = utcDay(1);
    const tenantValue = ctx.allTenants ? tenant.value.trim() : "";
    const base = { from, to, tenant: tenantValue };
    for (const key of Object.keys(figures)) delete figures[key];
    fill(cards,
      ctx.can.tokens ? card("requests", "LLM requests") : null,
      ctx.can.activity ? card("events", "Activity events") : null,
      ctx.can.tokens ? card("input", "Input tokens") : null,
      ctx.can.tokens ? card("output", "Output tokens") : null,
      ctx.can.tokens ? card("cost", "Cost (USD)", "priced calls, from the rollups") : null,
      ctx.can.activity ? card("users", "Active users") : null,
      ctx.can.activity ? card("success", "Success rate", "of events with an outcome") : null,
      ctx.can.tokens ? card("tps", "Tokens / s", "last second") : null,
      ctx.can.activity ? card("eps", "Events / s", "last second") : null);
    charts.replaceChildren();
    tops.replaceChildren();
    // The two reads behind the cards run side by side (two of the caller's
    // concurrent requests); the rest follows two at a time.
    const outcomesRead = ctx.can.activity
      ? allItems("/api/v1/activity/aggregates", { ...base, group_by: "outcome", grain: "month" })
      : null;
    if (outcomesRead) outcomesRead.catch(() => {}); // awaited below; a failure is shown once, from there
    try {
      const stats = await getJson("/api/v1/stats", base);
      if (gen !== generation) return;
      if (stats.tokens) {
        Object.assign(figures, {
          requests: stats.tokens.requests, input: stats.tokens.input_tokens,
          output: stats.tokens.output_tokens, cost: stats.tokens.cost_usd,
        });
      }
      if (stats.activity) {
        figures.events = stats.activity.events;
        figures.users = stats.activity.active_users;
      }
      render();
      // Every card has its figure now, but the success rate (next) for activity readers.
      if (!ctx.can.activity) mark("tally:usage-cards");
      stream(gen, tenantValue);
      const sections = [];
      if (ctx.can.activity) {
        const outcomes = await outcomesRead;
        if (gen !== generation) return;
        const count = { success: 0, failure: 0 };
        for (const item of outcomes.items) if (item.outcome in count) count[item.outcome] += item.events;
        figures.success = count.success + count.failure ? count.success / (count.success + count.failure) : null;
        render();
        mark("tally:usage-cards");
        const actions = (stats.activity && stats.activity.top_actions) || [];
        sections.push(table("Top actions", ["Action", "Events"], actions.map((a) => [cell(a.action), int(a.events)]), { id: "top-actions" }));
      }
      // The remaining reads, two at a time (half the caller's default limit of
      // four concurrent requests).
      const reads = [];
      if (ctx.can.activity) {
        reads.push(() => allItems("/api/v1/activity/aggregates", { ...base, group_by: "user", grain: "month" }));
      }
      if (ctx.can.tokens) {
        for (const key of ["model", "provider"]) {
          reads.push(() => allItems("/api/v1/tokens/usage", { ...base, grain: "day", group_by: key }));
        }
        reads.push(() => allItems("/api/v1/tokens/usage", { ...base, grain: "month", group_by: "user" }));
        if (ctx.allTenants && !tenantValue) {
          reads.push(() => allItems("/api/v1/tokens/usage", { ...base, grain: "month", group_by: "tenant" }));
        }
      }
      const results = await twoAtATime(reads);
      if (gen !== generation) return;
      let next = 0;
      if (ctx.can.activity) {
        const users = results[next++];
        sections.push(top("Most active users", "user_id", users, "events", ["User", "Events"], (r) => [int(r.events)]));
      }
      if (ctx.can.tokens) {
        const axis = days(from, windowDays);
        for (const [key, label] of [["model", "Tokens per day by model"], ["provider", "Tokens per day by provider"]]) {
          const usage = results[next++];
          const byName = new Map();
          for (const item of usage.items) {
            const name = item[key] ?? "(none)";
            if (!byName.has(name)) byName.set(name, { name, values: new Map(), total: 0 });
            const one = byName.get(name);
            one.values.set(item.period, (one.values.get(item.period) || 0) + (item.total_tokens || 0));
            one.total += item.total_tokens || 0;
          }
          const series = [...byName.values()].sort((a, b) => b.total - a.total);
          charts.append(series.length
            ? stackedBars(label, axis, series)
            : h("p", { class: "muted" }, `${label}: no token usage in this window.`));
        }
        const users = results[next++];
        sections.push(top("Top users by cost", "user_id", users, "cost_usd", ["User", "Requests", "Tokens", "Cost"],
          (r) => [int(r.requests), int(r.total_tokens), money(r.cost_usd)]));
        if (ctx.allTenants && !tenantValue) {
          const tenants = results[next++];
          sections.push(top("Top tenants by cost", "tenant_id", tenants, "cost_usd", ["Tenant", "Requests", "Tokens", "Cost"],
            (r) => [int(r.requests), int(r.total_tokens), money(r.cost_usd)]));
        }
      }
      if (gen === generation) {
        fill(tops, sections);
        mark("tally:usage-complete");
      }
    } catch (error) {
      if (gen === generation) cards.after(notice(error instanceof ApiError ? error.message : String(error)));
    }
  }

  /**
   * Runs `reads` (functions returning promises) two at a time and resolves to
   * their results in order; the first failure rejects.
   */
  async function twoAtATime(reads) {
    const results = new Array(reads.length);
    let next = 0;
    async function worker() {
      while (next < reads.length) {
        const i = next++;
        results[i] = await reads[i]();
      }
    }
    await Promise.all([worker(), worker()]);
    return results;
  }

  /** Sums `items` by `key` over the periods and lists the 10 largest by `order`. */
  function top(title, key, result, order, headers, columns) {
    const sums = new Map();
    for (const item of result.items) {
      const name = item[key] ?? "(none)";
      const sum = sums.get(name) || { name };
      for (const [field, value] of Object.entries(item)) {
        if (typeof value === "number") sum[field] = (sum[field] || 0) + value;
      }
      sums.set(name, sum);
    }
    const rows = [...sums.values()]
      .sort((a, b) => (b[order] || 0) - (a[order] || 0) || (b.total_tokens || 0) - (a.total_tokens || 0))
      .slice(0, 10)
      .map((r) => [cell(r.name), ...columns(r)]);
    const caption = result.complete ? title : `${title} (first ${MAX_PAGES} pages of the aggregate)`;
    return table(caption, headers, rows, { class: "top" });
  }

  let started = false;
  return {
    show() {
      if (!started) {
        started = true;
        load();
      }
    },
    stop() {
      generation++;
      if (streamController) streamController.abort();
    },
  };
}
