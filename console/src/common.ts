import { h } from "./dom";

export function badge(status: string | null | undefined): HTMLElement {
  const st = status ?? "UNKNOWN";
  const kind = st.endsWith("FAILED") ? "bad" : st.endsWith("IN_PROGRESS") ? "busy" : st.endsWith("COMPLETE") || st === "HEALTHY" || st === "up" ? "ok" : "neutral";
  return h("span", { class: `badge ${kind}` }, st);
}

export function table(caption: string, head: string[], rows: (Node | string)[][], empty = "Nothing yet."): HTMLElement {
  if (!rows.length) return h("p", { class: "empty" }, `${caption}: ${empty}`);
  return h("div", { class: "table-wrap" }, h("table", {},
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, ...head.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, ...rows.map((r) => h("tr", {}, ...r.map((c, i) => (i === 0 ? h("th", { scope: "row" }, c) : h("td", {}, c))))))));
}

export function section(title: string, ...children: (Node | null)[]): HTMLElement {
  const id = `s-${title.toLowerCase().replace(/[^a-z0-9]+/g, "-")}`;
  return h("section", { "aria-labelledby": id }, h("h2", { id }, title), ...children);
}

export function errorBox(err: unknown): HTMLElement {
  return h("p", { class: "error", role: "alert" }, err instanceof Error ? err.message : String(err));
}

// Re-read at most every `ms` however many changes arrive (a cluster build is a burst of events).
export function debounce(fn: () => void, ms = 400): () => void {
  let t: number | null = null;
  return () => {
    if (t !== null) return;
    t = window.setTimeout(() => {
      t = null;
      fn();
    }, ms);
  };
}
