import { api, ApiError } from "./api";
import { clusterConfig, download } from "./clusterconfig";
import { badge, debounce, errorBox, section, table } from "./common";
import { announce, fill, h, when } from "./dom";
import { Form } from "./forms";
import * as live from "./live";
import * as session from "./session";

async function templateOptions(): Promise<[string, string][]> {
  const body = await api("GET", "/v1/clustertemplates");
  return (body.clustertemplates as any[]).map((t) => [t.uuid, `${t.name ?? t.uuid} (${t.coe})`]);
}

export async function clustersPage(main: HTMLElement): Promise<() => void> {
  const s = session.load();
  const admin = session.isAdmin(s);
  const list = h("div");
  let names = new Map<string, string>();
  const refresh = async () => {
    try {
      const [body, templates] = await Promise.all([api("GET", "/v1/clusters/detail"), api("GET", "/v1/clustertemplates")]);
      names = new Map((templates.clustertemplates as any[]).map((t) => [t.uuid, t.name ?? t.uuid]));
      const rows = (body.clusters as any[]).map((c) => [
        h("a", { href: `#/clusters/${c.uuid}` }, c.name ?? c.uuid), badge(c.status), c.health_status ?? "–",
        String(c.master_count ?? "–"), String(c.node_count ?? "–"), names.get(c.cluster_template_id) ?? c.cluster_template_id,
        ...(admin ? [c.project_id ?? "–"] : []), c.status_reason ?? "", when(c.created_at),
      ]);
      list.replaceChildren(table("Clusters", ["Name", "Status", "Health", "Masters", "Nodes", "Template",
        ...(admin ? ["Project"] : []), "Reason", "Created"], rows, "none yet."));
    } catch (err) {
      list.replaceChildren(errorBox(err));
    }
  };
  let form: Form | null = null;
  if (session.canWrite(s)) {
    form = new Form("Create a cluster", [
      { name: "name", label: "Name", required: true },
      { name: "cluster_template_id", label: "Cluster template", type: "select", options: await templateOptions(),
        required: true, mentions: ["clustertemplate", "cluster template", "template"] },
      { name: "master_count", label: "Masters", type: "number", value: 1, min: 1 },
      { name: "node_count", label: "Worker nodes", type: "number", value: 1, min: 0 },
      { name: "keypair", label: "Key pair", mentions: ["keypair"] },
      { name: "flavor_id", label: "Node flavor (template's if empty)", mentions: ["flavor"] },
      { name: "master_flavor_id", label: "Master flavor (template's if empty)", mentions: ["master flavor"] },
      { name: "create_timeout", label: "Create timeout (minutes)", type: "number", min: 0 },
    ], "Create cluster", async (v) => {
      const created = await api("POST", "/v1/clusters", v);
      announce(`Cluster ${v.name} accepted`);
      location.hash = `#/clusters/${created.uuid}`;
    });
  }
  fill(main, h("h1", {}, "Clusters"), section("Your clusters", list), form ? section("New cluster", form.el) : null);
  await refresh();
  return live.listen(debounce(() => void refresh()));
}

