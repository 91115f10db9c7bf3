// Tollway's dashboard: reads /v1/dashboard (the ledger's totals) and /v1/budgets every 10 seconds
// and draws them with plain DOM and inline SVG. No library, nothing fetched from elsewhere.
// With an admin token (tollway serve --admin-token-file), open /dashboard#token=THE-TOKEN: the
// fragment never leaves the browser; the token is kept for this tab and sent as a bearer token.
"use strict";

const TOKEN_KEY = "tollway-admin-token";
if (location.hash.startsWith("#token=")) {
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(location.hash.slice(7)));
  history.replaceState(null, "", location.pathname + location.search);
}
const token = sessionStorage.getItem(TOKEN_KEY);
const AUTH = token ? {Authorization: `Bearer ${token}`} : {};

const REFRESH_MS = 10000;
const COLORS = ["#2f6fde", "#12a594", "#e5484d", "#f5a524", "#8e4ec6", "#0d74ce", "#ad5700", "#30a46c", "#d6409f", "#6e56cf"];
const SVG = "http://www.w3.org/2000/svg";

function $(id) { return document.getElementById(id); }

function count(n) {
  if (n === null || n === undefined) return "–";
  for (const [size, suffix] of [[1e9, "B"], [1e6, "M"], [1e3, "K"]]) {
    if (n >= size) return (n / size).toFixed(1).replace(/\.0$/, "") + suffix;
  }
  return String(n);
}

// Dollars from integer micro-dollars, as `tollway report` prints them: cents, or two significant
// digits below a cent ($0.0008), so a small cost never reads $0.00.
function dollars(micros) {
  if (micros > 0 && micros < 10000) return "$" + Number((micros / 1e6).toPrecision(2)).toString();
  const cents = Math.floor((micros + 5000) / 10000);
  return "$" + Math.floor(cents / 100).toLocaleString("en-US") + "." + String(cents % 100).padStart(2, "0");
}

function percent(part, whole) { return whole ? (100 * part / whole).toFixed(1) + "%" : "–"; }

function ms(v) { return v === null || v === undefined ? "–" : String(Math.round(v)); }

function set(id, text, value) {
  const el = $(id);
  el.textContent = text;
  if (value !== undefined) el.dataset.value = String(value);
}

// A table cell; a name (a team's, a model's: a client's free text) is cut to the column's width,
// whole in its title.
function cell(tr, text, value, name) {
  const td = document.createElement("td");
  if (name) {
    const span = document.createElement("span");
    span.className = "name";
    span.textContent = span.title = text;
    td.appendChild(span);
  } else {
    td.textContent = text;
  }
  if (value !== undefined && value !== null) td.dataset.value = String(value);
  tr.appendChild(td);
  return td;
}

function fillTable(id, rows, columns) {
  const body = $(id).tBodies[0];
  body.replaceChildren();
  if (!rows.length) {
    const tr = body.insertRow();
    const td = cell(tr, "nothing in this window");
    td.colSpan = $(id).tHead.rows[0].cells.length;
    td.className = "empty";
    return;
  }
  for (const row of rows) {
    const tr = body.insertRow();
    tr.dataset.group = row.group;
    for (const [text, value, name] of columns(row)) cell(tr, text, value, name);
  }
}

function stacked(svg, slots, series, colors) {
  // Bars per slot, stacked by series; the y axis from 0 to the tallest stack.
  svg.replaceChildren();
  const width = svg.clientWidth || 600, height = svg.clientHeight || 180, pad = 28;
  const names = Object.keys(series).sort();
  const totals = slots.map((_, i) => names.reduce((sum, name) => sum + (series[name][i] || 0), 0));
  const tallest = Math.max(0, ...totals);
  const top = Math.max(1, tallest);
  const w = (width - pad) / Math.max(1, slots.length);
  const axis = document.createElementNS(SVG, "line");
  Object.entries({x1: pad, x2: width, y1: height - 16, y2: height - 16, stroke: "#e3e7ec"}).forEach(([k, v]) => axis.setAttribute(k, v));
  svg.appendChild(axis);
  slots.forEach((slot, i) => {
    let y = height - 16;
    names.forEach((name, j) => {
      const v = series[name][i] || 0;
      if (!v) return;
      const h = (height - 36) * v / top;
      const rect = document.createElementNS(SVG, "rect");
      Object.entries({x: pad + i * w + 1, y: y - h, width: Math.max(1, w - 2), height: h, fill: colors[j % colors.length]}).forEach(([k, val]) => rect.setAttribute(k, val));
      const title = document.createElementNS(SVG, "title");
      title.textContent = `${name} ${new Date(slot * 1000).toISOString().slice(0, 16).replace("T", " ")}: ${v}`;
      rect.appendChild(title);
      svg.appendChild(rect);
      y -= h;
    });
  });
  const label = document.createElementNS(SVG, "text");
  Object.entries({x: 0, y: 12, "font-size": 11, fill: "#5f6b7a"}).forEach(([k, v]) => label.setAttribute(k, v));
  label.textContent = svg.dataset.unit === "usd" ? (tallest ? dollars(tallest) : "$0") : count(tallest);
  svg.appendChild(label);
  [[0, "start"], [slots.length - 1, "end"]].forEach(([i, anchor]) => {
    if (i < 0 || !slots.length) return;
    const t = document.createElementNS(SVG, "text");
    Object.entries({x: anchor === "start" ? pad : width, y: height - 2, "font-size": 11, fill: "#5f6b7a", "text-anchor": anchor}).forEach(([k, v]) => t.setAttribute(k, v));
    t.textContent = new Date(slots[i] * 1000).toISOString().slice(5, 16).replace("T", " ");
    svg.appendChild(t);
  });
}

