// The Search view (`/activity` and `/tokens` with their filters, keyset paging,
// export) and the detail dialog of one row (every column, its attributes as
// JSON, the rows of the same trace).

import { h, field, select, fill, notice, table } from "./dom.js";
import { getJson, download, ApiError } from "./api.js";
import { time, cell, int, money, localToRfc3339 } from "./format.js";

const OUTCOMES = [["", "any"], ["success", "success"], ["failure", "failure"], ["unknown", "unknown"]];
const LIMITS = [["25", "25"], ["50", "50"], ["100", "100"], ["250", "250"]];
/** Rows per CSV export at most (the export route's largest page). */
const EXPORT_LIMIT = 10000;

/** What each kind lists: route, export table, filters, columns of the result table. */
const KINDS = {
  activity: {
    label: "Activity",
    path: "/api/v1/activity",
    table: "activity_events",
    filters: ["tenant", "user", "action", "outcome", "resource_type", "resource_id", "trace_id"],
    columns: [
      ["Time", (r) => time(r.ts)], ["Tenant", (r) => cell(r.tenant_id)], ["User", (r) => cell(r.user_id)],
      ["Action", (r) => cell(r.action)], ["Outcome", (r) => cell(r.outcome)],
      ["Resource", (r) => (r.resource_type || r.resource_id ? `${r.resource_type || "—"}/${r.resource_id || "—"}` : "—")],
      ["Service", (r) => cell(r.service)],
    ],
  },
  tokens: {
    label: "Tokens",
    path: "/api/v1/tokens",
    table: "token_usage",
    filters: ["tenant", "user", "model", "provider", "trace_id"],
    columns: [
      ["Time", (r) => time(r.ts)], ["Tenant", (r) => cell(r.tenant_id)], ["User", (r) => cell(r.user_id)],
      ["Provider", (r) => cell(r.provider)], ["Model", (r) => cell(r.model)],
      ["Input", (r) => int(r.input_tokens)], ["Output", (r) => int(r.output_tokens)],
      ["Cost", (r) => money(r.cost_usd)],
    ],
  },
};

const LABELS = {
  tenant: "Tenant", user: "User", action: "Action", outcome: "Outcome", resource_type: "Resource type",
  resource_id: "Resource id", trace_id: "Trace id", model: "Model", provider: "Provider",
};

export function createSearch(root, ctx) {
  const kinds = Object.keys(KINDS).filter((kind) => ctx.can[kind]);
  let kind = kinds[0];
  let cursors = [null]; // cursor of each page seen; the last one is the current page's
  let params = {};
  const results = h("div", { id: "search-results" });
  const pager = h("div", { class: "pager" });
  const formHolder = h("div");
  const tabs = h("div", { class: "tabs", role: "group", "aria-label": "What to search" },
    kinds.map((name) => {
      const button = h("button", { type: "button", id: `search-kind-${name}`, "aria-pressed": String(name === kind) }, KINDS[name].label);
      button.addEventListener("click", () => {
        kind = name;
        for (const other of tabs.querySelectorAll("button")) other.setAttribute("aria-pressed", String(other === button));
        buildForm();
        results.replaceChildren();
        pager.replaceChildren();
      });
      return button;
    }));

  function buildForm() {
    const spec = KINDS[kind];
    const controls = {};
    const fields = [];
    for (const name of spec.filters) {
      if (name === "tenant" && !ctx.allTenants) continue;
      const control = name === "outcome"
        ? select(name, OUTCOMES, "")
        : h("input", { name, autocomplete: "off", placeholder: name === "action" ? "auth.* or auth.login" : null });
      control.id = `search-${name}`;
      controls[name] = control;
      fields.push(field(LABELS[name], control));
    }
    const from = h("input", { type: "datetime-local", id: "search-from", step: "1" });
    const to = h("input", { type: "datetime-local", id: "search-to", step: "1" });
    const limit = select("limit", LIMITS, "50");
    limit.id = "search-limit";
    const exportButton = h("button", { type: "button", id: "search-export", class: "secondary" }, "Export CSV");
    exportButton.addEventListener("click", async () => {
      const tenantValue = controls.tenant ? controls.tenant.value.trim() : "";
      const fromValue = localToRfc3339(from.value);
      const toValue = localToRfc3339(to.value);
      try {
        const answer = await download("/api/v1/export",
          { table: spec.table, format: "csv", tenant: tenantValue, from: fromValue, to: toValue, limit: EXPORT_LIMIT },
          `${spec.table}.csv`);
        if (answer.get("x-has-more") === "true") {
          results.prepend(notice(`Exported the first ${EXPORT_LIMIT} rows of the range (oldest first); ` +
            `narrow the range, or continue with after_seq=${answer.get("x-next-after-seq")}.`, "info"));
        }
      } catch (error) {
        results.prepend(notice(`Export failed: ${error.message}`));
      }
    });
    const form = h("form", { class: "filters", id: "search-form", "aria-label": `${spec.label} filters` },
      fields, field("From (local time)", from), field("To (local time)", to), field("Page size", limit),
      h("div", { class: "actions" }, h("button", { type: "submit" }, "Search"), exportButton));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      params = { limit: limit.value, from: localToRfc3339(from.value), to: localToRfc3339(to.value) };
      for (const [name, control] of Object.entries(controls)) params[name] = control.value.trim();
      cursors = [null];
      load();
    });
    fill(formHolder, form,
      h("p", { class: "muted" }, "Export CSV: the raw rows of the table in seq order (every column, attributes as JSON), from /api/v1/export with this form's tenant and time range (the other filters are not applied)."));
  }

  async function load() {
    const spec = KINDS[kind];
    const cursor = cursors[cursors.length - 1];
    fill(results, h("p", { class: "muted" }, "Loading…"));
    try {
      const page = await getJson(spec.path, { ...params, cursor });
      const rows = (page.items || []).map((item) => spec.columns.map(([name, value], index) => {
        if (index > 0) return value(item);
        const open = h("button", { type: "button", class: "link" }, value(item));
        open.addEventListener("click", () => ctx.openDetail(kind, item));
        return open;
      }));
      fill(results, rows.length
        ? table(`${spec.label}, page ${cursors.length}`, spec.columns.map(([name]) => name), rows, { id: "search-table" })
        : h("p", { class: "muted", id: "search-empty" }, "Nothing matches."));
      const newer = h("button", { type: "button", id: "search-newer", disabled: cursors.length === 1 }, "← Newer");
      const older = h("button", { type: "button", id: "search-older", disabled: !page.next_cursor }, "Older →");
      newer.addEventListener("click", () => {
        cursors.pop();
        load();
      });
      older.addEventListener("click", () => {
        cursors.push(page.next_cursor);
        load();
      });
      fill(pager, newer, h("span", { id: "search-page" }, `Page ${cursors.length}`), older);
    } catch (error) {
      fill(results, notice(error instanceof ApiError ? error.message : String(error)));
      pager.replaceChildren();
    }
  }

  fill(root, h("div", { class: "toolbar" }, h("h2", {}, "Search")), tabs, formHolder, results, pager);
  if (kind) buildForm();
  return { show() {} };
}