export async function clusterPage(main: HTMLElement, ident: string): Promise<() => void> {
  const s = session.load();
  const write = session.canWrite(s);
  const heading = h("h1", {}, "Cluster");
  const facts = h("div");
  const groups = h("div");
  const actions = h("div", { class: "cluster-actions" });
  const forms = h("div", { class: "grid" });
  let cluster: any = null;
  let coe = "kubernetes";
  let gone = false;
  let open = true; // false once the page is left: a re-read already scheduled does nothing
  const templates = await api("GET", "/v1/clustertemplates");
  const templateList = templates.clustertemplates as any[];

  const refresh = async () => {
    if (gone || !open) return;
    try {
      cluster = await api("GET", `/v1/clusters/${ident}`);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        gone = true;
        facts.replaceChildren(h("p", { class: "notice", role: "status" }, "This cluster has been deleted."));
        groups.replaceChildren();
        actions.replaceChildren(h("a", { href: "#/clusters" }, "Back to clusters"));
        forms.replaceChildren();
        return;
      }
      facts.replaceChildren(errorBox(err));
      return;
    }
    const tmpl = templateList.find((t) => t.uuid === cluster.cluster_template_id);
    coe = tmpl?.coe ?? coe;
    heading.textContent = `Cluster ${cluster.name}`;
    const rows: [string, Node | string][] = [
      ["Status", badge(cluster.status)], ["Status reason", cluster.status_reason ?? "–"],
      ["Health", cluster.health_status ?? "–"], ["UUID", cluster.uuid],
      ["Template", tmpl ? `${tmpl.name} (${tmpl.coe})` : cluster.cluster_template_id],
      ["Masters", String(cluster.master_count)], ["Worker nodes", String(cluster.node_count)],
      ["API address", cluster.api_address ?? "–"], ["COE version", cluster.coe_version ?? "–"],
      ["Master addresses", (cluster.master_addresses ?? []).join(", ") || "–"],
      ["Node addresses", (cluster.node_addresses ?? []).join(", ") || "–"],
      ["Key pair", cluster.keypair ?? "–"], ["Project", cluster.project_id ?? "–"],
      ["Created", when(cluster.created_at)], ["Updated", when(cluster.updated_at)],
    ];
    facts.replaceChildren(h("dl", { class: "facts" }, ...rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", { "data-field": k }, v)])));
    try {
      const ng = await api("GET", `/v1/clusters/${ident}/nodegroups`);
      groups.replaceChildren(table("Node groups", ["Name", "Role", "Nodes", "Min", "Max", "Flavor", "Status", ""],
        (ng.nodegroups as any[]).map((g) => [g.name, g.role, String(g.node_count), String(g.min_node_count ?? "–"),
          String(g.max_node_count ?? "–"), g.flavor_id ?? "–", badge(g.status),
          write && !g.is_default ? h("button", { type: "button", class: "danger small", "aria-label": `Delete node group ${g.name}`,
            onclick: async (ev: Event) => {
              if (!confirm(`Delete node group ${g.name}?`)) return;
              try {
                await api("DELETE", `/v1/clusters/${ident}/nodegroups/${g.uuid}`);
                await refresh();
              } catch (err) {
                (ev.target as HTMLElement).after(errorBox(err));
              }
            } }, "Delete") : ""])));
      const workers = (ng.nodegroups as any[]).filter((g) => g.role !== "master").map((g) => [g.name, g.name] as [string, string]);
      const select = resize?.input("nodegroup") as HTMLSelectElement | undefined;
      if (select && select.options.length !== workers.length) {
        select.replaceChildren(...workers.map(([v, l]) => h("option", { value: v }, l)));
      }
    } catch (err) {
      groups.replaceChildren(errorBox(err));
    }
  };

  const configButton = h("button", { type: "button", class: "primary" }, "Download config");
  const configStatus = h("p", { role: "status", class: "hint" });
  configButton.addEventListener("click", async () => {
    configButton.disabled = true;
    configStatus.textContent = "Making a key and asking the API to sign its certificate…";
    try {
      const file = await clusterConfig(cluster, coe, s?.user ?? "admin");
      download(file);
      configStatus.textContent = `Downloaded ${file.filename}: ${coe === "kubernetes" ? `use it with KUBECONFIG=${file.filename} kubectl …` : `source it with . ./${file.filename}`}`;
    } catch (err) {
      configStatus.textContent = "";
      configStatus.append(errorBox(err));
    } finally {
      configButton.disabled = false;
    }
  });
  actions.append(configButton);

  let resize: Form | null = null;
  if (write) {
    const del = h("button", { type: "button", class: "danger" }, "Delete cluster");
    const delError = h("div");
    del.addEventListener("click", async () => {
      if (!confirm(`Delete cluster ${cluster?.name}? Its servers and volumes are deleted.`)) return;
      delError.replaceChildren();
      try {
        await api("DELETE", `/v1/clusters/${ident}`);
        announce(`Cluster ${cluster?.name} is being deleted`);
        open = false;
        location.hash = "#/clusters"; // the list shows it deleting, then gone
      } catch (err) {
        delError.replaceChildren(errorBox(err));
      }
    });
    actions.append(del, delError);
    resize = new Form("Resize", [
      { name: "node_count", label: "Node count", type: "number", min: 0, required: true },
      { name: "nodegroup", label: "Node group", type: "select", options: [["default-worker", "default-worker"]], mentions: ["nodegroup"] },
    ], "Resize", async (v) => {
      await api("POST", `/v1/clusters/${ident}/actions/resize`, v);
      announce("Resize accepted");
      await refresh();
    });
    const upgrade = new Form("Upgrade", [
      { name: "cluster_template", label: "New cluster template", type: "select", required: true,
        options: templateList.map((t) => [t.uuid, `${t.name} (${t.labels?.kube_tag ?? t.coe})`]), mentions: ["template"] },
      { name: "max_batch_size", label: "Nodes at a time", type: "number", min: 1, value: 1 },
    ], "Upgrade", async (v) => {
      await api("POST", `/v1/clusters/${ident}/actions/upgrade`, v);
      announce("Upgrade accepted");
      await refresh();
    });
    const ngCreate = new Form("Add a node group", [
      { name: "name", label: "Name", required: true },
      { name: "node_count", label: "Nodes", type: "number", min: 0, value: 1 },
      { name: "flavor_id", label: "Flavor (the cluster's if empty)", mentions: ["flavor"] },
      { name: "role", label: "Role", value: "worker" },
    ], "Add node group", async (v) => {
      await api("POST", `/v1/clusters/${ident}/nodegroups`, v);
      announce(`Node group ${v.name} accepted`);
      await refresh();
    });
    forms.append(resize.el, upgrade.el, ngCreate.el);
  }
  fill(main, h("p", {}, h("a", { href: "#/clusters" }, "← All clusters")), heading,
    section("Details", facts, actions, configStatus), section("Node groups", groups), write ? section("Change", forms) : null);
  await refresh();
  const stop = live.listen(debounce(() => void refresh(), 300));
  return () => {
    open = false;
    stop();
  };
}