function legend(id, names) {
  const el = $(id);
  el.replaceChildren();
  names.forEach((name, j) => {
    const span = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = COLORS[j % COLORS.length];
    span.append(swatch, name);
    span.title = name;
    el.appendChild(span);
  });
}

// Errors or cut streams: "–" when unknown (aggregates written before they counted them), "+" when
// some requests' outcome is unknown (at least this many).
function failures(n, r) { return n === null ? "–" : count(n) + (r.unknown_outcome ? "+" : ""); }

// Guardrail triggers: requests, then by guardrail ("3 · pii 2, secrets 1").
function fired(r) {
  const names = Object.entries(r.guardrails).sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
  return count(r.guardrail_triggers) + (names.length ? " · " + names.map(([name, n]) => `${name} ${n}`).join(", ") : "");
}

function draw(data) {
  const t = data.totals;
  const reached = t.requests - t.refused;
  const known = reached - t.unknown_outcome;  // requests whose outcome is counted
  set("source", data.source === "redis" ? "shared aggregates (Redis)" : "request log");
  set("skipped", data.skipped ? ` · ${count(data.skipped)} log lines left out (not a record, or dated ahead)` : "",
      data.skipped || 0);
  // "+": at least this much (some requests' usage or price unknown, or tries abandoned after the
  // provider may have started).
  set("total-cost", dollars(t.cost_usd_micros) + (t.cost_partial ? "+" : ""), t.cost_usd_micros);
  set("total-unpriced", [t.unknown_cost && `${count(t.unknown_cost)} of unknown cost`,
                         t.unknown_usage && `${count(t.unknown_usage)} without usage`,
                         t.abandoned_tries && `${count(t.abandoned_tries)} ${t.abandoned_tries === 1 ? "try" : "tries"} abandoned: cost unknown`]
                        .filter(Boolean).join(" · "));
  set("total-requests", count(t.requests), t.requests);
  set("total-refused", count(t.refused), t.refused);
  // Model lists and token counts: no model call (no tokens, no cost, not in the latencies)
  set("total-lookups", t.lookups ? ` · ${count(t.lookups)} lookups` : "", t.lookups);
  set("total-tokens", count(t.tokens), t.tokens);
  set("total-input", count(t.input_tokens), t.input_tokens);
  set("total-output", count(t.output_tokens), t.output_tokens);
  set("total-cached", count(t.cached_tokens), t.cached_tokens);
  set("total-reasoning", count(t.reasoning_tokens), t.reasoning_tokens);
  set("total-errors", failures(t.errors, t), t.errors ?? "");
  set("total-incomplete", failures(t.incomplete, t), t.incomplete ?? "");
  set("total-unknown-outcome", t.unknown_outcome ? ` · ${count(t.unknown_outcome)} unknown` : "", t.unknown_outcome);
  const failed = t.errors === null ? null : t.errors + t.incomplete;
  set("error-rate", failed === null ? "–" : percent(failed, known), failed !== null && known ? failed / known : "");
  set("total-fallbacks", count(t.fallbacks), t.fallbacks);
  set("fallback-rate", percent(t.fallbacks, reached), reached ? t.fallbacks / reached : "");
  set("latency", `${ms(t.p50_latency_ms)} / ${ms(t.p95_latency_ms)} / ${ms(t.p99_latency_ms)}`,
      [t.p50_latency_ms, t.p95_latency_ms, t.p99_latency_ms].join(","));
  set("total-guardrails", count(t.guardrail_triggers), t.guardrail_triggers);

  // Only what cost something in the window is drawn (and named in the legend): refused names cost nothing.
  const spent = series => Object.fromEntries(Object.entries(series).filter(([, values]) => values.some(Boolean)));
  const byTeam = spent(data.series.cost_by_team), byModel = spent(data.series.cost_by_model);
  $("chart-team").dataset.unit = $("chart-model").dataset.unit = "usd";
  stacked($("chart-team"), data.slots, byTeam, COLORS);
  legend("legend-team", Object.keys(byTeam).sort());
  stacked($("chart-model"), data.slots, byModel, COLORS);
  legend("legend-model", Object.keys(byModel).sort());
  stacked($("chart-tokens"), data.slots, {tokens: data.series.tokens}, ["#12a594"]);
  stacked($("chart-requests"), data.slots,  // stacked in name order: "failed" (red) under "ok" (blue)
          {ok: data.series.requests.map((n, i) => n - data.series.failed[i]), failed: data.series.failed}, ["#b42318", "#2f6fde"]);

  const cost = r => [dollars(r.cost_usd_micros) + (r.cost_partial ? "+" : ""), r.cost_usd_micros];
  fillTable("teams", data.teams, r => [
    [r.group, undefined, true], [count(r.requests), r.requests], [count(r.refused), r.refused],
    [count(r.input_tokens), r.input_tokens], [count(r.output_tokens), r.output_tokens], cost(r),
    [failures(r.errors, r), r.errors], [failures(r.incomplete, r), r.incomplete], [count(r.fallbacks), r.fallbacks],
    [fired(r), r.guardrail_triggers], [ms(r.p95_latency_ms), r.p95_latency_ms]]);
  fillTable("models", data.models, r => [
    [r.group, undefined, true], [count(r.requests), r.requests], [count(r.refused), r.refused],
    [count(r.input_tokens), r.input_tokens], [count(r.output_tokens), r.output_tokens], cost(r),
    [failures(r.errors, r), r.errors], [failures(r.incomplete, r), r.incomplete], [count(r.fallbacks), r.fallbacks],
    [ms(r.p50_latency_ms), r.p50_latency_ms], [ms(r.p95_latency_ms), r.p95_latency_ms],
    [ms(r.p99_latency_ms), r.p99_latency_ms]]);
  fillTable("team-models", data.team_models, r => [
    [r.team, undefined, true], [r.model, undefined, true], [count(r.requests), r.requests],
    [count(r.refused), r.refused], [count(r.tokens), r.tokens], cost(r), [ms(r.avg_latency_ms), r.avg_latency_ms],
    [ms(r.p95_latency_ms), r.p95_latency_ms], [fired(r), r.guardrail_triggers]]);
  fillTable("guardrails", Object.entries(data.guardrails).map(([group, n]) => ({group, n})),
            r => [[r.group], [count(r.n), r.n]]);
}

