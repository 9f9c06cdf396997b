// The commissioning page: reads the gateway's JSON API every two seconds and draws it.
// No framework and nothing fetched from elsewhere: the site has no internet.
"use strict";

const PAGE = 50;
const state = { tab: "overview", offset: 0, filter: "", selected: null, overview: null, timer: null };

const $ = (sel) => document.querySelector(sel);

function token() { return sessionStorage.getItem("gridgate-token") || ""; }

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells, attrs) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (c instanceof Node) td.appendChild(c); else if (c && typeof c === "object") { td.textContent = c.text; td.className = c.cls || ""; } else td.textContent = c === undefined || c === null ? "" : String(c);
    tr.appendChild(td);
  }
  for (const [k, v] of Object.entries(attrs || {})) tr.setAttribute(k, v);
  return tr;
}

function say(text, isError) {
  const m = $("#message");
  m.textContent = text || "";
  m.className = isError ? "error" : "";
}

function age(ms) {
  if (ms === null || ms === undefined) return "never";
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}

function utc(ms) { return ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) : ""; }

async function api(path, options) {
  const headers = Object.assign({}, (options && options.headers) || {});
  if (token()) headers["Authorization"] = "Bearer " + token();
  const res = await fetch(path, Object.assign({}, options || {}, { headers }));
  let body = null;
  try { body = await res.json(); } catch (_) { body = null; }
  if (res.status === 401) { showLogin(body && body.error); throw new Error("credential needed"); }
  if (!res.ok) throw new Error((body && body.error) || (res.status + " " + res.statusText));
  return body;
}

function showLogin(why) {
  $("#loading").hidden = true;
  $("#login").hidden = false;
  $("#main").hidden = true;
  if (why) say(token() ? "That credential was refused: " + why : why, !!token());
}

function kv(target, pairs) {
  const box = $(target);
  box.replaceChildren();
  for (const [k, v, cls] of pairs) {
    const d = el("div");
    d.appendChild(el("span", k, "muted"));
    d.appendChild(el("span", v, cls));
    box.appendChild(d);
  }
}

// Charts: plain SVG drawn here from the figures the API returns (no library, nothing
// fetched). A chart says in data attributes how much it drew, for the browser test.
const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function hhmm(ms) { return new Date(ms).toISOString().slice(11, 16); }

// An axis label: as many digits as tell the chart's ends apart (span: their distance).
function short(v, span) {
  const a = Math.abs(v);
  if (a >= 1e6 && span >= 1e5) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e4 && span >= 1e3) return (v / 1e3).toFixed(0) + "k";
  const digits = span > 0 ? Math.max(0, Math.min(6, 2 - Math.floor(Math.log10(span)))) : 0;
  return String(+v.toFixed(digits));
}

function span(ms) {
  const s = Math.round(ms / 1000);
  return s < 120 ? s + " s" : Math.round(s / 60) + " min";
}

