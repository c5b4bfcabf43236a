// Cove's web console: routes on the URL's fragment (#/clusters, #/clusters/<uuid>, #/templates, #/usage, #/admin,
// #/login); every page reads the public API with the user's token and re-reads on live changes.
import "./style.css";
import { whenExpired } from "./api";
import { adminPage } from "./admin";
import { clusterPage, clustersPage } from "./clusters";
import { errorBox } from "./common";
import { h } from "./dom";
import * as live from "./live";
import { loginPage } from "./login";
import * as session from "./session";
import { templatesPage } from "./templates";
import { usagePage } from "./usage";

const main = document.getElementById("main")!;
const top = document.getElementById("top")!;
let cleanup: () => void = () => {};
let loginMessage: string | null = null;
let generation = 0;

const liveLabel = h("span", { class: "live", id: "live-mode" });
live.onMode((m) => {
  liveLabel.textContent = m === "events" ? "Live: events" : m === "polling" ? "Live: polling" : "";
});

whenExpired((message) => {
  live.stop();
  session.clear();
  loginMessage = message;
  if (location.hash !== "#/login") location.hash = "#/login";
  else void render();
});

function header(route: string): void {
  const s = session.load();
  if (!s) {
    top.replaceChildren(h("span", { class: "brand" }, "Cove"));
    return;
  }
  const link = (href: string, label: string) =>
    h("a", { href, "aria-current": route === href.slice(1) || (href === "#/clusters" && route.startsWith("/clusters")) ? "page" : null }, label);
  top.replaceChildren(
    h("span", { class: "brand" }, "Cove"),
    h("nav", { "aria-label": "Main" }, h("ul", {},
      h("li", {}, link("#/clusters", "Clusters")), h("li", {}, link("#/templates", "Templates")),
      h("li", {}, link("#/usage", "Quota and usage")),
      session.isAdmin(s) ? h("li", {}, link("#/admin", "Operations")) : null)),
    liveLabel,
    h("span", { class: "who" }, `${s.user} in ${s.project} (${s.roles.join(", ")})`),
    h("button", { type: "button", class: "quiet", onclick: () => {
      live.stop();
      session.clear();
      loginMessage = null;
      location.hash = "#/login";
    } }, "Log out"));
}

async function render(): Promise<void> {
  const mine = ++generation;
  cleanup();
  cleanup = () => {};
  const route = location.hash.replace(/^#/, "") || "/clusters";
  const s = session.load();
  if (!s || route === "/login") {
    if (s && route === "/login") {
      location.hash = "#/clusters";
      return;
    }
    live.stop();
    header(route);
    document.title = "Log in · Cove";
    loginPage(main, loginMessage, () => {
      loginMessage = null;
      live.start();
      location.hash = "#/clusters";
    });
    return;
  }
  if (live.mode === "off") live.start();
  header(route);
  main.replaceChildren(h("p", { class: "hint" }, "Loading…"));
  let stop: () => void = () => {};
  try {
    const m = route.match(/^\/clusters\/([^/]+)$/);
    if (m) {
      document.title = "Cluster · Cove";
      stop = await clusterPage(main, decodeURIComponent(m[1]));
    } else if (route === "/templates") {
      document.title = "Templates · Cove";
      stop = await templatesPage(main);
    } else if (route === "/usage") {
      document.title = "Quota and usage · Cove";
      stop = await usagePage(main);
    } else if (route === "/admin" && session.isAdmin(s)) {
      document.title = "Operations · Cove";
      stop = await adminPage(main);
    } else {
      document.title = "Clusters · Cove";
      stop = await clustersPage(main);
    }
  } catch (err) {
    if (mine === generation && session.load()) main.replaceChildren(errorBox(err));
  }
  if (mine !== generation) stop();
  else {
    cleanup = stop;
    main.focus({ preventScroll: true });
  }
}

window.addEventListener("hashchange", () => void render());
void render();
