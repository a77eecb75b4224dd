// Drives Debian's headless Chromium (never a downloaded browser) through WebRTC relay
// tests for tests/webrtc.rs and tests/nat.rs, over stdio:
//
//   node webrtc.mjs
//   stdout "ready"                      once the page is loaded
//   stdin  {"fn": NAME, "arg": {...}}   -> calls window[NAME](arg) in webrtc.html and prints
//                                          "result {json}" (or "error MESSAGE")
//   stdin  "quit" (or EOF)              -> closes the browser and exits
//
// The page is served by this process on 127.0.0.1 (an ephemeral port). A hard timer ends
// the process if the test that drives it disappears. Extra Chromium flags come from
// TURND_CHROMIUM_ARGS (one per line, so an argument may hold spaces: --host-resolver-rules); HOME decides which NSS database it trusts.
import { chromium } from "playwright-core";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";

const HARD_LIMIT_MS = 240_000;
const here = path.dirname(fileURLToPath(import.meta.url));
const page_html = fs.readFileSync(path.join(here, "webrtc.html"));

setTimeout(() => { console.log("error hard time limit reached"); process.exit(3); }, HARD_LIMIT_MS).unref();

const server = http.createServer((req, res) => {
  if (req.url === "/" || req.url === "/webrtc.html") {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8" });
    res.end(page_html);
  } else {
    res.writeHead(404);
    res.end();
  }
});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const url = `http://127.0.0.1:${server.address().port}/webrtc.html`;

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "turnd-webrtc-"));
const extra = (process.env.TURND_CHROMIUM_ARGS || "").split("\n").filter(Boolean);
let context;

async function main() {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync", ...extra],
  });
  const page = context.pages()[0] ?? await context.newPage();
  page.on("pageerror", (e) => console.error(`pageerror: ${e.message}`));
  page.on("console", (m) => console.error(`console.${m.type()}: ${m.text()}`));
  await page.goto(url, { waitUntil: "load" });
  console.log("ready");

  const lines = readline.createInterface({ input: process.stdin });
  for await (const line of lines) {
    const text = line.trim();
    if (text === "quit") break;
    if (!text) continue;
    try {
      const { fn, arg } = JSON.parse(text);
      const result = await page.evaluate(([f, a]) => window[f](a), [fn, arg ?? {}]);
      console.log("result " + JSON.stringify(result));
    } catch (e) {
      console.log(`error ${String(e.message || e).split("\n")[0]}`);
    }
  }
}

let status = 0;
try {
  await main();
} catch (e) {
  console.log(`error ${String(e.message || e).split("\n")[0]}`);
  status = 1;
}
await context?.close().catch(() => {});
server.close();
fs.rmSync(userDataDir, { recursive: true, force: true });
process.exit(status);
