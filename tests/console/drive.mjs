// Drives the web console in headless Chromium (Debian's, through playwright-core) and prints one JSON object.
//   node tests/console/drive.mjs '<json: {base, screenshots, downloads, chromium, template, cluster, users}>'
// tests/console/test_console.py runs it against a LocalStack and checks what it reports. Every step records what
// it saw; a failed step records its error and the run stops there (the JSON still prints, with the screenshots).
import { createRequire } from "node:module";
import { mkdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, "..", "..", "console", "package.json"));
const { chromium } = require("playwright-core");

const args = JSON.parse(process.argv[2]);
const { base, screenshots, downloads, template, cluster, users } = args;
mkdirSync(screenshots, { recursive: true });
mkdirSync(downloads, { recursive: true });
const LONG = args.timeout_ms ?? 150_000;

const out = { steps: [], console: [], shots: [], ok: false };
let phase = "start";

const browser = await chromium.launch({
  executablePath: args.chromium ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
  // launch() gives Chromium a fresh, empty profile directory of its own (it refuses --user-data-dir)
});

async function newPage(who) {
  const context = await browser.newContext({ viewport: { width: 1366, height: 850 }, acceptDownloads: true });
  const page = await context.newPage();
  page.setDefaultTimeout(20_000);
  page.on("console", (msg) => {
    if (msg.type() === "error" || msg.type() === "warning") {
      out.console.push({ who, phase, type: msg.type(), text: msg.text() });
    }
  });
  page.on("pageerror", (err) => out.console.push({ who, phase, type: "pageerror", text: String(err) }));
  page.on("dialog", (d) => void d.accept());
  return page;
}

