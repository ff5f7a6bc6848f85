/* bookfeed live page: reads the /v1 API and WS /v1/live from the browser; no build step (uPlot is vendored).
   Per symbol: price with the 30 s and 1 min averages, spread, the current book's depth, gaps marked, and health.
   Each card's data-* attributes count what its charts received (the e2e test in tests/e2e reads them). */
"use strict";

(() => {
  const HISTORY_S = 300;          // seconds of live points kept on the time charts
  const BACKFILL_S = HISTORY_S;   // seconds of /v1/metrics read when a card opens
  const MAX_CARDS = 6;            // symbols shown at once (every symbol is listed above the cards)
  const STALE_S = 15;             // a symbol whose newest book is older than this is stale
  const DEPTH_POLL_MS = 1000;
  const QUIET_MS = 5000;          // no live point for this long: read the stored books instead (pollQuiet)
  const SLOW_POLL_MS = 10000;     // averages, gaps, symbols, health
  const COLORS = { price: "#58a6ff", avg30: "#d29922", avg60: "#bc8cff", spread: "#39c5cf" };

  // BOOKFEED_API_TOKEN, when the API has one: `/?access_token=...` or `/#access_token=...` (kept for this tab).
  const params = new URLSearchParams(location.search);
  const given = params.get("access_token") || new URLSearchParams(location.hash.slice(1)).get("access_token");
  if (given) sessionStorage.setItem("bookfeed-token", given);
  const token = given || sessionStorage.getItem("bookfeed-token");

  const cards = new Map();         // symbol -> card state
  let symbols = [];                // [{symbol, count}] from /v1/symbols
  let selected = (params.get("symbols") || "").split(",").map((s) => s.trim().toUpperCase()).filter(Boolean);
  let ws = null;
  let wsBackoff = 500;
  window.bookfeedLive = { cards };  // for a console session: each card's points, averages and gaps

  // ---- helpers ------------------------------------------------------------------------------------------------

  function toSec(t) {
    if (t == null) return null;
    // RFC 3339 with microseconds (the API's): Date.parse keeps milliseconds only, so the fraction is added apart.
    const m = /^(.*T\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:?\d\d)?$/.exec(t);
    if (!m) return Date.parse(t) / 1e3;
    return Date.parse(m[1] + (m[3] || "Z")) / 1e3 + (m[2] ? parseFloat("0" + m[2]) : 0);
  }
  const num = (v) => (v == null || v === "" ? null : Number(v));
  const items = (j) => j.items || [];  // every /v1 list is {..., items: [...]}
  const pick = (o, ...keys) => { for (const k of keys) if (o[k] != null) return o[k]; return null; };
  const fmtPrice = (p) => String(Number(Number(p).toPrecision(10)));
  const iso = (s) => new Date(s * 1000).toISOString().replace(/\.\d+Z$/, "Z");

  function withToken(path) {
    return token ? path + (path.includes("?") ? "&" : "?") + "access_token=" + encodeURIComponent(token) : path;
  }

  async function api(path) {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    const r = await fetch(path, { headers, cache: "no-store" });
    if (!r.ok) {
      const err = new Error(path + ": HTTP " + r.status);
      err.status = r.status;
      throw err;
    }
    return r.json();
  }

  function setPill(id, text, st) {
    const el = document.getElementById(id);
    el.textContent = text;
    el.dataset.state = st;
  }

  function showMessage(text) {
    const el = document.getElementById("message");
    el.hidden = !text;
    el.textContent = text || "";
  }

  // ---- charts -------------------------------------------------------------------------------------------------

  function gapBands(card) {
    // Shade every gap interval inside the visible time range (drawn under the series).
    return (u) => {
      const [x0, x1] = [u.scales.x.min, u.scales.x.max];
      const ctx = u.ctx;
      ctx.save();
      for (const g of card.gaps) {
        const a = Math.max(g.start, x0);
        const b = Math.min(g.end == null ? x1 : g.end, x1);
        if (b < a) continue;
        const l = u.valToPos(a, "x", true);
        const r = u.valToPos(b, "x", true);
        // An instant (a feed started or stopped) is a line; an interval a band.
        ctx.fillStyle = r - l < 3 ? "rgba(210, 153, 34, 0.8)" : "rgba(210, 153, 34, 0.2)";
        ctx.fillRect(l, u.bbox.top, Math.max(r - l, 2 * devicePixelRatio), u.bbox.height);
      }
      ctx.restore();
    };
  }

  function size(el, height) {
    return { width: Math.max(el.clientWidth, 200), height };
  }

  const axisStyle = { stroke: "#8a96a3", grid: { stroke: "#2a323c", width: 1 }, ticks: { stroke: "#2a323c" } };
  const utcTicks = (u, splits) => splits.map((v) => new Date(v * 1000).toISOString().slice(11, 19));

  function timeChart(el, card, title, series) {
    const stepped = uPlot.paths.stepped({ align: 1 });
    return new uPlot(
      {
        ...size(el, 220),
        title,
        scales: { x: { time: true } },
        axes: [{ ...axisStyle, values: utcTicks, space: 70 }, { ...axisStyle, size: 86 }],
        series: [
          { value: (u, v) => (v == null ? "–" : new Date(v * 1000).toISOString().slice(11, 23) + " UTC") },
          ...series.map((s) => ({
            label: s.label,
            stroke: s.color,
            width: s.width || 1.5,
            spanGaps: true,
            paths: s.stepped ? stepped : undefined,
            points: { show: false },
          })),
        ],
        hooks: { drawClear: [gapBands(card)] },
        legend: { live: false },
      },
      [[], ...series.map(() => [])],
      el,
    );
  }

  function depthChart(el) {
    const stepped = uPlot.paths.stepped({ align: 1 });
    return new uPlot(
      {
        ...size(el, 220),
        title: "current book (cumulative quantity)",
        scales: { x: { time: false } },
        axes: [{ ...axisStyle, space: 90 }, { ...axisStyle, size: 60 }],
        series: [
          { label: "price" },
          { label: "bids", stroke: "#3fb950", fill: "rgba(63,185,80,0.2)", paths: stepped, points: { show: false } },
          { label: "asks", stroke: "#f85149", fill: "rgba(248,81,73,0.2)", paths: stepped, points: { show: false } },
        ],
        legend: { live: false },
      },
      [[], [], []],
      el,
    );
  }

  // ---- cards --------------------------------------------------------------------------------------------------

  function openCard(symbol) {
    const node = document.getElementById("card-template").content.firstElementChild.cloneNode(true);
    node.dataset.symbol = symbol;
    node.querySelector(".symbol").textContent = symbol;
    document.getElementById("cards").appendChild(node);
    const card = {
      symbol, node, live: [], seen: new Set(), avg30: [], avg60: [], gaps: [], livePoints: 0, polledPoints: 0,
      lastAt: null, lastLiveAt: null, polling: false, dirty: true,
    };
    card.priceChart = timeChart(node.querySelector(".chart-price"), card, "price (bidVWAP + askVWAP) / 2", [
      { label: "price", color: COLORS.price },
      { label: "30 s avg", color: COLORS.avg30, stepped: true, width: 2 },
      { label: "1 min avg", color: COLORS.avg60, stepped: true, width: 2 },
    ]);
    card.spreadChart = timeChart(node.querySelector(".chart-spread"), card, "spread (best ask − best bid)", [
      { label: "spread", color: COLORS.spread },
    ]);
    card.depth = depthChart(node.querySelector(".chart-depth"));
    cards.set(symbol, card);
    backfill(card);
    refreshSlow(card);
    return card;
  }

  function closeCard(symbol) {
    const card = cards.get(symbol);
    if (!card) return;
    card.priceChart.destroy();
    card.spreadChart.destroy();
    card.depth.destroy();
    card.node.remove();
    cards.delete(symbol);
  }

  // A point per stored book, once: the backfill, the socket and the fallback poll may each bring the same book.
  function addPoint(card, m) {
    const t = toSec(m.received_at);
    if (t == null || Number.isNaN(t)) return false;
    const key = m.received_at + "/" + m.last_update_id;
    if (card.seen.has(key)) return false;
    card.seen.add(key);
    const { price, spread } = m;
    card.live.push({ t, key, price: num(price), spread: num(spread) });
    if (card.live.length > 1 && t < card.live[card.live.length - 2].t) card.live.sort((a, b) => a.t - b.t);
    if (card.lastAt == null || t >= card.lastAt) {
      card.lastAt = t;
      card.node.querySelector(".price").textContent = price == null ? "– (one-sided book)" : fmtPrice(price);
      card.node.querySelector(".spread").textContent = spread == null ? "–" : String(spread);
    }
    card.dirty = true;
    return true;
  }

  function onLive(m) {
    const card = cards.get(m.symbol);
    if (!card) return;
    addPoint(card, m);
    card.livePoints += 1;
    card.lastLiveAt = performance.now();
    card.node.dataset.livePoints = String(card.livePoints);
  }

  // Should the socket bring nothing for a while (an API without live push, a dropped subscription), the card reads
  // the books stored since its newest point instead, so the charts never freeze while books are stored.
  async function pollQuiet(card) {
    const quiet = card.lastLiveAt == null || performance.now() - card.lastLiveAt > QUIET_MS;
    if (!quiet || card.polling || card.lastAt == null) return;
    card.polling = true;
    try {
      const now = Date.now() / 1e3;
      const q = `/v1/metrics?symbol=${encodeURIComponent(card.symbol)}&start=${iso(Math.floor(card.lastAt))}&end=${iso(now + 5)}`;
      for (const m of items(await api(q))) if (addPoint(card, m)) card.polledPoints += 1;
      card.node.dataset.polledPoints = String(card.polledPoints);
    } catch (e) {
      console.warn("poll", card.symbol, e);
    } finally {
      card.polling = false;
    }
  }

  function drawTimeCharts(card) {
    const now = Date.now() / 1e3;
    const from = now - HISTORY_S;
    while (card.live.length && card.live[0].t < from) card.seen.delete(card.live.shift().key);
    const x = card.live.map((p) => p.t);
    const price = [x, card.live.map((p) => p.price)];
    // The averages are steps over their windows: a point at each window's start, one at the last window's end.
    const steps = (rows) => {
      const r = rows.filter((w) => w.end >= from);
      if (!r.length) return [[], []];
      return [[...r.map((w) => w.start), r[r.length - 1].end], [...r.map((w) => w.avg), r[r.length - 1].avg]];
    };
    const a30 = steps(card.avg30);
    const a60 = steps(card.avg60);
    const joined = uPlot.join([price, a30, a60]);
    // From the oldest point shown (at most HISTORY_S ago, at least 30 s) to now.
    const lo = Math.min(Math.max(from, Math.min(x[0] ?? now, a30[0][0] ?? now, a60[0][0] ?? now)), now - 30);
    card.priceChart.setData(joined, false);
    card.priceChart.setScale("x", { min: lo, max: now });
    card.spreadChart.setData([x, card.live.map((p) => p.spread)], false);
    card.spreadChart.setScale("x", { min: lo, max: now });
    card.node.dataset.chartPoints = String(x.length);
  }

  function drawHead(card) {
    // Books stored per second, by their receive times over the last 10 s (a backfill counts where it belongs).
    const now = Date.now() / 1e3;
    let n = 0;
    for (let i = card.live.length - 1; i >= 0 && card.live[i].t > now - 10; i--) n++;
    card.node.querySelector(".rate").textContent = (n / 10).toFixed(1);
    const age = card.lastAt == null ? null : now - card.lastAt;
    card.node.querySelector(".age").textContent = age == null ? "–" : age < 1 ? "<1 s ago" : age.toFixed(0) + " s ago";
    card.node.dataset.stale = String(age == null || age > STALE_S);
  }

  function redraw() {
    for (const card of cards.values()) {
      if (card.dirty || card.live.length) drawTimeCharts(card);
      card.dirty = false;
      drawHead(card);
    }
    feedHealth();
  }

  // ---- data ---------------------------------------------------------------------------------------------------

  async function backfill(card) {
    const now = Date.now() / 1e3;
    try {
      const q = `/v1/metrics?symbol=${encodeURIComponent(card.symbol)}&start=${iso(now - BACKFILL_S)}&end=${iso(now + 5)}`;
      for (const m of items(await api(q))) addPoint(card, m);
    } catch (e) {
      console.warn("backfill", card.symbol, e);  // the live points still arrive
    }
  }

  async function refreshDepth(card) {
    let book;
    try {
      book = await api(`/v1/books/latest?symbol=${encodeURIComponent(card.symbol)}`);
    } catch (e) {
      return;
    }
    const bids = (book.bids || []).map(([p, q]) => [Number(p), Number(q)]).sort((a, b) => b[0] - a[0]);
    const asks = (book.asks || []).map(([p, q]) => [Number(p), Number(q)]).sort((a, b) => a[0] - b[0]);
    // Cumulative quantity away from the touch on each side; x ascending as uPlot needs.
    let cum = 0;
    const bidSide = bids.map(([p, q]) => [p, (cum += q)]).reverse();
    cum = 0;
    const askSide = asks.map(([p, q]) => [p, (cum += q)]);
    const joined = uPlot.join([
      [bidSide.map((b) => b[0]), bidSide.map((b) => b[1])],
      [askSide.map((a) => a[0]), askSide.map((a) => a[1])],
    ]);
    card.depth.setData(joined);
    card.node.dataset.depthLevels = String(bids.length + asks.length);
    const title = card.depth.root.querySelector(".u-title");
    if (title) title.textContent = `book of ${book.received_at.slice(11, 23)} UTC: ${bids.length} bids, ${asks.length} asks`;
  }

  async function refreshAverages(card, window) {
    const now = Date.now() / 1e3;
    try {
      const q = `/v1/averages?symbol=${encodeURIComponent(card.symbol)}&window=${window}&start=${iso(now - HISTORY_S - 60)}&end=${iso(now)}`;
      const rows = items(await api(q)).map((w) => {
        return { start: toSec(w.window_start), end: toSec(w.window_end), avg: num(w.avg_price), complete: w.complete };
      });
      rows.sort((a, b) => a.start - b.start);
      card["avg" + window] = rows;
      card.node.dataset["avg" + window] = String(rows.length);
      const last = rows[rows.length - 1];
      card.node.querySelector(".avg" + window).textContent = last
        ? `${fmtPrice(last.avg)}${last.complete === false ? " (incomplete)" : ""}`
        : "–";
      card.dirty = true;
    } catch (e) {
      console.warn("averages", card.symbol, e);
    }
  }

  async function refreshGaps(card) {
    const now = Date.now() / 1e3;
    try {
      const q = `/v1/gaps?symbol=${encodeURIComponent(card.symbol)}&start=${iso(now - HISTORY_S - 60)}&end=${iso(now)}`;
      card.gaps = items(await api(q)).map((g) => ({
        start: toSec(g.start_at), end: toSec(g.end_at), reason: g.reason || "", stream: g.stream || "",
      }));
      card.node.dataset.gaps = String(card.gaps.length);
      const ul = card.node.querySelector(".gaps");
      ul.replaceChildren(
        ...card.gaps.slice(-4).map((g) => {
          const li = document.createElement("li");
          const lasted = g.end == null ? "open" : (g.end - g.start).toFixed(1) + " s";
          li.textContent = `gap ${iso(g.start)} (${lasted}) ${g.stream}: ${g.reason}`;
          return li;
        }),
      );
      card.dirty = true;
    } catch (e) {
      console.warn("gaps", card.symbol, e);
    }
  }

  function refreshSlow(card) {
    refreshAverages(card, 30);
    refreshAverages(card, 60);
    refreshGaps(card);
    refreshDepth(card);
  }

  async function refreshSymbols() {
    try {
      symbols = items(await api("/v1/symbols")).map((s) => ({ symbol: s.symbol, count: Number(s.books) || 0 }));
    } catch (e) {
      showMessage(e.status === 401 || e.status === 403
        ? "The API wants its token: open this page as /?access_token=<BOOKFEED_API_TOKEN>."
        : "The API does not answer (" + e.message + "); retrying.");
      return;
    }
    showMessage(symbols.length ? "" : "No books stored yet: the cards appear with the first books.");
    if (!selected.length && symbols.length) {
      selected = [...symbols].sort((a, b) => b.count - a.count).slice(0, 3).map((s) => s.symbol).sort();
    }
    renderNav();
    syncCards();
  }

  function renderNav() {
    const nav = document.getElementById("symbols");
    const shown = [...symbols].sort((a, b) => b.count - a.count).slice(0, 60);
    nav.replaceChildren(
      ...shown.map((s) => {
        const label = document.createElement("label");
        const box = document.createElement("input");
        box.type = "checkbox";
        box.checked = selected.includes(s.symbol);
        label.className = box.checked ? "on" : "";
        box.addEventListener("change", () => {
          selected = box.checked
            ? [...selected, s.symbol].slice(-MAX_CARDS)
            : selected.filter((x) => x !== s.symbol);
          renderNav();
          syncCards();
        });
        label.append(box, s.symbol);
        return label;
      }),
    );
    if (symbols.length > shown.length) {
      const more = document.createElement("span");
      more.className = "more";
      more.textContent = `… ${symbols.length - shown.length} more (add ?symbols=A,B to the URL)`;
      nav.append(more);
    }
  }

  function syncCards() {
    const want = selected.slice(0, MAX_CARDS);
    for (const s of [...cards.keys()]) if (!want.includes(s)) closeCard(s);
    for (const s of want) if (!cards.has(s)) openCard(s);
    connect();
  }

  // ---- health -------------------------------------------------------------------------------------------------

  function feedHealth() {
    const now = Date.now() / 1e3;
    const ages = [...cards.values()].map((c) => (c.lastAt == null ? Infinity : now - c.lastAt));
    if (!ages.length) return setPill("feed-state", "feed: no symbol shown", "unknown");
    const worst = Math.max(...ages);
    const stale = ages.filter((a) => a > STALE_S).length;
    if (!Number.isFinite(worst)) return setPill("feed-state", "feed: waiting for books", "warn");
    setPill(
      "feed-state",
      stale ? `feed: ${stale} symbol(s) silent > ${STALE_S} s` : `feed: live (newest book ${worst.toFixed(0)} s old)`,
      stale ? "bad" : "ok",
    );
    if (ws && ws.readyState === 1) {
      const quiet = [...cards.values()].filter((c) => c.lastLiveAt == null || performance.now() - c.lastLiveAt > QUIET_MS);
      if (quiet.length) setPill("ws-state", `live: connected, ${quiet.length} quiet (reading stored books)`, "warn");
      else setPill("ws-state", "live: connected", "ok");
    }
    let open = 0;
    for (const c of cards.values()) open += c.gaps.filter((g) => g.end == null || g.end > now - 60).length;
    setPill("gap-state", `gaps: ${open} in the last minute`, open ? "warn" : "ok");
  }

  // Queue health comes from GET /v1/health when this API has one (found in /openapi.json, so no 404 is probed), in
  // the shape of `bookfeed status --json`: {state, problems, queue_depth, oldest_batch_age_s, feeds, workers_alive}
  // (or {queues: {ingest: n, metrics: n}}). Without it the pill says so; feed health then comes from the books alone.
  let healthPath;
  async function refreshHealth() {
    if (healthPath === undefined) {
      try {
        const paths = Object.keys((await api("/openapi.json")).paths || {});
        healthPath = ["/v1/health", "/v1/status"].find((p) => paths.includes(p)) || null;
      } catch (e) {
        return;  // asked again next time
      }
    }
    if (healthPath === null) return setPill("queue-state", "queue: not exposed by this API", "unknown");
    try {
      const h = await api(healthPath);
      const q = h.queues && typeof h.queues === "object" ? h.queues : {};
      const n = pick(h, "queue_depth") ?? Object.values(q).reduce((a, b) => a + (Number(b) || 0), 0);
      const oldest = pick(h, "oldest_batch_age_s");
      const parts = [`queue: ${n} task(s)`];
      if (oldest != null) parts.push(`oldest ${Number(oldest).toFixed(0)} s`);
      if (h.workers_alive != null) parts.push(`${h.workers_alive} worker(s)`);
      if (h.feeds != null) parts.push(`${h.feeds} feed(s)`);
      const st = { healthy: "ok", degraded: "warn", down: "bad" }[h.state] || (n > 1000 ? "warn" : "ok");
      setPill("queue-state", parts.join(", "), st);
      document.getElementById("queue-state").title = (h.problems || []).join("\n");
    } catch (e) {
      setPill("queue-state", "queue: unknown (" + e.message + ")", "warn");
    }
  }

  // ---- the live socket ----------------------------------------------------------------------------------------

  function connect() {
    const want = [...cards.keys()].sort().join(",");
    if (ws && ws.bookfeedSymbols === want && ws.readyState <= 1) return;
    if (ws) {
      ws.onclose = null;
      ws.close();
    }
    if (!want) return;
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const sock = new WebSocket(withToken(`${proto}//${location.host}/v1/live?symbols=${want}`));
    sock.bookfeedSymbols = want;
    ws = sock;
    setPill("ws-state", "live: connecting", "warn");
    sock.onopen = () => {
      wsBackoff = 500;
      setPill("ws-state", "live: connected", "ok");
    };
    sock.onmessage = (ev) => {
      let m;
      try {
        m = JSON.parse(ev.data);
      } catch (e) {
        return;
      }
      if (!m.subscribed) onLive(m);  // the first message says what the socket is subscribed to; then one per book
    };
    sock.onclose = () => {
      if (ws !== sock) return;
      setPill("ws-state", "live: reconnecting", "bad");
      setTimeout(connect, wsBackoff);
      wsBackoff = Math.min(wsBackoff * 2, 10000);
      ws = null;
    };
  }

  // ---- start --------------------------------------------------------------------------------------------------

  window.addEventListener("resize", () => {
    for (const c of cards.values()) {
      for (const [chart, cls] of [[c.priceChart, ".chart-price"], [c.spreadChart, ".chart-spread"], [c.depth, ".chart-depth"]]) {
        chart.setSize(size(c.node.querySelector(cls), 220));
      }
    }
  });
  refreshSymbols();
  refreshHealth();
  setInterval(redraw, 500);
  setInterval(() => cards.forEach((c) => { refreshDepth(c); pollQuiet(c); }), DEPTH_POLL_MS);
  setInterval(() => {
    refreshSymbols();
    refreshHealth();
    cards.forEach(refreshSlow);
  }, SLOW_POLL_MS);
})();
