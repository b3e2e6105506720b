// The Live view: the activity feed (`/api/v1/activity/stream`) as it is
// committed, filtered server-side; pause/resume; reconnects with Last-Event-ID
// (no gap, no duplicate); memory bounded to MAX_ROWS shown + MAX_ROWS waiting
// for the next frame + 2 × MAX_ROWS held while paused, whatever the rate.

import { h, field, select, fill } from "./dom.js";
import { events, getJson, ApiError, aborted } from "./api.js";
import { time, cell } from "./format.js";

/** Rows kept on screen (the newest); an older row's element shows the next new event. */
export const MAX_ROWS = 500;
/** Rows loaded from the history when the feed (re)starts with new filters. */
const BACKLOG = 50;

const OUTCOMES = [["", "any"], ["success", "success"], ["failure", "failure"], ["unknown", "unknown"]];

export function createLive(root, ctx) {
  let generation = 0; // bumped on every restart: stale loops stop
  let controller = null;
  let connected = false; // the current stream has been accepted
  let lastSeq = null; // last seq received (shown or not): where a reconnect resumes
  let paused = false;
  let held = []; // events received while paused, newest MAX_ROWS
  let skipped = 0; // events dropped while paused (beyond MAX_ROWS)
  let pending = []; // received, not yet drawn (drawn once per animation frame)
  let scheduled = false;
  let countScheduled = false; // the paused count is redrawn on the next frame
  let received = 0; // events received from the stream since the feed (re)started
  let drawn = 0; // of them, rows put in the table
  let dropped = 0; // of them, never drawn: more than MAX_ROWS arrived between two frames
  let pausedSkipped = 0; // of them, dropped while paused (beyond what Resume shows)
  let filters = {};

  const tenant = h("input", { name: "tenant", id: "live-tenant", autocomplete: "off", placeholder: "every tenant" });
  const user = h("input", { name: "user", id: "live-user", autocomplete: "off" });
  const action = h("input", { name: "action", id: "live-action", autocomplete: "off", placeholder: "auth.* or auth.login" });
  const outcome = select("outcome", OUTCOMES, "");
  outcome.id = "live-outcome";
  const form = h("form", { class: "filters", id: "live-filters", "aria-label": "Live filters" },
    ctx.allTenants ? field("Tenant", tenant) : null,
    field("User", user),
    field("Action", action),
    field("Outcome", outcome),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Apply")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    filters = {
      tenant: ctx.allTenants ? tenant.value.trim() : "",
      user: user.value.trim(),
      action: action.value.trim(),
      outcome: outcome.value,
    };
    start();
  });

  // The state and the counter change by frames: their Text nodes are updated, not replaced.
  const stateText = document.createTextNode("Connecting");
  const state = h("span", { id: "live-state", class: "state", role: "status", "aria-live": "polite" }, stateText);
  const pauseButton = h("button", { type: "button", id: "live-pause", "aria-pressed": "false" }, "Pause");
  const counterText = document.createTextNode("");
  const counter = h("span", { id: "live-count", class: "muted" }, counterText);
  const note = h("p", { id: "live-note", class: "muted", hidden: true });
  const tbody = h("tbody", { id: "live-rows" });
  const tableNode = h("div", { class: "table-wrap" },
    h("table", { id: "live-table" },
      h("caption", { class: "visually-hidden" }, `Live activity, newest first (at most ${MAX_ROWS} rows)`),
      h("thead", {}, h("tr", {}, ["Time", "Tenant", "User", "Action", "Outcome", "Resource", "Service"]
        .map((name) => h("th", { scope: "col" }, name)))),
      tbody));
  pauseButton.addEventListener("click", () => (paused ? resume() : pause()));

  fill(root,
    h("div", { class: "toolbar" }, h("h2", {}, "Live activity"), state, pauseButton, counter),
    form, note, tableNode,
    h("p", { class: "muted" }, `Newest ${MAX_ROWS} rows are kept; select a time for the event's details.`));

  function setState(kind, text) {
    stateText.data = text;
    state.dataset.state = kind;
  }

  // The rows are reused, never dropped: at most MAX_ROWS `<tr>`s are ever made
  // (each with its cells' Text nodes), and a new event takes the table's oldest
  // row, moved to the top with its text replaced in place (`Text.data`: text,
  // never markup). So a steady feed creates no DOM nodes.
  const slots = new Map(); // each row made: <tr> → {tr, texts, badge, item}
  const spare = []; // rows made earlier and not in the table now (after a restart)
  let shown = 0; // rows in the table

  /** A new row: its element, its cells' Text nodes, the outcome badge, its event. */
  function makeRow() {
    const texts = Array.from({ length: 7 }, () => document.createTextNode(""));
    const open = h("button", { type: "button", class: "link" }, texts[0]);
    const badge = h("span", { class: "badge" }, texts[4]);
    const slot = { tr: null, texts, badge, item: null };
    open.addEventListener("click", () => {
      if (slot.item) ctx.openDetail("activity", slot.item);
    });
    slot.tr = h("tr", {},
      h("td", {}, open),
      h("td", {}, texts[1]),
      h("td", {}, texts[2]),
      h("td", {}, texts[3]),
      h("td", {}, badge),
      h("td", {}, texts[5]),
      h("td", {}, texts[6]));
    slots.set(slot.tr, slot);
    return slot;
  }

  /** Shows `item` in `slot`, every value as text. */
  function setRow(slot, item) {
    slot.item = item;
    const resource = item.resource_type || item.resource_id
      ? `${item.resource_type || "—"}/${item.resource_id || "—"}` : "—";
    const values = [time(item.ts), cell(item.tenant_id), cell(item.user_id), cell(item.action),
      cell(item.outcome), resource, cell(item.service)];
    for (let i = 0; i < values.length; i++) {
      if (slot.texts[i].data !== values[i]) slot.texts[i].data = values[i];
    }
    const badge = `badge ${String(item.outcome)}`;
    if (slot.badge.className !== badge) slot.badge.className = badge;
    slot.tr.dataset.seq = item.seq;
  }

  /**
   * Draws `items` (oldest first) above the table's rows, newest on top, keeping
   * at most MAX_ROWS: a spare or new row while the table is short, else the
   * table's oldest row.
   */
  function prependRows(items) {
    let top = tbody.firstElementChild;
    for (let i = Math.max(0, items.length - MAX_ROWS); i < items.length; i++) {
      let slot;
      if (shown < MAX_ROWS) {
        slot = spare.length ? spare.pop() : makeRow();
        shown++;
      } else {
        slot = slots.get(tbody.lastElementChild);
      }
      setRow(slot, items[i]);
      // Each above the previous one; a row already on top stays there.
      if (slot.tr !== top) tbody.insertBefore(slot.tr, top);
      top = slot.tr;
    }
  }

  /** Empties the table; its rows wait in `spare` for the next events. */
  function clearRows() {
    for (let tr = tbody.lastElementChild; tr; tr = tbody.lastElementChild) {
      tr.remove();
      const slot = slots.get(tr);
      slot.item = null;
      spare.push(slot);
    }
    shown = 0;
  }

  /** The counts, as text and as `data-*` attributes (read by `tally-bench console`). */
  function count() {
    counterText.data = dropped
      ? `${received} received · ${dropped} not drawn (over ${MAX_ROWS} between two frames)`
      : `${received} received`;
    counter.dataset.received = received;
    counter.dataset.drawn = drawn;
    counter.dataset.dropped = dropped;
    counter.dataset.pausedSkipped = pausedSkipped;
    counter.dataset.rowsMade = slots.size;
  }

  function draw() {
    scheduled = false;
    if (!pending.length) return;
    prependRows(pending);
    drawn += pending.length;
    pending = [];
    count();
  }

  function show(items) {
    pending.push(...items);
    // Only the newest MAX_ROWS can be on screen: never hold more (a hidden tab draws no frames).
    if (pending.length > MAX_ROWS) {
      dropped += pending.length - MAX_ROWS;
      pending.splice(0, pending.length - MAX_ROWS);
    }
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(draw);
    }
  }

  function receive(item) {
    if (lastSeq !== null && item.seq <= lastSeq) return; // never twice
    lastSeq = item.seq;
    received++;
    if (paused) {
      held.push(item);
      if (held.length > 2 * MAX_ROWS) {
        const drop = held.length - MAX_ROWS;
        held.splice(0, drop);
        skipped += drop;
        pausedSkipped += drop;
      }
      // Once a frame, not once an event: the state is announced to screen readers.
      if (!countScheduled) {
        countScheduled = true;
        requestAnimationFrame(() => {
          countScheduled = false;
          if (paused) setState("paused", `Paused · ${held.length + skipped} new`);
        });
      }
    } else {
      show([item]);
    }
  }

  function pause() {
    paused = true;
    pauseButton.textContent = "Resume";
    pauseButton.setAttribute("aria-pressed", "true");
    setState("paused", "Paused");
  }

  function resume() {
    paused = false;
    pauseButton.textContent = "Pause";
    pauseButton.setAttribute("aria-pressed", "false");
    if (held.length > MAX_ROWS) {
      skipped += held.length - MAX_ROWS;
      pausedSkipped += held.length - MAX_ROWS;
      held.splice(0, held.length - MAX_ROWS);
    }
    if (skipped) {
      note.textContent = `${skipped} events arrived while paused and are not shown (the newest ${MAX_ROWS} are); use Search for them.`;
      note.hidden = false;
    }
    show(held);
    held = [];
    skipped = 0;
    setState(connected ? "live" : "reconnecting", connected ? "Live" : "Reconnecting");
  }

  async function backlog(gen) {
    try {
      const page = await getJson("/api/v1/activity", { ...filters, limit: BACKLOG });
      if (gen !== generation) return;
      const items = page.items || [];
      const ownViews = filters.action.startsWith("audit");
      const seqs = items.map((item) => item.seq);
      if (seqs.length) lastSeq = Math.max(...seqs);
      // The first page is drawn at once (not on the next frame), then the counts start.
      pending = items.filter((item) => ownViews || item.action !== "audit.log.view").reverse();
      draw();
      received = 0;
      drawn = 0;
      dropped = 0;
      pausedSkipped = 0;
      count();
      // The page's own "interactive" signal: the first activity page is in the table
      // (`tally-bench console` measures navigation start to this mark).
      if (!performance.getEntriesByName("tally:live-ready").length) performance.mark("tally:live-ready");
    } catch (error) {
      if (gen === generation && error instanceof ApiError && error.status !== 401) {
        setState("error", `Stopped: ${error.message}`);
        throw error;
      }
    }
  }

  function wait(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  async function run(gen) {
    let attempt = 0;
    while (gen === generation) {
      const current = new AbortController();
      controller = current;
      connected = false;
      try {
        for await (const message of events("/api/v1/activity/stream", filters, {
          lastEventId: lastSeq,
          signal: current.signal,
          onOpen: () => {
            attempt = 0;
            connected = true;
            if (!paused) setState("live", "Live");
          },
        })) {
          if (gen !== generation) {
            current.abort();
            return;
          }
          if (message.event === "activity") receive(JSON.parse(message.data));
          else if (message.event === "reset") break; // the server dropped us: resume from lastSeq
          else if (message.event === "auth_expired") {
            ctx.signOut("Your session expired: sign in again.");
            return;
          }
        }
        current.abort();
      } catch (error) {
        if (gen !== generation || aborted(error)) return;
        if (error instanceof ApiError && error.status >= 400 && error.status < 500 && error.status !== 429) {
          setState("error", `Stopped: ${error.message}`);
          return;
        }
      }
      if (gen !== generation) return;
      connected = false;
      attempt++;
      setState("reconnecting", `Reconnecting (attempt ${attempt})`);
      await wait(Math.min(5000, 250 * 2 ** attempt));
    }
  }

  function stopCurrent() {
    generation++;
    if (controller) controller.abort();
    controller = null;
  }

  async function start() {
    stopCurrent();
    const gen = generation;
    clearRows();
    pending = [];
    held = [];
    skipped = 0;
    received = 0;
    drawn = 0;
    dropped = 0;
    pausedSkipped = 0;
    lastSeq = null;
    note.hidden = true;
    counterText.data = "";
    setState("reconnecting", "Connecting");
    try {
      await backlog(gen);
    } catch {
      return;
    }
    if (gen === generation) run(gen);
  }

  filters = { tenant: "", user: "", action: "", outcome: "" };
  let started = false;
  return {
    show() {
      if (!started) {
        started = true;
        start();
      }
    },
    stop: stopCurrent,
  };
}