async function shot(page, name) {
  const unlabelled = await page.evaluate(() => [...document.querySelectorAll("input, select, textarea")]
    .filter((el) => el.labels.length === 0 && !el.getAttribute("aria-label")).map((el) => el.name || el.id));
  out.unlabelled = [...(out.unlabelled ?? []), ...unlabelled.map((n) => `${name}: ${n}`)];
  const file = path.join(screenshots, `${String(out.shots.length + 1).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  out.shots.push(file);
}

async function step(name, fn) {
  phase = name;
  const started = Date.now();
  try {
    const saw = await fn();
    out.steps.push({ name, ok: true, saw: saw ?? null, ms: Date.now() - started });
  } catch (err) {
    out.steps.push({ name, ok: false, error: String(err?.stack ?? err), ms: Date.now() - started });
    throw err;
  }
}

async function login(page, user) {
  await page.goto(`${base}/console/`);
  await page.getByRole("heading", { name: "Log in to Cove" }).waitFor();
  await page.getByLabel("User name").fill(user.name);
  await page.getByLabel("Password", { exact: true }).fill(user.password);
  await page.getByLabel("Project").first().fill(user.project);
  await page.getByRole("button", { name: "Log in", exact: true }).click();
  await page.getByRole("heading", { name: "Clusters", level: 1 }).waitFor();
}

const WRITE_BUTTONS = /^(Create|Delete|Resize|Upgrade|Add node group)/;
async function writeButtons(page) {
  const names = await page.getByRole("button").allInnerTexts();
  return names.filter((n) => WRITE_BUTTONS.test(n.trim()));
}

try {
  const demo = await newPage("demo");

  await step("login page", async () => {
    await demo.goto(`${base}/console/`);
    await demo.getByRole("heading", { name: "Log in to Cove" }).waitFor();
    await demo.getByText(/Keystone: http/).waitFor();
    await shot(demo, "login");
  });

  await step("login", async () => {
    await login(demo, users.demo);
    await demo.evaluate(() => { window.__noReload = true; });
    return { header: await demo.locator("header").innerText() };
  });

  await step("template refused with the API's message by its field", async () => {
    await demo.getByRole("link", { name: "Templates" }).click();
    await demo.getByRole("heading", { name: "Cluster templates", level: 1 }).waitFor();
    await demo.getByLabel("Name").fill(`${template}-bad`);
    await demo.getByLabel("Image").fill("no-such-image");
    await demo.getByRole("button", { name: "Create template" }).click();
    const image = demo.getByLabel("Image");
    await demo.locator('input[name="image_id"][aria-invalid="true"]').waitFor();
    const describedBy = (await image.getAttribute("aria-describedby")).split(" ").pop();
    const message = await demo.locator(`[id="${describedBy}"]`).innerText();
    await shot(demo, "template-error");
    return { message };
  });

  await step("create template", async () => {
    await demo.getByLabel("Name").fill(template);
    await demo.getByLabel("Image").fill("fedora-coreos");
    await demo.getByRole("button", { name: "Create template" }).click();
    await demo.getByRole("row", { name: new RegExp(template + " ") }).first().waitFor();
    await shot(demo, "templates");
  });

  await step("cluster refused with the API's message by its field", async () => {
    await demo.getByRole("link", { name: "Clusters" }).click();
    await demo.getByRole("heading", { name: "New cluster" }).waitFor();
    await demo.getByLabel("Name").fill(cluster);
    await demo.getByLabel("Cluster template").selectOption({ label: `${template} (kubernetes)` });
    await demo.getByLabel("Masters").fill("1");
    await demo.getByLabel("Worker nodes").fill("-1");
    await demo.getByRole("button", { name: "Create cluster" }).click();
    await demo.locator('input[name="node_count"][aria-invalid="true"]').waitFor();
    const id = (await demo.getByLabel("Worker nodes").getAttribute("aria-describedby")).split(" ").pop();
    return { message: await demo.locator(`[id="${id}"]`).innerText() };
  });

  let clusterUrl = null;
  await step("create cluster and watch it complete without a reload", async () => {
    await demo.getByLabel("Worker nodes").fill("1");
    await demo.getByRole("button", { name: "Create cluster" }).click();
    await demo.getByRole("heading", { name: `Cluster ${cluster}` }).waitFor();
    clusterUrl = demo.url();
    const status = demo.locator('dd[data-field="Status"]');
    const seen = new Set([await status.innerText()]);
    const deadline = Date.now() + LONG;
    while (!seen.has("CREATE_COMPLETE")) {
      if (Date.now() > deadline) {
        const api = await demo.evaluate(async (url) => {
          const s = JSON.parse(sessionStorage.getItem("cove.session"));
          const r = await fetch(url, { headers: { "X-Auth-Token": s.token } });
          const b = await r.json();
          return `${b.status} ${b.status_reason}`;
        }, `/v1/clusters/${clusterUrl.split("/").pop()}`);
        const live = await demo.locator("#live-mode").innerText();
        throw new Error(`no CREATE_COMPLETE; saw ${[...seen]}; the API says ${api}; ${live}`);
      }
      const now = await status.innerText();
      if (now.endsWith("FAILED")) throw new Error(`cluster ${now}`);
      seen.add(now);
      await demo.waitForTimeout(250);
    }
    const live = await demo.locator("#live-mode").innerText();
    const noReload = await demo.evaluate(() => window.__noReload === true);
    await shot(demo, "cluster-complete");
    return { seen: [...seen], live, noReload, url: clusterUrl };
  });

  await step("admin sees another project's cluster", async () => {
    const admin = await newPage("admin");
    await login(admin, users.admin);
    await admin.getByRole("link", { name: cluster }).waitFor();
    const row = await admin.getByRole("row", { name: new RegExp(cluster) }).innerText();
    await shot(admin, "admin-clusters");
    await admin.getByRole("link", { name: "Operations" }).click();
    await admin.getByRole("heading", { name: "Operations", level: 1 }).waitFor();
    await admin.getByRole("table", { name: "Consumers of COVE_EVENTS" }).waitFor();
    await admin.getByRole("table", { name: "Services" }).waitFor();
    const services = await admin.getByRole("table", { name: "Services" }).innerText();
    const sections = await admin.getByRole("heading", { level: 2 }).allInnerTexts();
    const dead = await admin.getByRole("region", { name: "Dead letters" }).innerText();
    await shot(admin, "operations");
    await admin.context().close();
    return { row, services, sections, dead };
  });

  await step("reader sees no write buttons", async () => {
    const reader = await newPage("viewer");
    // by keyboard only: the user name has the focus, Tab moves through the fields, Enter submits
    await reader.goto(`${base}/console/`);
    await reader.getByRole("heading", { name: "Log in to Cove" }).waitFor();
    await reader.keyboard.type(users.viewer.name);
    await reader.keyboard.press("Tab");
    await reader.keyboard.type(users.viewer.password);
    await reader.keyboard.press("Tab");
    await reader.keyboard.type(users.viewer.project);
    await reader.keyboard.press("Enter");
    await reader.getByRole("heading", { name: "Clusters", level: 1 }).waitFor();
    await reader.getByRole("link", { name: cluster }).waitFor();
    const onList = await writeButtons(reader);
    await reader.getByRole("link", { name: cluster }).click();
    await reader.getByRole("heading", { name: `Cluster ${cluster}` }).waitFor();
    await reader.locator('dd[data-field="Status"]').waitFor();
    const onCluster = await writeButtons(reader);
    const configButton = await reader.getByRole("button", { name: "Download config" }).count();
    await shot(reader, "reader-cluster");
    await reader.getByRole("link", { name: "Templates" }).click();
    await reader.getByRole("table", { name: "Cluster templates" }).waitFor();
    const onTemplates = await writeButtons(reader);
    const forms = await reader.locator("form").count();
    await reader.context().close();
    return { onList, onCluster, onTemplates, forms, configButton };
  });

  await step("resize", async () => {
    await demo.getByLabel("Node count").fill("2");
    await demo.getByRole("button", { name: "Resize", exact: true }).click();
    const deadline = Date.now() + LONG;
    const seen = new Set();
    for (;;) {
      const status = await demo.locator('dd[data-field="Status"]').innerText();
      const nodes = await demo.locator('dd[data-field="Worker nodes"]').innerText();
      seen.add(status);
      if (status === "UPDATE_COMPLETE" && nodes === "2") break;
      if (status.endsWith("FAILED")) throw new Error(`resize ${status}`);
      if (Date.now() > deadline) throw new Error(`resize did not complete; saw ${[...seen]}`);
      await demo.waitForTimeout(250);
    }
    const groups = await demo.getByRole("table", { name: "Node groups" }).innerText();
    await shot(demo, "cluster-resized");
    return { seen: [...seen], groups };
  });

  await step("download config", async () => {
    const [download] = await Promise.all([
      demo.waitForEvent("download", { timeout: 60_000 }),
      demo.getByRole("button", { name: "Download config" }).click(),
    ]);
    const file = path.join(downloads, download.suggestedFilename());
    await download.saveAs(file);
    await demo.getByText(/^Downloaded /).waitFor();
    return { file, name: download.suggestedFilename() };
  });

  await step("quota and usage", async () => {
    await demo.getByRole("link", { name: "Quota and usage" }).click();
    await demo.getByRole("heading", { name: "Quota and usage", level: 1 }).waitFor();
    await demo.locator("svg.chart").waitFor({ timeout: 30_000 });
    const quota = await demo.getByRole("region", { name: "Quota" }).innerText();
    await shot(demo, "usage");
    return { quota };
  });

  await step("delete cluster", async () => {
    await demo.goto(clusterUrl);
    await demo.getByRole("button", { name: "Delete cluster" }).click();
    await demo.getByRole("heading", { name: "Clusters", level: 1 }).waitFor();
    // The view is drawn before the list's first answer: an empty frame is not "gone", nor is an error in its place.
    const drawn = demo.locator("section[aria-labelledby='s-your-clusters']").locator("table, p.empty");
    await drawn.first().waitFor();
    const deadline = Date.now() + LONG;
    const seen = new Set();
    for (;;) {
      const rows = demo.getByRole("row", { name: new RegExp(cluster) });
      if ((await rows.count()) === 0 && (await drawn.count()) > 0) break;
      seen.add(await rows.first().locator("td").first().innerText().catch(() => ""));
      if (Date.now() > deadline) throw new Error(`cluster still listed; saw ${[...seen]}`);
      await demo.waitForTimeout(250);
    }
    await shot(demo, "cluster-deleted");
    return { seen: [...seen] };
  });

  await step("expired token", async () => {
    await demo.evaluate(() => {
      const s = JSON.parse(sessionStorage.getItem("cove.session"));
      s.token = "gAAAAA-expired-or-revoked";
      sessionStorage.setItem("cove.session", JSON.stringify(s));
    });
    await demo.getByRole("link", { name: "Templates" }).click();
    await demo.getByRole("heading", { name: "Session expired" }).waitFor();
    const message = await demo.locator(".notice").innerText();
    await shot(demo, "expired");
    return { message, hash: new URL(demo.url()).hash };
  });

  out.ok = true;
} catch {
  out.ok = false;
} finally {
  await browser.close();
  process.stdout.write(JSON.stringify(out) + "\n");
}
