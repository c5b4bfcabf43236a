import { api } from "./api";
import { debounce, errorBox, section, table } from "./common";
import { announce, fill, h } from "./dom";
import { Form } from "./forms";
import * as live from "./live";
import * as session from "./session";

export const COES: [string, string][] = [["kubernetes", "Kubernetes"], ["swarm-mode", "Docker Swarm mode"], ["mesos", "Mesos"]];

export async function templatesPage(main: HTMLElement): Promise<() => void> {
  const s = session.load();
  const list = h("div", { "aria-live": "polite" });
  const refresh = async () => {
    try {
      const body = await api("GET", "/v1/clustertemplates/detail");
      const rows = (body.clustertemplates as any[]).map((t) => [
        t.name ?? t.uuid, t.coe, t.image_id, t.flavor_id ?? "–", t.master_flavor_id ?? "–",
        t.network_driver ?? "–", t.public ? "yes" : "no",
        session.canWrite(s) ? h("button", { type: "button", class: "danger small", "aria-label": `Delete template ${t.name}`,
          onclick: async (ev: Event) => {
            if (!confirm(`Delete cluster template ${t.name}?`)) return;
            try {
              await api("DELETE", `/v1/clustertemplates/${t.uuid}`);
              announce(`Template ${t.name} deleted`);
              await refresh();
            } catch (err) {
              (ev.target as HTMLElement).after(errorBox(err));
            }
          } }, "Delete") : "",
      ]);
      list.replaceChildren(table("Cluster templates", ["Name", "COE", "Image", "Flavor", "Master flavor", "Network driver", "Public", ""], rows,
        "none yet."));
    } catch (err) {
      list.replaceChildren(errorBox(err));
    }
  };
  let form: Form | null = null;
  if (session.canWrite(s)) {
    form = new Form("Create a cluster template", [
      { name: "name", label: "Name", required: true },
      { name: "coe", label: "Container orchestration engine", type: "select", options: COES, value: "kubernetes", mentions: ["coe"] },
      { name: "image_id", label: "Image", required: true, value: "fedora-coreos", mentions: ["image"] },
      { name: "external_network_id", label: "External network", value: "public", mentions: ["external network", "network public"] },
      { name: "flavor_id", label: "Node flavor", value: "m1.small", mentions: ["flavor"] },
      { name: "master_flavor_id", label: "Master flavor", value: "m1.medium", mentions: ["master flavor"] },
      { name: "keypair_id", label: "Key pair", mentions: ["keypair"] },
      { name: "network_driver", label: "Network driver", hint: "flannel or calico for Kubernetes; docker for Swarm" },
      { name: "docker_volume_size", label: "Docker volume size (GB)", type: "number", min: 1 },
      { name: "master_lb_enabled", label: "Load balancer in front of the masters", type: "checkbox" },
      { name: "public", label: "Public (every project may use it)", type: "checkbox" },
    ], "Create template", async (v) => {
      if (!v.master_lb_enabled) delete v.master_lb_enabled;
      if (!v.public) delete v.public;
      const created = await api("POST", "/v1/clustertemplates", v);
      announce(`Template ${created.name} created`);
      (form!.input("name") as HTMLInputElement).value = "";
      await refresh();
    });
  }
  fill(main, h("h1", {}, "Cluster templates"), section("Templates", list), form ? section("New template", form.el) : null);
  await refresh();
  return live.listen(debounce(() => void refresh(), 1000));
}
