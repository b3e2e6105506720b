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

async function allItems(path, params, signal) {
  const items = [];
  let cursor = null;
  for (let page = 0; page < MAX_PAGES; page++) {
    const body = await getJson(path, { ...params, cursor }, { signal });
    items.push(...(body.items || []));
    cursor = body.next_cursor;
    if (!cursor) return { items, complete: true };
  }
  return { items, complete: false };
}

/**
 * The page's own progress signals, once per page load (`tally-bench console`
 * measures them): `tally:usage-ready` when the view's controls and its empty
 * cards, charts and lists are drawn and every read is sent, `tally:usage-cards`
 * when the stat cards hold the window's figures, `tally:usage-complete` when
 * the charts and top lists are drawn too.
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

  /** A place for one part of the view, saying it is loading until `done` fills it. */
  function part(label) {
    const node = h("div", { class: "part", "aria-busy": "true" }, h("p", { class: "muted" }, `${label}: loading…`));
    return {
      node,
      done(...content) {
        fill(node, ...content);
        node.removeAttribute("aria-busy");
      },
      failed(error) {
        fill(node, notice(`${label}: ${error instanceof ApiError ? error.message : String(error)}`));
        node.removeAttribute("aria-busy");
      },
    };
  }

  let loadController = null;

  /**
   * (Re)loads the window: draws the cards, charts and lists empty, sends every
   * read at once (the page runs at most four requests at a time, api.js) and
   * fills each part as its answer arrives. The controls stay usable throughout:
   * another window or tenant cancels what is still running.
   */
  function load() {
    generation++;
    const gen = generation;
    if (loadController) loadController.abort();
    const controller = new AbortController();
    loadController = controller;
    const signal = controller.signal;
    const current = () => gen === generation;
    const from = utcDay(1 - windowDays);
    const to = utcDay(1);
    const tenantValue = ctx.allTenants ? tenant.value.trim() : "";
    const base = { from, to, tenant: tenantValue };
    const byTenant = ctx.allTenants && !tenantValue;
    for (const key of Object.keys(figures)) delete figures[key];
    for (const node of root.querySelectorAll(".usage-error")) node.remove();
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
    cards.setAttribute("aria-busy", "true");
    const chartParts = ctx.can.tokens
      ? [["model", "Tokens per day by model"], ["provider", "Tokens per day by provider"]]
        .map(([key, label]) => ({ key, label, ...part(label) }))
      : [];
    charts.replaceChildren(...chartParts.map((one) => one.node));
    const actionsPart = ctx.can.activity ? part("Top actions") : null;
    const usersPart = ctx.can.activity ? part("Most active users") : null;
    const costUsersPart = ctx.can.tokens ? part("Top users by cost") : null;
    const costTenantsPart = ctx.can.tokens && byTenant ? part("Top tenants by cost") : null;
    tops.replaceChildren(...[actionsPart, usersPart, costUsersPart, costTenantsPart]
      .filter(Boolean).map((one) => one.node));

    // Every read, sent now; the cards' first (the page's requests go in order).
    const quiet = (promise) => {
      promise.catch(() => {}); // each failure is shown once, where it is awaited
      return promise;
    };
    const statsRead = quiet(getJson("/api/v1/stats", base, { signal }));
    const outcomesRead = ctx.can.activity
      ? quiet(allItems("/api/v1/activity/aggregates", { ...base, group_by: "outcome", grain: "month" }, signal))
      : null;
    const chartReads = chartParts.map((one) =>
      quiet(allItems("/api/v1/tokens/usage", { ...base, grain: "day", group_by: one.key }, signal)));
    const usersRead = usersPart
      ? quiet(allItems("/api/v1/activity/aggregates", { ...base, group_by: "user", grain: "month" }, signal))
      : null;
    const costUsersRead = costUsersPart
      ? quiet(allItems("/api/v1/tokens/usage", { ...base, grain: "month", group_by: "user" }, signal))
      : null;
    const costTenantsRead = costTenantsPart
      ? quiet(allItems("/api/v1/tokens/usage", { ...base, grain: "month", group_by: "tenant" }, signal))
      : null;
    mark("tally:usage-ready");

    /** Draws `one` from `read` when it answers (nothing once another load began). */
    const settle = async (one, read, draw) => {
      try {
        const result = await read;
        if (!current()) return false;
        one.done(draw(result));
        return true;
      } catch (error) {
        if (current() && !aborted(error)) one.failed(error);
        return false;
      }
    };

    const cardsDone = (async () => {
      let stats;
      try {
        stats = await statsRead;
      } catch (error) {
        if (current() && !aborted(error)) {
          cards.removeAttribute("aria-busy");
          cards.after(h("div", { class: "usage-error" }, notice(`Stat cards: ${error instanceof ApiError ? error.message : String(error)}`)));
          if (actionsPart) actionsPart.failed(error);
        }
        return false;
      }
      if (!current()) return false;
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
      stream(gen, tenantValue);
      if (actionsPart) {
        const actions = (stats.activity && stats.activity.top_actions) || [];
        actionsPart.done(table("Top actions", ["Action", "Events"], actions.map((a) => [cell(a.action), int(a.events)]), { id: "top-actions" }));
      }
      if (outcomesRead) {
        let outcomes;
        try {
          outcomes = await outcomesRead;
        } catch (error) {
          if (current() && !aborted(error)) {
            cards.removeAttribute("aria-busy");
            cards.after(h("div", { class: "usage-error" }, notice(`Success rate: ${error instanceof ApiError ? error.message : String(error)}`)));
          }
          return false;
        }
        if (!current()) return false;
        const count = { success: 0, failure: 0 };
        for (const item of outcomes.items) if (item.outcome in count) count[item.outcome] += item.events;
        figures.success = count.success + count.failure ? count.success / (count.success + count.failure) : null;
        render();
      }
      cards.removeAttribute("aria-busy");
      mark("tally:usage-cards");
      return true;
    })();

    const axis = days(from, windowDays);
    const parts = [
      cardsDone,
      ...chartParts.map((one, i) => settle(one, chartReads[i], (usage) => chartOf(one.key, one.label, axis, usage))),
      usersPart ? settle(usersPart, usersRead, (users) =>
        top("Most active users", "user_id", users, "events", ["User", "Events"], (r) => [int(r.events)])) : null,
      costUsersPart ? settle(costUsersPart, costUsersRead, (users) =>
        top("Top users by cost", "user_id", users, "cost_usd", ["User", "Requests", "Tokens", "Cost"],
          (r) => [int(r.requests), int(r.total_tokens), money(r.cost_usd)])) : null,
      costTenantsPart ? settle(costTenantsPart, costTenantsRead, (tenants) =>
        top("Top tenants by cost", "tenant_id", tenants, "cost_usd", ["Tenant", "Requests", "Tokens", "Cost"],
          (r) => [int(r.requests), int(r.total_tokens), money(r.cost_usd)])) : null,
    ].filter(Boolean);
    Promise.all(parts).then((done) => {
      if (current() && done.every(Boolean)) mark("tally:usage-complete");
    });
  }

  /** The stacked daily chart of `usage` (rows by day and `key`), or a line saying it is empty. */
  function chartOf(key, label, axis, usage) {
    const byName = new Map();
    for (const item of usage.items) {
      const name = item[key] ?? "(none)";
      if (!byName.has(name)) byName.set(name, { name, values: new Map(), total: 0 });
      const one = byName.get(name);
      one.values.set(item.period, (one.values.get(item.period) || 0) + (item.total_tokens || 0));
      one.total += item.total_tokens || 0;
    }
    const series = [...byName.values()].sort((a, b) => b.total - a.total);
    return series.length
      ? stackedBars(label, axis, series)
      : h("p", { class: "muted" }, `${label}: no token usage in this window.`);
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
      if (loadController) loadController.abort();
      if (streamController) streamController.abort();
    },
  };
}
