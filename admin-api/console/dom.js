// DOM helpers. Every value given to them becomes text (a Text node or an
// attribute value), never markup: nothing here parses HTML.

const SVG_NS = "http://www.w3.org/2000/svg";

function apply(node, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else if (value === true) {
      node.setAttribute(name, "");
    } else {
      node.setAttribute(name, String(value));
    }
  }
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else if (child instanceof Node) node.append(child);
    else node.append(document.createTextNode(String(child)));
  }
}

/** An HTML element: `h("td", {class: "x"}, "text", otherNode)`. */
export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  apply(node, attrs);
  append(node, children);
  return node;
}

/** An SVG element. */
export function s(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  apply(node, attrs);
  append(node, children);
  return node;
}

/** Replaces every child of `node`. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

/** A table with a caption, a header row and `rows` (arrays of cells). */
export function table(caption, headers, rows, attrs) {
  return h("div", { class: "table-wrap" },
    h("table", attrs || {},
      caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, headers.map((name) => h("th", { scope: "col" }, name)))),
      h("tbody", {}, rows.length
        ? rows.map((cells) => h("tr", {}, cells.map((cell) => h("td", {}, cell))))
        : h("tr", {}, h("td", { colspan: headers.length, class: "muted" }, "Nothing yet.")))));
}

/** A labelled form field. */
export function field(label, control) {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 10)}`;
  control.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), control);
}

/** A `<select>` with `options` ([value, label] pairs). */
export function select(name, options, value) {
  const node = h("select", { name });
  for (const [optionValue, label] of options) {
    const option = h("option", { value: optionValue }, label);
    if (optionValue === value) option.selected = true;
    node.append(option);
  }
  return node;
}

/** An error or notice line. */
export function notice(text, kind = "error") {
  return h("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}
