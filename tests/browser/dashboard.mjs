// Loads turnd's dashboard in Debian's headless Chromium (never a downloaded browser)
// for tests/admin.rs, which drives it over stdio:
//
//   node dashboard.mjs URL
//   stdin  "expect N"        -> wait until the page shows N allocations (and N table
//                               rows when it has the admin token), then print "shown N"
//   stdin  "screenshot PATH" -> save a PNG of the page, then print "saved"
//   stdin  "realm NAME N"    -> choose realm NAME in the realm selector, wait until the
//                               table lists N allocations, all of NAME, then print
//                               "listed NAME N"
//   stdin  "quit" (or EOF)   -> print "report {json}" (page errors, requests that left
//                               the page's origin) and exit
//
// Anything that goes wrong prints "error ..." and exits non-zero. A hard timer ends the
// process if the test that drives it disappears.
import { chromium } from "playwright-core";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";

const HARD_LIMIT_MS = 120_000;
const WAIT_MS = 15_000;
const url = process.argv[2];
const origin = new URL(url).origin;

setTimeout(() => { console.log("error hard time limit reached"); process.exit(3); }, HARD_LIMIT_MS).unref();

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "turnd-chromium-"));
const problems = [];
const foreign = [];
let context;

async function main() {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync"],
    viewport: { width: 1280, height: 1000 },
  });
  const page = context.pages()[0] ?? await context.newPage();
  page.on("pageerror", (e) => problems.push(`pageerror: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });
  page.on("request", (r) => {
    const u = new URL(r.url());
    const sameHost = u.host === new URL(origin).host && ["http:", "ws:"].includes(u.protocol);
    if (!sameHost && u.protocol !== "data:") foreign.push(r.url());
  });
  await page.goto(url, { waitUntil: "load" });

  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    const [command, arg] = line.trim().split(/\s+/, 2);
    if (command === "expect") {
      const n = String(Number(arg));
      await page.waitForFunction((want) => {
        const shown = document.getElementById("allocations").textContent.trim();
        const table = document.getElementById("alloc-table");
        const rows = document.querySelectorAll("#alloc-rows tr").length;
        const admin = document.getElementById("mode").textContent === "admin";
        return shown === want && (!admin || (want === "0" ? table.hidden : rows === Number(want)));
      }, n, { timeout: WAIT_MS });
      console.log(`shown ${n}`);
    } else if (command === "realm") {
      const [, name, count] = line.trim().split(/\s+/);
      await page.waitForFunction((want) =>
        Array.from(document.getElementById("realm").options).some((o) => o.value === want), name,
        { timeout: WAIT_MS });
      await page.selectOption("#realm", name);
      await page.waitForFunction(([want, n]) => {
        const rows = Array.from(document.querySelectorAll("#alloc-rows tr"));
        return rows.length === n && rows.every((r) => r.children[2].textContent === want);
      }, [name, Number(count)], { timeout: WAIT_MS });
      console.log(`listed ${name} ${count}`);
    } else if (command === "screenshot") {
      await page.screenshot({ path: arg, fullPage: true });
      console.log("saved");
    } else if (command === "quit") {
      break;
    } else {
      throw new Error(`unknown command ${line}`);
    }
  }
  console.log("report " + JSON.stringify({ problems, foreign }));
}

try {
  await main();
  await context?.close();
  fs.rmSync(userDataDir, { recursive: true, force: true });
} catch (e) {
  console.log(`error ${String(e.message || e).split("\n")[0]}`);
  await context?.close().catch(() => {});
  fs.rmSync(userDataDir, { recursive: true, force: true });
  process.exit(1);
}
