// A small SVG line chart (no chart library): one or more series over the same time buckets, with axes and a
// table fallback for screen readers.
import { h, s } from "./dom";

export interface Series {
  label: string;
  values: number[];
  color: string;
}

export function lineChart(title: string, labels: string[], series: Series[], unit: string): HTMLElement {
  const W = 640, H = 220, L = 56, R = 36, T = 12, B = 36;
  const max = Math.max(1e-9, ...series.flatMap((x) => x.values));
  const x = (i: number) => L + (labels.length <= 1 ? 0 : (i * (W - L - R)) / (labels.length - 1));
  const y = (v: number) => T + (H - T - B) * (1 - v / max);
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title, class: "chart" });
  svg.append(s("title", {}, title));
  for (let k = 0; k <= 4; k++) {
    const v = (max * k) / 4;
    svg.append(s("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
    svg.append(s("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", class: "tick" }, fmt(v)));
  }
  const step = Math.max(1, Math.ceil(labels.length / 6));
  labels.forEach((label, i) => {
    const last = labels.length - 1;
    if ((i % step === 0 && last - i >= step) || i === last) {
      svg.append(s("text", { x: x(i), y: H - B + 18, "text-anchor": "middle", class: "tick" }, label));
    }
  });
  for (const line of series) {
    const d = line.values.map((v, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    svg.append(s("path", { d, fill: "none", stroke: line.color, "stroke-width": 2.5 }));
    line.values.forEach((v, i) => svg.append(s("circle", { cx: x(i), cy: y(v), r: 3, fill: line.color },
      s("title", {}, `${line.label} ${labels[i]}: ${fmt(v)} ${unit}`))));
  }
  const legend = h("ul", { class: "legend" }, ...series.map((line) =>
    h("li", {}, h("span", { class: "swatch", style: `background:${line.color}` }), `${line.label} (${unit})`)));
  const table = h("table", { class: "sr-only" }, h("caption", {}, title),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Time"), ...series.map((l) => h("th", { scope: "col" }, l.label)))),
    h("tbody", {}, ...labels.map((label, i) => h("tr", {}, h("th", { scope: "row" }, label),
      ...series.map((l) => h("td", {}, fmt(l.values[i])))))));
  return h("figure", { class: "chart-box" }, svg, legend, table);
}

export function fmt(v: number): string {
  if (v === 0) return "0";
  if (Math.abs(v) >= 100) return v.toFixed(0);
  if (Math.abs(v) >= 1) return v.toFixed(2);
  return v.toPrecision(2);
}
