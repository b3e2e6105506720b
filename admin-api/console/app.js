// The console's entry point: sign-in (a pasted key or JWT, or
// `#access_token=…` in the address, removed at once), the caller's scopes
// (`/api/v1/whoami`) and the views they allow.

import { h, fill, notice } from "./dom.js";
import { session, getJson, whenUnauthorized, ApiError } from "./api.js";
import { createLive } from "./live.js";
import { createSearch, createDetail } from "./search.js";
import { createUsage } from "./usage.js";
import { createOps } from "./ops.js";

const VIEWS = [
  ["live", "Live", (can) => can.activity],
  ["search", "Search", (can) => can.activity || can.tokens],
  ["usage", "Usage", (can) => can.activity || can.tokens],
  ["ops", "Operations", () => true],
];

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
let views = {};
let current = null;

/** Takes a credential from `#access_token=…` and clears it from the address bar. */
function tokenFromFragment() {
  const hash = window.location.hash;
  if (!hash.startsWith("#access_token=")) return;
  const token = new URLSearchParams(hash.slice(1)).get("access_token");
  history.replaceState(null, "", window.location.pathname + window.location.search);
  if (token) session.set(token.trim());
}

/** Stops every view's streams and forgets the views. */
function teardown() {
  for (const view of Object.values(views)) if (view.stop) view.stop();
  views = {};
  current = null;
}

function signOut(message) {
  teardown();
  session.clear();
  // The next sign-in opens on the first view (Live), as a fresh page does.
  history.replaceState(null, "", window.location.pathname + window.location.search);
  showSignIn(message);
}

function showSignIn(message) {
  nav.replaceChildren();
  fill(who);
  const input = h("input", { type: "password", id: "signin-token", name: "token", autocomplete: "off", required: true, spellcheck: "false" });
  const form = h("form", { id: "signin-form", class: "signin", "aria-labelledby": "signin-title" },
    h("h2", { id: "signin-title" }, "Sign in"),
    h("p", {}, "Paste an API key (tally_…) or a JWT. It is kept in this tab only (session storage) and sent in the Authorization header."),
    h("label", { for: "signin-token" }, "API key or JWT"),
    input,
    message ? notice(message) : null,
    h("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    session.set(input.value.trim());
    boot();
  });
  fill(main, form);
  input.focus();
}

function route() {
  const name = window.location.hash.slice(1);
  const allowed = Object.keys(views);
  if (!allowed.includes(name) && current) return; // e.g. the skip link's #main
  const target = allowed.includes(name) ? name : allowed[0];
  if (!target) return;
  for (const [key, view] of Object.entries(views)) {
    view.section.hidden = key !== target;
    const link = nav.querySelector(`a[href="#${key}"]`);
    if (link) {
      if (key === target) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
  }
  current = target;
  views[target].show();
}

async function boot() {
  let me;
  try {
    me = await getJson("/api/v1/whoami");
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      const hadToken = Boolean(session.token);
      session.clear();
      showSignIn(hadToken ? `Not accepted: ${error.message}` : null);
    } else {
      fill(main, notice(`The admin API did not answer: ${error.message}`));
    }
    return;
  }
  const scopes = new Set(me.scopes || []);
  const admin = scopes.has("admin");
  const ctx = {
    me,
    allTenants: me.tenant === "*",
    can: {
      activity: admin || scopes.has("activity:read"),
      tokens: admin || scopes.has("tokens:read"),
      admin,
    },
    signOut,
  };
  const detail = createDetail(ctx);
  ctx.openDetail = (kind, item) => detail.open(kind, item);

  const signOutButton = h("button", { type: "button", id: "signout", class: "secondary" }, "Sign out");
  signOutButton.addEventListener("click", () => signOut());
  fill(who,
    h("span", { id: "who-subject" }, me.subject),
    h("span", { class: "muted", id: "who-scope" }, ` · ${(me.scopes || []).join(" ") || "no scope"} · tenant ${me.tenant ?? "none"}`),
    me.auth ? signOutButton : h("span", { class: "muted" }, " · open API (no authentication)"));

  main.replaceChildren();
  views = {};
  const links = [];
  const makers = { live: createLive, search: createSearch, usage: createUsage, ops: createOps };
  for (const [key, label, allowed] of VIEWS) {
    if (!allowed(ctx.can)) continue;
    const section = h("section", { id: `view-${key}`, "aria-label": label, hidden: true });
    main.append(section);
    views[key] = { section, ...makers[key](section, ctx) };
    links.push(h("li", {}, h("a", { href: `#${key}`, id: `nav-${key}` }, label)));
  }
  fill(nav, h("ul", {}, links));
  if (!ctx.can.activity && !ctx.can.tokens && !admin) {
    main.prepend(notice("This credential has no read scope (activity:read, tokens:read or admin): only Operations is available.", "info"));
  }
  route();
}

whenUnauthorized((message) => {
  if (Object.keys(views).length) signOut(`Signed out: ${message}`);
});
window.addEventListener("hashchange", () => {
  if (window.location.hash.startsWith("#access_token=")) {
    teardown();
    tokenFromFragment();
    boot();
    return;
  }
  if (Object.keys(views).length) route();
});
tokenFromFragment();
boot();