// series: [{ cls, points: [[t, v or null], ...] }] over one time axis; a null breaks the
// line. opts.marks: times of bad readings, drawn as red ticks; opts.bands: [[t0, t1, from,
// to]] shaded between two values (a DR reduction); opts.spark: a bare sparkline.
function lineChart(series, opts) {
  opts = opts || {};
  const W = opts.spark ? 200 : 400, H = opts.spark ? 40 : 130;
  const L = opts.spark ? 2 : 84, R = 6, T = 8, B = opts.spark ? 2 : 20;
  const ts = [], vs = [];
  for (const s of series) for (const [t, v] of s.points) { ts.push(t); if (v !== null && v !== undefined) vs.push(v); }
  for (const t of opts.marks || []) ts.push(t);
  for (const b of opts.bands || []) { ts.push(b[0], b[1]); vs.push(b[2], b[3]); }
  const root = svg("svg", { viewBox: "0 0 " + W + " " + H, class: opts.spark ? "chart spark" : "chart", role: "img" });
  if (opts.title) root.appendChild(svg("title", {}, opts.title));
  let t0 = Math.min(...ts), t1 = Math.max(...ts);
  let v0 = Math.min(...vs), v1 = Math.max(...vs);
  if (!ts.length) { t0 = 0; t1 = 1; }
  if (t1 === t0) { t0 -= 1000; t1 += 1000; }
  if (!vs.length) { v0 = 0; v1 = 1; }
  if (opts.zero) { v0 = Math.min(v0, 0); v1 = Math.max(v1, 0); }
  if (v1 === v0) { v0 -= 1; v1 += 1; }
  const x = (t) => (L + (t - t0) / (t1 - t0) * (W - L - R)).toFixed(1);
  const y = (v) => (T + (v1 - v) / (v1 - v0) * (H - T - B)).toFixed(1);
  if (!opts.spark) {
    root.appendChild(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
    root.appendChild(svg("text", { x: L - 4, y: T + 9, "text-anchor": "end", class: "label" }, short(v1, v1 - v0)));
    root.appendChild(svg("text", { x: L - 4, y: H - B, "text-anchor": "end", class: "label" }, short(v0, v1 - v0)));
    root.appendChild(svg("text", { x: L, y: H - 4, class: "label" }, hhmm(t0)));
    root.appendChild(svg("text", { x: W - R, y: H - 4, "text-anchor": "end", class: "label" }, hhmm(t1) + " UTC"));
  }
  let bands = 0;
  for (const [a, b, from, to] of opts.bands || []) {
    const top = Math.max(from, to), bottom = Math.min(from, to);
    root.appendChild(svg("rect", { x: x(a), width: Math.max(0.5, x(b) - x(a)), y: y(top), height: Math.max(0.5, y(bottom) - y(top)), class: from >= to ? "band reduction" : "band increase" }));
    bands++;
  }
  let vertices = 0;
  for (const s of series) {
    let run = [];
    const flush = () => {
      if (run.length === 1) root.appendChild(svg("circle", { cx: run[0][0], cy: run[0][1], r: 2.5, class: "dot " + (s.cls || "") }));
      else if (run.length > 1) root.appendChild(svg("polyline", { points: run.map((p) => p.join(",")).join(" "), class: "line " + (s.cls || "") }));
      vertices += run.length;
      run = [];
    };
    for (const [t, v] of s.points) { if (v === null || v === undefined) flush(); else run.push([x(t), y(v)]); }
    flush();
  }
  for (const t of opts.marks || []) root.appendChild(svg("line", { x1: x(t), x2: x(t), y1: H - B - 8, y2: H - B, class: "mark" }));
  root.dataset.vertices = vertices;
  root.dataset.marks = (opts.marks || []).length;
  root.dataset.bands = bands;
  return root;
}

function figure(caption, chart, attrs) {
  const f = el("figure");
  for (const [k, v] of Object.entries(attrs || {})) f.setAttribute(k, v);
  f.appendChild(chart);
  f.appendChild(el("figcaption", caption));
  return f;
}

// Each numeric point's last hour, bad readings marked.
function drawPointCharts(d) {
  const box = $("#point-charts");
  box.replaceChildren();
  for (const p of d.points) {
    const h = p.history || [];
    if (!h.some((s) => s.value !== null || s.bad)) continue;
    const bad = h.filter((s) => s.bad).map((s) => s.ts_ms);
    const chart = lineChart([{ cls: "value", points: h.map((s) => [s.ts_ms, s.value]) }], { marks: bad, title: p.name });
    const over = h.length > 1 ? h[h.length - 1].ts_ms - h[0].ts_ms : 0;
    const caption = p.name.split("/").pop() + (p.unit ? " (" + p.unit + ")" : "") + " · last " + span(over) + (bad.length ? " · " + bad.length + " bad reading(s) marked" : "");
    box.appendChild(figure(caption, chart, { "data-point": p.name, "data-samples": h.length }));
    // A load's meter has the store's samples of the day too: five-minute means.
    if (p.day && p.day.length) {
      const day = lineChart([{ cls: "value", points: p.day }], { title: p.name + ", last day" });
      box.appendChild(figure(p.name.split("/").pop() + (p.unit ? " (" + p.unit + ")" : "") + " · last day, 5-minute means from the store",
        day, { "data-point-day": p.name, "data-samples": p.day.length }));
    }
  }
}

// An event's report: for all loads together and for each, baseline against actual interval
// by interval, the reduction shaded.
function reportCharts(e) {
  const box = el("div", null, "report-charts");
  const one = (name, intervals) => {
    // Each interval's average is a step: flat from its start to its end.
    const steps = (value) => intervals.flatMap((i) => [[i.start_ms, value(i)], [i.end_ms, value(i)]]);
    const chart = lineChart([
      { cls: "baseline", points: steps((i) => i.baseline_w / 1000) },
      { cls: "actual", points: steps((i) => i.complete ? i.actual_w / 1000 : null) },
    ], { zero: true, bands: intervals.filter((i) => i.complete).map((i) => [i.start_ms, i.end_ms, i.baseline_w / 1000, i.actual_w / 1000]), title: name });
    const kwh = intervals.reduce((a, i) => a + i.reduction_w * (i.end_ms - i.start_ms), 0) / 3.6e9;
    box.appendChild(figure(name + " · kW, baseline dashed, actual solid · reduction " + kwh.toFixed(2) + " kWh", chart,
      { "data-report": e.issuer + "/" + e.id, "data-load": name, "data-intervals": intervals.length }));
  };
  one("all loads", e.report.total);
  for (const [load, intervals] of e.report.loads) one(load, intervals);
  return box;
}

// The overview's sparklines: the figures of the last refreshes (ten minutes at most),
// kept by the page since it was opened.
const TREND = 300;
const trend = { at: [], rate: [], lag: [], size: [], lastStored: null, lastAt: null };
function recordTrend(o) {
  const now = Date.now();
  if (trend.lastAt !== null && now > trend.lastAt) {
    trend.at.push(now);
    trend.rate.push(Math.max(0, (o.store.readings_stored - trend.lastStored) * 1000 / (now - trend.lastAt)));
    trend.lag.push(o.uplink ? o.uplink.lag_batches : 0);
    trend.size.push(o.store.bytes / 1048576);
    if (trend.at.length > TREND) for (const k of ["at", "rate", "lag", "size"]) trend[k].shift();
  }
  trend.lastStored = o.store.readings_stored;
  trend.lastAt = now;
}

function drawTrends() {
  const box = $("#trends");
  box.replaceChildren();
  const last = (a) => a.length ? a[a.length - 1] : 0;
  for (const [key, label, fmt] of [["rate", "readings/s", (v) => v.toFixed(0)], ["lag", "uplink lag, batches", (v) => v.toFixed(0)], ["size", "store, MiB", (v) => v.toFixed(1)]]) {
    const points = trend.at.map((t, i) => [t, trend[key][i]]);
    const chart = lineChart([{ cls: "value", points }], { spark: true, zero: true, title: label });
    box.appendChild(figure(label + " " + fmt(last(trend[key])), chart, { "data-trend": key, "data-samples": points.length }));
  }
}

function drawOverview(o) {
  state.overview = o;
  $("#gw-id").textContent = o.gateway.id;
  $("#identity").textContent = "key " + o.gateway.public_key + " · v" + o.gateway.version + " · up " + Math.round(o.gateway.uptime_s / 60) + " min";
  $("#access").textContent = o.access === "admin" ? "admin" : (o.writes_enabled ? "read-only (log in as admin to act)" : "read-only");
  $("#access").dataset.access = o.access;
  recordTrend(o);
  drawTrends();
  kv("#ov-devices", [["in all", o.devices.total], ["online", o.devices.online, "online"], ["offline", o.devices.offline, o.devices.offline ? "offline" : ""],
    ["waiting for a first good reading", o.devices.waiting, o.devices.waiting ? "waiting" : ""]]);
  kv("#ov-store", [["readings stored", o.store.readings_stored], ["next batch", o.store.next_batch], ["open readings", o.store.open_readings],
    ["size", (o.store.bytes / 1048576).toFixed(1) + " of " + (o.store.budget_bytes / 1048576).toFixed(0) + " MiB"],
    ["dropped readings", o.store.dropped_readings, o.store.dropped_readings ? "bad" : ""]]);
  kv("#ov-uplink", o.uplink ? [["broker", o.uplink.broker], ["acknowledged", o.uplink.acknowledged],
    ["lag", o.uplink.lag_batches + " batch(es), " + o.uplink.lag_seconds + " s", o.uplink.lag_batches > 2 ? "bad" : "good"], ["connects", o.uplink.connects]]
    : [["MQTT uplink", "none (gRPC pull only)"]]);
  const ev = Object.entries(o.dr.events).map(([k, v]) => k.toLowerCase() + " " + v).join(", ") || "none";
  kv("#ov-dr", [["loads", o.dr.loads], ["events", ev], ["overridden", o.dr.overrides.join(", ") || "none", o.dr.overrides.length ? "OVERRIDDEN" : ""]]);
  kv("#ov-ledger", o.ledger ? [["role", o.ledger.role], ["pending own entries", o.ledger.pending, o.ledger.pending ? "waiting" : "good"],
    ["certified", Object.entries(o.ledger.certified).map(([k, v]) => k + " " + v).join(", ") || "none"],
    ["shut out", o.ledger.shut_out.join(", ") || "none", o.ledger.shut_out.length ? "bad" : ""],
    ["last decided cut", o.ledger.decided ? o.ledger.decided.height + " at " + new Date(o.ledger.decided.time_ms).toISOString().replace(".000Z", "Z") + " (" + o.ledger.decided.digest + ")" : "none yet"],
    ["settled today", o.ledger.today ? o.ledger.today.events + " event(s), " + o.ledger.today.delivered_kwh.toFixed(3) + " kWh, paid " + o.ledger.today.paid.toFixed(3) + " (statement " + o.ledger.today.statement + ")" : "nothing yet"]]
    : [["ledger", "not configured"]]);
  const tb = $("#buses tbody");
  tb.replaceChildren();
  for (const b of o.buses) {
    const kinds = Object.entries(b.errors_by_kind).map(([k, v]) => k + " " + v).join(", ");
    const scanButton = el("button", "Scan");
    scanButton.hidden = o.access !== "admin";
    scanButton.addEventListener("click", () => scanBus(b.name));
    tb.appendChild(row([b.name, b.protocol, b.link, b.devices, { text: b.online, cls: b.online < b.devices ? "offline" : "online" }, b.polls, b.errors, b.missed_polls, kinds, scanButton], { "data-bus": b.name }));
  }
  $("#test-read").hidden = o.access !== "admin";
  $("#scan-box").hidden = o.access !== "admin";
  $("#login-open").hidden = o.access === "admin" || !o.writes_enabled;
}

function valuesOf(d) {
  return d.points.slice(0, 4).map((p) => (p.name.split("/").pop()) + " " + (p.value === null ? "—" : p.value) + (p.unit ? " " + p.unit : "")).join(", ") + (d.points.length > 4 ? ", …" : "");
}

function drawDevices(page) {
  const tb = $("#devices tbody");
  tb.replaceChildren();
  for (const d of page.items) {
    const tr = row([d.name, d.bus, { text: d.state, cls: d.state }, age(d.last_good_age_ms), d.errors, { text: valuesOf(d), cls: "values" }], { "data-device": d.name });
    tr.addEventListener("click", () => { state.selected = d.name; $("#test-read-result").textContent = ""; refresh(); });
    tb.appendChild(tr);
  }
  const last = Math.min(page.total, page.offset + page.items.length);
  $("#page-info").textContent = (page.total ? page.offset + 1 : 0) + "–" + last + " of " + page.total;
  $("#prev").disabled = page.offset === 0;
  // For the page-load benchmark: when the device list was first drawn, from navigation start.
  if (!performance.getEntriesByName("devices-drawn").length) performance.mark("devices-drawn");
  $("#next").disabled = last >= page.total;
}

function drawDevice(d) {
  $("#device-detail").hidden = false;
  $("#detail-name").textContent = d.name;
  $("#detail-meta").textContent = d.protocol + " on " + d.bus + " · " + d.address + " · " + d.state + " · polls " + d.polls + " · errors " + d.errors;
  const tb = $("#points tbody");
  tb.replaceChildren();
  for (const p of d.points) {
    tb.appendChild(row([p.name, { text: p.value === null ? "—" : p.value, cls: "value" }, p.unit, { text: p.quality || "no reading yet", cls: p.quality === "good" ? "good" : (p.quality ? "bad" : "waiting") },
      p.age_ms === null ? "" : age(p.age_ms), p.source + (p.error ? " · " + p.error : "")], { "data-point": p.name }));
  }
  drawPointCharts(d);
}

function drawDr(v) {
  const lt = $("#loads tbody");
  lt.replaceChildren();
  const admin = state.overview && state.overview.access === "admin";
  for (const l of v.loads) {
    const b = el("button", l.overridden ? "Clear override" : "Override");
    b.hidden = !admin;
    b.addEventListener("click", () => override(l.name, !l.overridden));
    lt.appendChild(row([l.name, l.control, { text: l.overridden ? "yes: DR will not move it" : "no", cls: l.overridden ? "OVERRIDDEN" : "" }, b], { "data-load": l.name }));
  }
  const et = $("#events tbody");
  et.replaceChildren();
  for (const e of v.events) {
    // A latency is the time to the load's acknowledgement: shown for loads that were
    // acknowledged, not for one another event took over.
    const acked = (l) => ["ACKNOWLEDGED", "RESTORED"].includes(l.state) && l.latency_ms;
    const loads = e.loads.map((l) => l.load + " → " + l.target + ": " + l.state.toLowerCase() + (acked(l) ? " in " + l.latency_ms + " ms" : "") + (l.last_error ? " — " + l.last_error : "")).join("; ");
    const state = e.state + (e.cancelled && e.state !== "CANCELLED" ? " (cancelled)" : "");
    const reduction = e.report ? (e.report.total.reduce((a, i) => a + i.reduction_w * (i.end_ms - i.start_ms), 0) / 3.6e9).toFixed(2) + " kWh" : (e.reported ? "" : "not yet reported");
    et.appendChild(row([e.issuer + "/" + e.id, e.program, { text: state, cls: e.state }, utc(e.start_ms), utc(e.end_ms), loads, reduction], { "data-event": e.id }));
    if (e.report) {
      const tr = document.createElement("tr");
      tr.className = "report-row";
      const td = document.createElement("td");
      td.colSpan = 7;
      td.appendChild(reportCharts(e));
      tr.appendChild(td);
      et.appendChild(tr);
    }
  }
}

// The OpenADR VEN under the DR tab: the VTN's state and a line per VTN event (their
// intervals are the events above, under the issuer openadr:<name>).
function drawOpenAdr(v) {
  $("#openadr").hidden = !v.configured;
  if (!v.configured) return;
  const s = v.status;
  const status = !s ? "The VEN has not run yet." :
    "VTN " + s.vtn + " · VEN " + s.ven_name + (s.ven_id ? " (registered)" : " (not registered yet)") +
    " · last answer " + (s.last_ok_ms ? age(Date.now() - s.last_ok_ms) : "never") +
    " · reports " + s.reports_posted + " posted, " + v.waiting + " waiting" +
    (s.notifier && s.notifier.state ? " · notifications: " + s.notifier.state : "") +
    (s.last_error && s.last_error[0] > s.last_ok_ms ? " · error: " + s.last_error[1] : "");
  const p = $("#openadr-status");
  p.textContent = status;
  p.className = s && s.last_error && s.last_error[0] > s.last_ok_ms ? "bad" : "";
  const tb = $("#vtn-events tbody");
  tb.replaceChildren();
  for (const [id, e] of v.events) {
    const taken = e.intervals.filter((i) => i.accepted).length;
    const reported = e.intervals.filter((i) => i.reported).length;
    tb.appendChild(row([(e.name ? e.name + " · " : "") + id, e.program, { text: e.state, cls: e.state === "refused" ? "bad" : "" },
      taken, reported, e.refusal || ""], { "data-vtn-event": id }));
  }
}

// The price path of one interval's discovery: each round's price (line) and the imbalance
// it left (bars, above the axis demand exceeds supply), by round.
function priceChart(iv) {
  const W = 400, H = 150, L = 60, R = 60, T = 10, B = 22;
  const n = iv.prices.length;
  const root = svg("svg", { viewBox: "0 0 " + W + " " + H, class: "chart price-path", role: "img" });
  root.appendChild(svg("title", {}, "price path of " + utc(iv.interval_ms)));
  const p0 = Math.min(...iv.prices), p1 = Math.max(...iv.prices);
  const lo = p0 === p1 ? p0 - 1 : p0, hi = p0 === p1 ? p1 + 1 : p1;
  const dmax = Math.max(1, ...iv.imbalances_wh.map((d) => Math.abs(d)));
  const x = (k) => (L + (n > 1 ? k / (n - 1) : 0.5) * (W - L - R)).toFixed(1);
  const y = (p) => (T + (hi - p) / (hi - lo) * (H - T - B)).toFixed(1);
  const mid = T + (H - T - B) / 2, half = (H - T - B) / 2;
  root.appendChild(svg("line", { x1: L, x2: W - R, y1: mid, y2: mid, class: "axis" }));
  let bars = 0;
  iv.imbalances_wh.forEach((d, k) => {
    const h = Math.abs(d) / dmax * half;
    root.appendChild(svg("rect", { x: (+x(k) - 4).toFixed(1), width: 8, y: (d >= 0 ? mid - h : mid).toFixed(1), height: Math.max(0.5, h).toFixed(1), class: "band " + (d >= 0 ? "increase" : "reduction") }));
    bars++;
  });
  const pts = iv.prices.map((p, k) => x(k) + "," + y(p));
  if (n > 1) root.appendChild(svg("polyline", { points: pts.join(" "), class: "line" }));
  iv.prices.forEach((p, k) => root.appendChild(svg("circle", { cx: x(k), cy: y(p), r: 2.5, class: "dot" })));
  root.appendChild(svg("text", { x: L - 4, y: T + 9, "text-anchor": "end", class: "label" }, hi));
  root.appendChild(svg("text", { x: L - 4, y: H - B, "text-anchor": "end", class: "label" }, lo));
  root.appendChild(svg("text", { x: W - R + 4, y: T + 9, class: "label" }, "+" + short(dmax, dmax) + " Wh"));
  root.appendChild(svg("text", { x: W - R + 4, y: H - B, class: "label" }, "-" + short(dmax, dmax) + " Wh"));
  root.appendChild(svg("text", { x: L, y: H - 4, class: "label" }, "round 1"));
  root.appendChild(svg("text", { x: W - R, y: H - 4, "text-anchor": "end", class: "label" }, "round " + n));
  root.dataset.vertices = n;
  root.dataset.bars = bars;
  return root;
}

function drawMarket(v) {
  $("#market-area").textContent = v.area ? "Area " + v.area + ": prices in milli-units per kWh, energy in Wh (+ bought, − sold)." : "This gateway has no [market] in its config.";
  const charts = $("#market-charts");
  charts.replaceChildren();
  const withPath = v.intervals.filter((i) => i.prices.length > 0);
  const latest = withPath[withPath.length - 1];
  if (latest) {
    const box = el("div", null, "card");
    box.appendChild(el("h3", "Price path, interval " + utc(latest.interval_ms) + (latest.price !== null ? " (cleared at " + latest.price + ")" : " (discovery under way)")));
    box.appendChild(priceChart(latest));
    charts.appendChild(box);
  }
  const t = $("#market-intervals tbody");
  t.replaceChildren();
  const wh = (q) => q === null || q === undefined ? "" : (q > 0 ? "+" : "") + q;
  for (const i of v.intervals.slice().reverse()) {
    const answers = i.answers.map(([r, p, q]) => "r" + r + " @" + p + ": " + wh(q)).join("; ");
    const stop = i.stop ? " (" + i.stop + ")" : "";
    t.appendChild(row([utc(i.interval_ms), i.state + stop, i.price === null ? (i.prices.length ? "asking " + i.prices[i.prices.length - 1] : "") : i.price, i.prices.length, wh(i.matched_wh), answers, wh(i.accepted_wh), wh(i.delivered_wh)], { "data-interval": i.interval_ms }));
  }
}

async function refresh() {
  try {
    const o = await api("/api/overview");
    $("#loading").hidden = true;
    drawOverview(o);
    if (!state.loginOpen || o.access === "admin") { $("#login").hidden = true; state.loginOpen = false; }
    $("#main").hidden = false;
    if (state.tab === "devices") {
      const q = new URLSearchParams({ q: state.filter, offset: state.offset, limit: PAGE });
      drawDevices(await api("/api/devices?" + q));
      if (state.selected) drawDevice(await api("/api/devices/" + encodeURIComponent(state.selected)));
    }
    if (state.tab === "dr") {
      drawDr(await api("/api/dr"));
      drawOpenAdr(await api("/api/openadr"));
    }
    if (state.tab === "market") drawMarket(await api("/api/market"));
    if ($("#message").className === "error" && $("#message").dataset.sticky !== "1") say("");
  } catch (e) {
    if (String(e.message) !== "credential needed") {
      $("#loading").textContent = "The gateway did not answer; trying again every 2 s.";
      say("The gateway did not answer: " + e.message, true);
    }
  }
}

async function testRead() {
  const name = state.selected;
  if (!name) return;
  const out = $("#test-read-result");
  out.textContent = "reading " + name + "…";
  try {
    const r = await api("/api/devices/" + encodeURIComponent(name) + "/read", { method: "POST" });
    out.textContent = "test read of " + r.device + " in " + r.took_ms + " ms:\n" +
      r.readings.map((x) => x.point + " = " + (x.value === undefined ? "—" : x.value) + (x.unit ? " " + x.unit : "") + " [" + x.quality + "]" + (x.error ? " " + x.error : "")).join("\n");
    out.dataset.done = "1";
    refresh();
  } catch (e) {
    out.textContent = "test read refused or failed: " + e.message;
    out.dataset.done = "0";
  }
}

async function scanBus(bus) {
  const out = $("#scan-result");
  out.dataset.done = "";
  out.textContent = "scanning " + bus + "… (a whole Modbus range or a DL/T 645 address search takes minutes)";
  const q = new URLSearchParams({ from: $("#scan-from").value, to: $("#scan-to").value });
  try {
    const r = await api("/api/buses/" + encodeURIComponent(bus) + "/scan?" + q, { method: "POST" });
    out.textContent = (r.found.length ? r.found.join("\n") : "nothing answered") + "\n\n" + r.snippet;
    out.dataset.done = "1";
  } catch (e) {
    out.textContent = "scan refused or failed: " + e.message;
    out.dataset.done = "0";
  }
}

async function override(load, active) {
  let reason = "";
  if (active) {
    reason = window.prompt("Why is " + load + " taken out of DR? (kept with the override)") || "";
    if (!reason.trim()) return;
  }
  try {
    await api("/api/loads/" + encodeURIComponent(load) + "/override", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ active, reason }),
    });
    say("override of " + load + (active ? " set" : " cleared"));
    refresh();
  } catch (e) { say("override refused or failed: " + e.message, true); }
}

function showTab(tab) {
  state.tab = tab;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.tab === tab);
  for (const s of document.querySelectorAll(".tab")) s.hidden = s.id !== "tab-" + tab;
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem("gridgate-token", $("#token").value.trim());
    state.loginOpen = false;
    $("#token").value = "";
    say("");
    refresh();
  });
  $("#login-open").addEventListener("click", () => { state.loginOpen = true; $("#login").hidden = false; $("#token").focus(); });
  $("#logout").addEventListener("click", () => { sessionStorage.removeItem("gridgate-token"); refresh(); });
  for (const a of document.querySelectorAll("nav a")) a.addEventListener("click", (ev) => { ev.preventDefault(); showTab(a.dataset.tab); history.replaceState(null, "", "#" + a.dataset.tab); });
  $("#filter").addEventListener("input", () => { state.filter = $("#filter").value; state.offset = 0; refresh(); });
  $("#prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); refresh(); });
  $("#next").addEventListener("click", () => { state.offset += PAGE; refresh(); });
  $("#test-read").addEventListener("click", testRead);
  const start = (location.hash || "#overview").slice(1);
  showTab(["overview", "devices", "buses", "dr", "market"].includes(start) ? start : "overview");
  state.timer = setInterval(refresh, 2000);
});
