// The Operations view: the collector's health (`/healthz`, `/readyz`), the
// integrity of the hash chains (`/verify`), the taxonomy in force
// (`/taxonomy`) and, for admins, the quarantined events (`/rejected`) with a
// replay button (`POST /rejected/replay`).

import { h, fill, notice, table } from "./dom.js";
import { getJson, postJson, ApiError } from "./api.js";
import { time, cell, int } from "./format.js";

async function probe(path) {
  try {
    const response = await fetch(path, { cache: "no-store" });
    const body = await response.json().catch(() => ({}));
    return { ok: response.ok, text: response.ok ? "ok" : `${body.status || response.status}: ${body.reason || ""}` };
  } catch (error) {
    return { ok: false, text: `unreachable (${error.message})` };
  }
}

export function createOps(root, ctx) {
  const health = h("section", { id: "ops-health", "aria-labelledby": "ops-health-title" });
  const integrity = h("section", { id: "ops-integrity", "aria-labelledby": "ops-integrity-title" });
  const taxonomy = h("section", { id: "ops-taxonomy", "aria-labelledby": "ops-taxonomy-title" });
  const rejected = h("section", { id: "ops-rejected", "aria-labelledby": "ops-rejected-title" });
  const refresh = h("button", { type: "button", class: "secondary", id: "ops-refresh" }, "Refresh");
  refresh.addEventListener("click", () => load());
  fill(root, h("div", { class: "toolbar" }, h("h2", {}, "Operations"), refresh),
    health, ctx.can.activity ? integrity : null, taxonomy, ctx.can.admin ? rejected : null);

  async function loadHealth() {
    const [live, ready] = await Promise.all([probe("/healthz"), probe("/readyz")]);
    fill(health, h("h3", { id: "ops-health-title" }, "Health"),
      h("div", { class: "cards" },
        [["Process (/healthz)", live], ["Ready (/readyz)", ready]].map(([label, result]) =>
          h("div", { class: "card" }, h("span", { class: "label" }, label),
            h("span", { class: `value ${result.ok ? "good" : "bad"}` }, result.text)))));
  }

  async function loadIntegrity() {
    fill(integrity, h("h3", { id: "ops-integrity-title" }, "Integrity"), h("p", { class: "muted" }, "Checking the hash chains…"));
    try {
      const answer = await getJson("/api/v1/verify");
      const reports = answer.items || [answer];
      fill(integrity, h("h3", { id: "ops-integrity-title" }, "Integrity"),
        h("p", { id: "ops-integrity-status", class: answer.status === "intact" ? "good" : "bad" }, `Status: ${cell(answer.status)}`),
        table("Hash chain per tenant", ["Tenant", "Status", "Verified up to seq", "Rows checked", "Checkpoint signed", "First problem"],
          reports.map((r) => [cell(r.tenant), cell(r.status), cell(r.verified_up_to_seq), int(r.rows_checked),
            r.checkpoint ? time(r.checkpoint.signed_at) : "—",
            r.first_problem ? `${r.first_problem.kind} at seq ${r.first_problem.seq}: ${r.first_problem.detail}` : "—"])));
    } catch (error) {
      fill(integrity, h("h3", { id: "ops-integrity-title" }, "Integrity"), notice(error.message));
    }
  }

  async function loadTaxonomy() {
    try {
      const answer = await getJson("/api/v1/taxonomy");
      const actions = Object.entries(answer.actions || {});
      fill(taxonomy, h("h3", { id: "ops-taxonomy-title" }, "Taxonomy in force"),
        h("dl", { class: "facts" },
          [["Mode", answer.mode], ["Source", answer.source], ["Version", answer.version], ["Generation", answer.generation],
            ["Loaded", time(answer.loaded_at)], ["Last reload error", answer.last_reload_error]]
            .map(([name, value]) => [h("dt", {}, name), h("dd", {}, cell(value))])),
        h("details", {}, h("summary", {}, `${actions.length} actions`),
          table(null, ["Action", "Description", "Outcomes"], actions.map(([name, spec]) =>
            [name, cell(spec && spec.description), cell(spec && spec.outcomes)]))));
    } catch (error) {
      const text = error instanceof ApiError && error.status === 404 ? "No taxonomy registry is loaded." : error.message;
      fill(taxonomy, h("h3", { id: "ops-taxonomy-title" }, "Taxonomy in force"), notice(text, "info"));
    }
  }

  let cursors = [null];
  async function loadRejected() {
    const result = h("p", { class: "muted", id: "replay-result", role: "status" });
    const replay = h("button", { type: "button", id: "replay" }, "Replay all against the current taxonomy");
    replay.addEventListener("click", async () => {
      replay.disabled = true;
      try {
        const answer = await postJson("/api/v1/rejected/replay", {});
        cursors = [null];
        await loadRejected();
        const node = document.getElementById("replay-result");
        if (node) node.textContent = `Replayed ${answer.replayed}; still rejected ${answer.still_rejected}.`;
      } catch (error) {
        result.textContent = `Replay failed: ${error.message}`;
        replay.disabled = false;
      }
    });
    try {
      const page = await getJson("/api/v1/rejected", { limit: 50, cursor: cursors[cursors.length - 1] });
      const items = page.items || [];
      const older = h("button", { type: "button", disabled: !page.next_cursor }, "Older →");
      const newer = h("button", { type: "button", disabled: cursors.length === 1 }, "← Newer");
      older.addEventListener("click", () => {
        cursors.push(page.next_cursor);
        loadRejected();
      });
      newer.addEventListener("click", () => {
        cursors.pop();
        loadRejected();
      });
      fill(rejected, h("h3", { id: "ops-rejected-title" }, "Rejected events"),
        h("div", { class: "toolbar" }, replay, result),
        items.length
          ? table(null, ["Received", "Tenant", "Reason", "Action", "User", "Message"], items.map((r) => {
            const event = (r.record && r.record.event) || {};
            const reason = (r.record && r.record.reason) || {};
            return [time(r.received_at), cell(r.tenant_id), cell(r.reason), cell(event.action), cell(event.user_id),
              cell(typeof reason === "object" ? reason.message ?? reason : reason)];
          }), { id: "rejected-table" })
          : h("p", { class: "muted", id: "rejected-empty" }, "No rejected events."),
        h("div", { class: "pager" }, newer, h("span", {}, `Page ${cursors.length}`), older));
    } catch (error) {
      fill(rejected, h("h3", { id: "ops-rejected-title" }, "Rejected events"), notice(error.message));
    }
  }

  function load() {
    loadHealth();
    if (ctx.can.activity) loadIntegrity();
    loadTaxonomy();
    if (ctx.can.admin) loadRejected();
  }

  let started = false;
  return {
    show() {
      if (!started) {
        started = true;
        load();
      }
    },
  };
}
