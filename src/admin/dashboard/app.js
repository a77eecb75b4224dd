// turnd dashboard: connects to /ws, draws live stats, lists allocations.
// No build step and nothing external: the page's CSP allows only this origin.
// Every value from the server goes into the page through textContent, never HTML:
// usernames come from TURN clients and are not to be trusted.
"use strict";

const HISTORY = 120; // chart points (one per snapshot)
const PAGE = 50; // allocations per page
const points = [];
let socket = null;
let admin = false;
let page = 0;
let nextReq = 1;
let listTimer = null;
let backoff = 1000;

const $ = (id) => document.getElementById(id);

// The admin token comes from the URL (#token=... is never sent to the server;
// ?access_token=... is needed when the page itself is protected), then it is
// kept for this tab only and removed from the address bar.
function takeToken() {
  const hash = new URLSearchParams(location.hash.slice(1));
  const query = new URLSearchParams(location.search);
  const token = hash.get("token") || query.get("access_token");
  if (token) {
    sessionStorage.setItem("turnd-token", token);
    window.history.replaceState(null, "", location.pathname);
  }
  return sessionStorage.getItem("turnd-token");
}
const token = takeToken();
// The realm (tenant) shown: "" for all. Chosen in the header once the server has
// several; the /ws session then carries ?realm= and sees that realm only.
let realm = new URLSearchParams(location.search).get("realm") || "";

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const params = new URLSearchParams();
  if (token) params.set("access_token", token);
  if (realm) params.set("realm", realm);
  const query = params.toString() ? "?" + params.toString() : "";
  socket = new WebSocket(`${scheme}//${location.host}/ws${query}`);
  socket.onopen = () => { backoff = 1000; setStatus(true); };
  socket.onclose = () => {
    setStatus(false);
    clearInterval(listTimer);
    setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 10000);
  };
  socket.onmessage = (e) => {
    let m;
    try { m = JSON.parse(e.data); } catch { return; }
    handle(m);
  };
}

function send(message) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
}

function handle(m) {
  switch (m.type) {
    case "hello":
      $("version").textContent = m.server;
      admin = m.admin;
      $("mode").textContent = admin ? "admin" : "read-only";
      send({ op: "subscribe", topics: ["stats", "allocations", "auth", "policy"], interval_ms: 1000 });
      if (admin) {
        listAllocations();
        listTimer = setInterval(listAllocations, 2000);
      } else {
        $("alloc-note").textContent =
          "Listing and dropping allocations needs the admin token: open this page as /#token=YOUR_TOKEN.";
      }
      break;
    case "stats": onStats(m); break;
    case "event": onEvent(m); break;
    case "allocations": onAllocations(m); break;
    case "dropped": listAllocations(); break;
    case "error": addEvent("error", `${m.code}: ${m.message}`, "denied"); break;
  }
}

function setStatus(up) {
  const s = $("status");
  s.textContent = up ? "live" : "disconnected";
  s.className = "status " + (up ? "up" : "down");
}

function onStats(s) {
  showRealms(s);
  $("allocations").textContent = s.allocations;
  $("allocations").dataset.value = s.allocations;
  $("permissions").textContent = s.permissions;
  $("channels").textContent = s.channels;
  $("bps-in").textContent = bits(s.rates.client_to_peer_bps);
  $("bps-out").textContent = bits(s.rates.peer_to_client_bps);
  $("rps").textContent = rate(s.rates.requests_per_sec);
  $("eps").textContent = rate(s.rates.errors_per_sec);
  $("ports").textContent = `${s.ports_in_use} / ${s.ports_available}`;
  points.push({ in: s.rates.client_to_peer_bps, out: s.rates.peer_to_client_bps, alloc: s.allocations });
  if (points.length > HISTORY) points.shift();
  draw();
}

function bits(bps) {
  const units = ["bit/s", "kbit/s", "Mbit/s", "Gbit/s"];
  let i = 0;
  while (bps >= 1000 && i < units.length - 1) { bps /= 1000; i++; }
  return `${bps.toFixed(bps < 10 && i > 0 ? 1 : 0)} ${units[i]}`;
}

function rate(perSec) {
  return `${perSec < 10 ? perSec.toFixed(1) : Math.round(perSec)} /s`;
}

