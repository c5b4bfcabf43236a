import { api, config, login } from "./api";
import { h } from "./dom";
import { Form } from "./forms";
import * as session from "./session";

export function loginPage(main: HTMLElement, message: string | null, done: () => void): void {
  const heading = message ? "Session expired" : "Log in to Cove";
  const intro = h("p", {}, "Cove uses your OpenStack (Keystone) account. Log in with a password, or paste a token.");
  const where = h("p", { class: "hint" });
  void config().then((c) => {
    where.textContent = `Keystone: ${c.keystone_url}`;
    const domain = password.input("domain") as HTMLInputElement | undefined;
    if (domain && !domain.value) domain.value = c.user_domain;
  }).catch(() => {});
  const finish = async (s: session.Session) => {
    session.save(s);
    try {
      await api("GET", "/v1/clustertemplates?limit=1"); // the API accepts the token
    } catch (err) {
      session.clear();
      throw err;
    }
    done();
  };
  const password = new Form("With a password", [
    { name: "username", label: "User name", required: true, mentions: ["user"] },
    { name: "password", label: "Password", type: "password", required: true },
    { name: "project", label: "Project", required: true, mentions: ["project", "scope"] },
    { name: "domain", label: "Domain", value: "Default", mentions: ["domain"] },
  ], "Log in", async (v) => {
    const domain = { name: v.domain || "Default" };
    await finish(await login({ auth: {
      identity: { methods: ["password"], password: { user: { name: v.username, domain, password: v.password } } },
      scope: { project: { name: v.project, domain } },
    } }));
  });
  const token = new Form("With a token", [
    { name: "token", label: "Keystone token", type: "password", required: true },
    { name: "project", label: "Project", required: true, mentions: ["project", "scope"] },
    { name: "domain", label: "Domain", value: "Default" },
  ], "Log in with token", async (v) => {
    await finish(await login({ auth: {
      identity: { methods: ["token"], token: { id: v.token } },
      scope: { project: { name: v.project, domain: { name: v.domain || "Default" } } },
    } }));
  });
  main.replaceChildren(h("div", { class: "login" },
    h("h1", {}, heading),
    message ? h("p", { class: "notice", role: "alert" }, message) : null,
    intro, where, password.el, h("details", {}, h("summary", {}, "Log in with a token instead"), token.el)));
  (password.input("username") as HTMLInputElement).focus();
}