/** The detail dialog: `open(kind, item)`. */
export function createDetail(ctx) {
  const body = h("div", { id: "detail-body" });
  const close = h("button", { type: "button", id: "detail-close", class: "secondary" }, "Close");
  const dialog = h("dialog", { id: "detail", "aria-labelledby": "detail-title" },
    h("div", { class: "toolbar" }, h("h2", { id: "detail-title" }, "Details"), close), body);
  close.addEventListener("click", () => dialog.close());
  document.body.append(dialog);

  async function sameTrace(kind, item, holder) {
    if (!item.trace_id) {
      fill(holder, h("p", { class: "muted" }, "No trace id."));
      return;
    }
    const sections = [];
    for (const other of ["activity", "tokens"]) {
      if (!ctx.can[other]) continue;
      try {
        const page = await getJson(KINDS[other].path, { trace_id: item.trace_id, tenant: item.tenant_id || "", limit: 100 });
        const rows = (page.items || []).filter((row) => row.id !== item.id && row.action !== "audit.log.view");
        sections.push(rows.length
          ? table(`${KINDS[other].label} rows of this trace`, KINDS[other].columns.map(([name]) => name),
            rows.map((row) => KINDS[other].columns.map(([, value], index) => {
              if (index > 0) return value(row);
              const open = h("button", { type: "button", class: "link" }, value(row));
              open.addEventListener("click", () => show(other, row));
              return open;
            })), { class: `trace-${other}` })
          : h("p", { class: "muted" }, `No other ${KINDS[other].label.toLowerCase()} rows in this trace.`));
      } catch (error) {
        sections.push(notice(error.message));
      }
    }
    fill(holder, sections);
  }

  function show(kind, item) {
    const columns = Object.entries(item).filter(([name]) => name !== "attributes");
    const trace = h("div", { id: "detail-trace" }, h("p", { class: "muted" }, "Loading the trace…"));
    fill(body,
      h("div", { class: "table-wrap" }, h("table", { id: "detail-columns" },
        h("caption", {}, `${KINDS[kind].label} row ${item.id}`),
        h("tbody", {}, columns.map(([name, value]) =>
          h("tr", {}, h("th", { scope: "row" }, name), h("td", {}, cell(value))))))),
      h("h3", {}, "Attributes"),
      h("pre", { id: "detail-attributes", tabindex: "0" }, JSON.stringify(item.attributes ?? {}, null, 2)),
      h("h3", {}, "Same trace"),
      trace);
    if (!dialog.open) dialog.showModal();
    close.focus();
    sameTrace(kind, item, trace);
  }

  return { open: show };
}