function bytes(n) {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function duration(secs) {
  if (secs < 60) return `${secs}s`;
  if (secs < 3600) return `${Math.floor(secs / 60)}m ${secs % 60}s`;
  return `${Math.floor(secs / 3600)}h ${Math.floor((secs % 3600) / 60)}m`;
}

function draw() {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();
  const left = 80, right = 50, top = 10, bottom = 20;
  const w = width - left - right, h = height - top - bottom;
  const maxBits = niceMax(Math.max(1000, ...points.map((p) => Math.max(p.in, p.out))));
  const maxAlloc = niceMax(Math.max(1, ...points.map((p) => p.alloc)));
  g.font = "11px system-ui, sans-serif";
  g.strokeStyle = color("--line");
  g.fillStyle = color("--muted");
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = top + h - (h * i) / 4;
    g.beginPath(); g.moveTo(left, y); g.lineTo(left + w, y); g.stroke();
    g.textAlign = "right"; g.fillText(bits((maxBits * i) / 4), left - 6, y + 4);
    g.textAlign = "left"; g.fillText(String(Math.round((maxAlloc * i) / 4)), left + w + 6, y + 4);
  }
  g.textAlign = "left"; g.fillText(`-${HISTORY}s`, left, height - 4);
  g.textAlign = "right"; g.fillText("now", left + w, height - 4);
  const x = (i) => left + w - ((points.length - 1 - i) * w) / (HISTORY - 1);
  const path = (key, max) => {
    g.beginPath();
    points.forEach((p, i) => {
      const y = top + h - (p[key] / max) * h;
      i ? g.lineTo(x(i), y) : g.moveTo(x(i), y);
    });
  };
  // "in" is a filled area and "out" a line on top, so both show when they are equal
  // (as they are for an echoing peer).
  if (points.length > 1) {
    path("in", maxBits);
    g.lineTo(x(points.length - 1), top + h);
    g.lineTo(x(0), top + h);
    g.closePath();
    g.globalAlpha = 0.25;
    g.fillStyle = color("--in");
    g.fill();
    g.globalAlpha = 1;
  }
  for (const [key, max, name, width] of [["alloc", maxAlloc, "--alloc", 1.5], ["in", maxBits, "--in", 1.5],
    ["out", maxBits, "--out", 2]]) {
    g.strokeStyle = color(name);
    g.lineWidth = width;
    path(key, max);
    g.stroke();
  }
}

// The next 1, 2 or 5 times a power of ten at or above v: readable axis labels.
function niceMax(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  return [1, 2, 5, 10].map((m) => m * p).find((c) => c >= v);
}

// The realm selector lists the configured realms from the stats message.
function showRealms(s) {
  const select = $("realm");
  const names = (s.realms || []).map((r) => r.realm);
  select.hidden = names.length < 2;
  const have = Array.from(select.options).slice(1).map((o) => o.value);
  if (have.join("\n") === names.join("\n")) return;
  const options = names.map((name) => {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = name;
    return option;
  });
  select.replaceChildren(select.options[0], ...options);
  select.value = realm;
}

function chooseRealm() {
  realm = $("realm").value;
  page = 0;
  $("events").replaceChildren();
  socket.close(); // reconnects with the new filter
}

function listAllocations() {
  send({ op: "list_allocations", offset: page * PAGE, limit: PAGE, req: nextReq++ });
}

function onAllocations(m) {
  const pages = Math.max(1, Math.ceil(m.total / PAGE));
  if (page >= pages) { page = pages - 1; listAllocations(); return; }
  $("alloc-total").textContent = `${m.total} in all`;
  $("alloc-note").textContent = m.total ? "" : "No allocations.";
  $("alloc-table").hidden = m.total === 0;
  $("pager").hidden = pages < 2;
  $("page").textContent = `page ${page + 1} of ${pages}`;
  $("prev").disabled = page === 0;
  $("next").disabled = page + 1 >= pages;
  const rows = m.allocations.map((a) => {
    const tr = document.createElement("tr");
    const cells = [a.id, a.user, a.realm, a.client, a.relay, a.transport, duration(a.age_secs), duration(a.expires_in_secs),
      a.permissions, a.channels, bytes(a.bytes_to_peer), bytes(a.bytes_to_client)];
    for (const value of cells) {
      const td = document.createElement("td");
      td.textContent = String(value);
      tr.appendChild(td);
    }
    const td = document.createElement("td");
    const button = document.createElement("button");
    button.className = "drop";
    button.type = "button";
    button.textContent = "drop";
    button.onclick = () => send({ op: "drop_allocation", id: a.id, req: nextReq++ });
    td.appendChild(button);
    tr.appendChild(td);
    return tr;
  });
  $("alloc-rows").replaceChildren(...rows);
}

function onEvent(e) {
  const who = e.user ? `${e.user} from ${e.client} on ${e.relay}` : "";
  switch (e.event) {
    case "allocation.created": addEvent(e.event, `#${e.id} ${who}, ${e.lifetime_secs}s`, "created"); break;
    case "allocation.refreshed": addEvent(e.event, `#${e.id} ${who}, ${e.lifetime_secs}s`, ""); break;
    case "allocation.deleted":
    case "allocation.expired":
      addEvent(e.event, `#${e.id} ${who} (${e.reason}) after ${Math.round(e.duration_secs)}s, ` +
        `${bytes(e.bytes.client_to_peer)} in, ${bytes(e.bytes.peer_to_client)} out`, "ended");
      break;
    case "auth.failed": addEvent(e.event, `${e.client}: ${e.reason}`, "denied"); break;
    case "policy.denied": addEvent(e.event, `#${e.id} to ${e.peer}`, "denied"); break;
    case "suppressed": addEvent(`${e.topic} suppressed`, `${e.count} more this second`, "denied"); break;
  }
  if (admin && e.topic === "allocations") listAllocations();
}

function addEvent(kind, text, cls) {
  const li = document.createElement("li");
  const time = document.createElement("span");
  time.className = "muted";
  time.textContent = new Date().toLocaleTimeString() + " ";
  const k = document.createElement("span");
  k.className = "kind " + cls;
  k.textContent = kind;
  li.append(time, k, document.createTextNode(" " + text));
  const list = $("events");
  list.prepend(li);
  while (list.children.length > 100) list.lastChild.remove();
}

$("prev").onclick = () => { page = Math.max(0, page - 1); listAllocations(); };
$("next").onclick = () => { page++; listAllocations(); };
$("realm").onchange = chooseRealm;
window.addEventListener("resize", draw);
connect();
