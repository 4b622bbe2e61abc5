// The host board: one websocket, a full snapshot per message, drawn with the DOM and plain SVG
// (a handful of bars, tables and two lines: no chart library is worth shipping for that).
"use strict";
(function () {
  const body = document.body;
  const event = body.dataset.event, token = body.dataset.token, en = body.dataset.lang === "en";
  const $ = (id) => document.getElementById(id);
  const esc = (s) => String(s == null ? "" : s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]));
  const fmt = (n) => (n == null ? "—" : Number(n).toLocaleString(en ? "en-US" : "zh-CN"));
  const pct = (r) => (r == null ? "" : (r * 100).toFixed(1) + "%");
  const EN = { reached: "Reached", scanned: "Scanned", joined: "Joined", reminded: "Reminded", entered: "Entered live",
               commented: "Commented", deposited: "Deposit", ordered: "Ordered" };
  document.querySelectorAll("[data-zh]").forEach((el) => { el.textContent = en ? el.dataset.en : el.dataset.zh; });
  let snap = null, drawAt = null;

  function funnel(s) {
    const max = Math.max(1, ...s.funnel.map((f) => Math.max(f.count, f.target || 0)));
    return s.funnel.map((f) => {
      const target = f.target ? `<div class="target" style="left:${(100 * f.target / max).toFixed(1)}%"></div>` : "";
      const rate = (f.of_previous == null ? "" : `${pct(f.of_previous)} ${en ? "of previous" : "上一步"}`) +
        (f.projected != null && f.target ? ` · ${en ? "on pace for" : "按当前节奏"} ${fmt(f.projected)}` : "");
      return `<div class="bar" data-step="${f.step}"><span>${esc(en ? EN[f.step] : f.label)}</span>` +
        `<div class="track"><div class="fill" style="width:${(100 * f.count / max).toFixed(1)}%"></div>${target}</div>` +
        `<span class="num">${fmt(f.count)}${f.target ? " / " + fmt(f.target) : ""} <span class="rate">${rate}</span></span></div>`;
    }).join("") + `<div class="bar"><span>GMV</span><div></div><span class="num" id="gmv">¥${fmt(Math.round(s.gmv_fen / 100))}` +
      `${s.gmv_target_cny ? " / ¥" + fmt(s.gmv_target_cny) : ""}</span></div>`;
  }

  function table(el, head, rows) {
    el.innerHTML = "<tr>" + head.map((h) => `<th>${esc(h)}</th>`).join("") + "</tr>" +
      rows.map((r) => "<tr>" + r.map((c) => `<td>${esc(c)}</td>`).join("") + "</tr>").join("");
  }

  function minutes(s) {
    const series = [s.per_minute.scanned || {}, s.per_minute.joined || {}];
    const keys = [...new Set(series.flatMap((m) => Object.keys(m)))].sort().slice(-60);
    if (!keys.length) { $("minutes").innerHTML = ""; return; }
    const max = Math.max(1, ...series.flatMap((m) => keys.map((k) => m[k] || 0)));
    const xs = keys.length === 1 ? [0, 300] : keys.map((_k, i) => 300 * i / (keys.length - 1));  // one minute: a flat line
    const ks = keys.length === 1 ? [keys[0], keys[0]] : keys;
    const line = (m, colour) => `<polyline fill="none" stroke="${colour}" stroke-width="2" points="` +
      ks.map((k, i) => `${xs[i].toFixed(1)},${(88 - 84 * (m[k] || 0) / max).toFixed(1)}`).join(" ") + '"/>';
    $("minutes").innerHTML = line(series[0], "#56ccf2") + line(series[1], "#3ecf8e");
  }

  function render(s) {
    snap = s;
    $("title").textContent = s.title;
    $("funnel").innerHTML = funnel(s);
    table($("guides"), en ? ["Guide", "Scans", "Joins", "Deposits", "Orders", "GMV", "Unconfirmed tasks"] : ["导购", "扫码", "进群", "定金", "下单", "GMV", "待确认任务"],
      s.per_guide.map((g) => [g.name, fmt(g.scanned), fmt(g.joined), fmt(g.deposited), fmt(g.ordered), "¥" + fmt(Math.round(g.gmv_fen / 100)),
        fmt(g.unconfirmed || 0)]));
    table($("variants"), en ? ["Variant", "Scans", "Joins", "Rate"] : ["版本", "扫码", "进群", "转化"],
      s.per_variant.map((v) => [v.id + " " + v.hook, fmt(v.scanned), fmt(v.joined), pct(v.rate)]));
    const c = s.comparison;
    $("comparison").textContent = !c ? "" : `${c.b} − ${c.a}: ${pct(c.difference)} (95% CI ${pct(c.low)} … ${pct(c.high)})` +
      (c.enough ? (c.significant ? (en ? " — significant" : " — 差异显著") : (en ? " — not significant" : " — 差异不显著"))
        : (en ? " — fewer than 1,000 per arm yet" : " — 每组还不到 1,000 人"));
    minutes(s);
    $("cue").textContent = s.cue || "—";
    $("nextcue").textContent = s.next_cue ? `${en ? "next" : "下一条"} ${s.next_cue.at}: ${s.next_cue.label}` : "";
    drawAt = s.next_draw ? Date.now() + 1000 * s.next_draw.in_seconds : null;
    $("draws").innerHTML = s.draws.slice(-3).reverse().map((d) => d.state === "void"
      ? `<div class="muted">${esc(d.id)}: ${en ? "void" : "作废"} (${esc(d.reason)})</div>`
      : `<div>${esc(d.id)}: <span class="winner">${d.winners.map(esc).join("、")}</span> <span class="muted">/ ${fmt(d.entrants)}</span></div>`).join("");
    $("comments").innerHTML = s.comments.map((m) => `<li><span class="muted">${esc(m.at)}</span> ${esc(m.name)}：${esc(m.text)}</li>`).join("");
    $("commitment").textContent = s.commitment ? (en ? "Draw commitment (SHA-256): " : "抽奖承诺（SHA-256）：") + s.commitment : "";
    $("clock").textContent = s.now.slice(11, 19);
  }

  setInterval(() => {
    if (drawAt == null) { $("countdown").textContent = "—"; return; }
    const left = Math.max(0, Math.round((drawAt - Date.now()) / 1000));
    $("countdown").textContent = `${String(Math.floor(left / 60)).padStart(2, "0")}:${String(left % 60).padStart(2, "0")}`;
  }, 250);

  let wait = 500;
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/board/${encodeURIComponent(event)}/ws?t=${encodeURIComponent(token)}`);
    ws.onopen = () => { $("conn").className = "conn on"; wait = 500; };
    let state = null;
    ws.onmessage = (m) => {  // the whole snapshot first, then patches: the parts that changed
      const d = JSON.parse(m.data);
      if (d.patch) {
        if (!state) return;
        Object.assign(state, d.patch);
        (d.gone || []).forEach((k) => delete state[k]);
      } else {
        state = d;
      }
      render(state);
    };
    ws.onclose = () => { $("conn").className = "conn off"; setTimeout(connect, wait); wait = Math.min(wait * 2, 10000); };
  }
  connect();
})();
