import { api, optional } from "./api";
import { fmt } from "./chart";
import { badge, debounce, errorBox, section, table } from "./common";
import { h, when } from "./dom";
import * as live from "./live";

export async function adminPage(main: HTMLElement): Promise<() => void> {
  const clusters = h("div");
  const queue = h("div");
  const services = h("div");
  const consumers = h("div");
  const dlq = h("div");
  const accounting = h("div");
  const refresh = async () => {
    const [cl, cp, ms, stats, usage] = await Promise.allSettled([
      api("GET", "/v1/clusters/detail"),
      optional("/v1/controlplane"),
      api("GET", "/v1/mservices"),
      api("GET", "/v1/stats"),
      optional("/v1/usage?group_by=project"),
    ]);
    if (cl.status === "fulfilled") {
      clusters.replaceChildren(table("Clusters of every project", ["Name", "Project", "Status", "Masters", "Nodes", "Created"],
        (cl.value.clusters as any[]).map((c) => [h("a", { href: `#/clusters/${c.uuid}` }, c.name ?? c.uuid), c.project_id ?? "–",
          badge(c.status), String(c.master_count), String(c.node_count), when(c.created_at)])));
    } else clusters.replaceChildren(errorBox(cl.reason));
    if (cp.status === "fulfilled" && cp.value) {
      const v = cp.value;
      queue.replaceChildren(table("Build queue", ["Cluster", "Project", "Status", "Waiting", "Reason"],
        (v.build_queue as any[]).map((c) => [c.name ?? c.uuid, c.project_id, badge(c.status), c.waiting ? "waiting" : "building", c.status_reason ?? ""]),
        "empty: nothing is waiting or being built."));
      consumers.replaceChildren(table("Consumers of COVE_EVENTS", ["Consumer", "Not yet delivered", "Unacknowledged", "Redelivered", "Delivered up to"],
        (v.consumers as any[]).map((c) => [c.name, String(c.pending), String(c.ack_pending), String(c.redelivered), String(c.delivered_seq ?? "–")])));
      const d = v.dead_letters;
      dlq.replaceChildren(
        h("p", {}, `${d.total} dead-lettered message${d.total === 1 ? "" : "s"}` +
          (Object.keys(d.by_consumer).length ? `: ${Object.entries(d.by_consumer).map(([k, n]) => `${k} ${n}`).join(", ")}` : ".")),
        table("Newest dead letters", ["Id", "Consumer", "Subject", "Reason", "Deliveries", "Time"],
          (d.recent as any[]).map((m) => [String(m.id), m.consumer ?? "–", m.subject ?? "–", m.reason ?? "–", m.deliveries ?? "–", when(m.time)]),
          "none."));
      const beats = new Map((v.services as any[]).map((x) => [x.service, x]));
      if (ms.status === "fulfilled") {
        services.replaceChildren(table("Services", ["Binary", "Host", "State", "Reports", "Last heartbeat", "Age (s)"],
          (ms.value.mservices as any[]).map((m) => {
            const beat = beats.get(m.binary.replace(/^cove-/, ""));
            return [m.binary, m.host, badge(m.state), String(m.report_count), when(m.updated_at), beat ? String(beat.age_seconds) : "–"];
          })));
      } else services.replaceChildren(errorBox(ms.reason));
    } else {
      const why = cp.status === "rejected" ? errorBox(cp.reason) : h("p", { class: "notice" }, "This API has no /v1/controlplane.");
      queue.replaceChildren(why);
      if (ms.status === "fulfilled") {
        services.replaceChildren(table("Services", ["Binary", "Host", "State", "Reports", "Last heartbeat"],
          (ms.value.mservices as any[]).map((m) => [m.binary, m.host, badge(m.state), String(m.report_count), when(m.updated_at)])));
      }
    }
    const rows: (Node | string)[][] = [];
    if (stats.status === "fulfilled") rows.push(["Clusters (every project)", String(stats.value.clusters)], ["Nodes (every project)", String(stats.value.nodes)]);
    if (usage.status === "fulfilled" && usage.value) {
      for (const r of usage.value.usage as any[]) {
        rows.push([`Project ${r.project_id}`, `${fmt(r.vcpu_hours)} vCPU-h, ${fmt(r.ram_gb_hours)} RAM-GB-h, ${fmt(r.server_hours)} server-h, ${fmt(r.cluster_hours)} cluster-h`]);
      }
    } else if (usage.status === "fulfilled") rows.push(["Usage", "this API has no /v1/usage"]);
    accounting.replaceChildren(table("Accounting totals (all time)", ["What", "Total"], rows));
  };
  main.replaceChildren(h("h1", {}, "Operations"),
    section("Every project's clusters", clusters), section("Build queue", queue), section("Services and heartbeats", services),
    section("Consumer lag", consumers), section("Dead letters", dlq), section("Accounting", accounting));
  await refresh();
  const again = debounce(() => void refresh(), 1500);
  const timer = window.setInterval(again, 5000); // heartbeats and lag change without events
  const stop = live.listen(again);
  return () => {
    window.clearInterval(timer);
    stop();
  };
}