function drawBudgets(rows) {
  fillTable("budgets", rows.map(r => ({...r, group: `${r.budget}/${r.member}/${r.unit}`})), r => {
    const amount = v => r.unit === "usd" ? dollars(v) : count(v);
    const used = r.limit ? r.spent / r.limit : 0;
    return [[r.budget], [r.member], [amount(r.spent), r.spent], [amount(r.limit), r.limit],
            [r.percent === null ? "–" : r.percent + "%", r.percent], ["bar", used], [r.resets_at.slice(0, 16).replace("T", " ")]];
  });
  for (const tr of $("budgets").tBodies[0].rows) {
    const td = tr.cells[5];
    if (!td || td.textContent !== "bar") continue;
    const used = Number(td.dataset.value);
    const bar = document.createElement("div");
    bar.className = "bar" + (used >= 1 ? " bad" : used >= 0.8 ? " warn" : "");
    const fill = document.createElement("div");
    fill.style.width = Math.min(100, used * 100).toFixed(1) + "%";
    bar.appendChild(fill);
    td.replaceChildren(bar);
  }
}

async function refresh() {
  const hours = $("hours").value;
  try {
    const [answer, budgets] = await Promise.all([
      fetch(`/v1/dashboard?hours=${encodeURIComponent(hours)}`, {cache: "no-store", headers: AUTH}),
      fetch("/v1/budgets", {cache: "no-store", headers: AUTH}),
    ]);
    if (answer.status === 401) throw new Error("the admin endpoint asks for its token: open /dashboard#token=…");
    if (!answer.ok) throw new Error(`/v1/dashboard answered ${answer.status}`);
    const data = await answer.json();
    draw(data);
    drawBudgets(budgets.ok ? (await budgets.json()).budgets : []);
    set("updated", new Date().toISOString().slice(11, 19) + " UTC", Date.now());
    $("status").textContent = "live";
    $("status").className = "";
    document.body.dataset.loaded = String(Number(document.body.dataset.loaded || 0) + 1);
  } catch (error) {
    $("status").textContent = String(error.message || error);
    $("status").className = "error";
  } finally {
    clearTimeout(refresh.timer);
    refresh.timer = setTimeout(refresh, REFRESH_MS);
  }
}

$("hours").addEventListener("change", refresh);
refresh();
