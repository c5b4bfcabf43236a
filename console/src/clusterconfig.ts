// `openstack coe cluster config` in the browser, the way python-magnumclient builds it: the cluster's CA
// (GET /v1/certificates/<cluster>), a key and CSR made here, the CSR signed by the API (POST /v1/certificates),
// then a kubeconfig (Kubernetes) or a shell script that writes ca.pem, cert.pem and key.pem and sets DOCKER_*
// (Swarm), as a download. The certificate's subject is decided by the API from the caller's identity.
import { api } from "./api";
import { makeCsr } from "./csr";

export interface ConfigFile {
  filename: string;
  text: string;
}

const b64 = (text: string) => btoa(text);

export function kubeconfig(clusterName: string, server: string, ca: string, cert: string, key: string, user: string): string {
  const q = (v: string) => JSON.stringify(v); // a JSON string is a YAML string
  return [
    "apiVersion: v1",
    "clusters:",
    "- cluster:",
    `    certificate-authority-data: ${b64(ca)}`,
    `    server: ${q(server)}`,
    `  name: ${q(clusterName)}`,
    "contexts:",
    "- context:",
    `    cluster: ${q(clusterName)}`,
    `    user: ${q(user)}`,
    "  name: default",
    "current-context: default",
    "kind: Config",
    "preferences: {}",
    "users:",
    `- name: ${q(user)}`,
    "  user:",
    `    client-certificate-data: ${b64(cert)}`,
    `    client-key-data: ${b64(key)}`,
    "",
  ].join("\n");
}

export function dockerEnv(clusterName: string, server: string, ca: string, cert: string, key: string): string {
  const dir = `$HOME/.cove/${clusterName.replace(/[^A-Za-z0-9._-]/g, "_")}`;
  const file = (n: string, body: string) => `cat > "${dir}/${n}" <<'PEM'\n${body.trim()}\nPEM\n`;
  return [
    "#!/bin/sh",
    `# Docker client configuration for cluster ${clusterName}: run it with '. ./${clusterName}.env.sh'`,
    `mkdir -p "${dir}" && chmod 700 "${dir}"`,
    file("ca.pem", ca) + file("cert.pem", cert) + file("key.pem", key) + `chmod 600 "${dir}/key.pem"`,
    `export DOCKER_HOST=${server}`,
    `export DOCKER_CERT_PATH="${dir}"`,
    "export DOCKER_TLS_VERIFY=True",
    "",
  ].join("\n");
}

export async function clusterConfig(cluster: any, coe: string, user: string): Promise<ConfigFile> {
  if (!cluster.api_address) throw new Error("The cluster has no API address yet.");
  const ca = (await api("GET", `/v1/certificates/${cluster.uuid}`)).pem as string;
  const { keyPem, csrPem } = await makeCsr([["CN", user], ["O", "system:masters"]]);
  const signed = await api("POST", "/v1/certificates", { cluster_uuid: cluster.uuid, csr: csrPem });
  const cert = signed.pem as string;
  if (coe === "kubernetes") {
    return { filename: "config", text: kubeconfig(cluster.name, cluster.api_address, ca, cert, keyPem, "admin") };
  }
  return { filename: `${cluster.name}.env.sh`, text: dockerEnv(cluster.name, cluster.api_address, ca, cert, keyPem) };
}

export function download(file: ConfigFile): void {
  const url = URL.createObjectURL(new Blob([file.text], { type: "application/octet-stream" }));
  const a = document.createElement("a");
  a.href = url;
  a.download = file.filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
