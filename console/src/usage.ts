import { api, optional } from "./api";
import { fmt, lineChart } from "./chart";
import { errorBox, section, table } from "./common";
import { fill, h } from "./dom";
import * as session from "./session";

const RANGES: Record<string, { label: string; buckets: number; ms: number }> = {
  hour: { label: "Last hour", buckets: 12, ms: 5 * 60_000 },
  day: { label: "Last day", buckets: 24, ms: 3_600_000 },
  week: { label: "Last 7 days", buckets: 14, ms: 12 * 3_600_000 },
};

// Usage per time bucket: one GET /v1/usage per bucket ([start, end) each), for the caller's project or (admins,
// project = null) every project.
export async function usageSeries(range: string, projectId: string | null): Promise<{ labels: string[]; rows: any[] } | null> {
  const r = RANGES[range];
  const now = Date.now();
  const edges = Array.from({ length: r.buckets + 1 }, (_, i) => new Date(now - (r.buckets - i) * r.ms));
  const q = (a: Date, b: Date) => `/v1/usage?start=${encodeURIComponent(a.toISOString())}&end=${encodeURIComponent(b.toISOString())}` +
    (projectId ? `&project_id=${encodeURIComponent(projectId)}` : "");
  const first = await optional(q(edges[0], edges[1]));
  if (first === null) return null;
  const rest = await Promise.all(edges.slice(1, -1).map((a, i) => api("GET", q(a, edges[i + 2]))));
  const sum = (body: any) => (body.usage as any[]).reduce((acc, row) => {
    for (const k of Object.keys(row)) if (typeof row[k] === "number") acc[k] = (acc[k] ?? 0) + row[k];
    return acc;
  }, {} as Record<string, number>);
  const labels = edges.slice(1).map((d) => (r.ms >= 3_600_000 * 12 ? d.toLocaleDateString() + " " : "") + d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
  return { labels, rows: [first, ...rest].map(sum) };
}

export async function usagePage(main: HTMLElement): Promise<() => void> {
  const s = session.load()!;
  const quota = h("div");
  const chart = h("div", { "aria-live": "polite" });
  const totals = h("div");
  const picker = h("select", { id: "usage-range" }, ...Object.entries(RANGES).map(([k, v]) => h("option", { value: k }, v.label)));
  const draw = async () => {
    chart.replaceChildren(h("p", { class: "hint" }, "Loading usage…"));
    try {
      const series = await usageSeries(picker.value, s.projectId);
      if (series === null) {
        chart.replaceChildren(h("p", { class: "notice" }, "This API has no usage endpoint (GET /v1/usage)."));
        return;
      }
      const pick = (k: string) => series.rows.map((r) => r[k] ?? 0);
      chart.replaceChildren(
        lineChart(`Usage of project ${s.project}, ${RANGES[picker.value].label.toLowerCase()}`, series.labels, [
          { label: "vCPU", values: pick("vcpu_hours"), color: "#1f5fbf" },
          { label: "Servers", values: pick("server_hours"), color: "#b3261e" },
          { label: "RAM GB", values: pick("ram_gb_hours"), color: "#1b7a3d" },
        ], "hours per interval"));
      const total = (k: string) => fmt(pick(k).reduce((a, b) => a + b, 0));
      totals.replaceChildren(table("Totals over the range", ["Figure", "Hours"], [
        ["vCPU", total("vcpu_hours")], ["RAM (GB)", total("ram_gb_hours")], ["Servers", total("server_hours")],
        ["Volumes (GB)", total("volume_gb_hours")], ["Floating IPs", total("floating_ip_hours")],
        ["Load balancers", total("load_balancer_hours")], ["Clusters", total("cluster_hours")],
      ]));
    } catch (err) {
      chart.replaceChildren(errorBox(err));
    }
  };
  picker.addEventListener("change", () => void draw());
  try {
    const [q, st] = await Promise.all([
      api("GET", `/v1/quotas/${encodeURIComponent(s.projectId)}/Cluster`),
      api("GET", `/v1/stats?project_id=${encodeURIComponent(s.projectId)}&type=cluster`),
    ]);
    const limit = Number(q.hard_limit);
    const used = Number(st.clusters);
    fill(quota,
      h("p", {}, `Clusters: ${used} of ${limit < 0 ? "unlimited" : limit}. Nodes in them: ${st.nodes}.`),
      limit > 0 ? h("meter", { min: 0, max: limit, value: used, high: Math.max(1, limit - 1), "aria-label": "Clusters used of the quota" }) : null);
  } catch (err) {
    quota.replaceChildren(errorBox(err));
  }
  fill(main, h("h1", {}, "Quota and usage"), section("Quota", quota),
    section("Usage over time", h("div", { class: "field inline" }, h("label", { for: "usage-range" }, "Range"), picker), chart, totals));
  await draw();
  return () => {};
}
