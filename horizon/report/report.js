// horizon's interactive report: draws the data block of this page with plain DOM and SVG.
// No library and no network: everything the page needs is in the page (see horizon/report/__init__.py).
(function () {
  "use strict";

  const DATA = JSON.parse(document.getElementById("report-data").textContent);
  const SVG = "http://www.w3.org/2000/svg";
  const STATUS = {
    "found": "found",
    "persists": "persists: still information at the last scanned layer",
    "no-information": "no information at any layer (never above the numerical floor)",
    "undetermined": "undetermined: fewer than two samples",
  };
  // viridis, as the static heatmaps (matplotlib's colormap sampled at nine stops)
  const VIRIDIS = ["#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725"];

  // ------------------------------------------------------------------ small helpers

  function el(tag, attrs, parent, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) node.setAttribute(k, v);
    }
    if (text !== undefined && text !== null) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function svg(tag, attrs, parent, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) node.setAttribute(k, v);
    }
    if (text !== undefined && text !== null) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function isNum(v) { return typeof v === "number" && isFinite(v); }

  function fmt(v, digits) {
    if (!isNum(v)) return "–";
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a >= 1e4 || a < 1e-3) return v.toExponential((digits || 3) - 1);
    return String(Number(v.toPrecision(digits || 3)));
  }

  function fmtLayer(v) {
    if (!isNum(v)) return "–";
    return Number.isInteger(v) ? String(v) : v.toFixed(1);
  }

  function withCI(v, lo, hi, f) {
    if (!isNum(v)) return "–";
    return isNum(lo) && isNum(hi) ? `${f(v)} [${f(lo)}, ${f(hi)}]` : f(v);
  }

  function option(select, value, label, selected) {
    const o = el("option", { value: value }, select, label);
    if (selected) o.selected = true;
    return o;
  }

  const tip = document.getElementById("tooltip");
  function showTip(event, text) {
    tip.textContent = text;
    tip.hidden = false;
    const x = Math.min(event.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
    const y = Math.min(event.clientY + 14, window.innerHeight - tip.offsetHeight - 8);
    tip.style.left = `${Math.max(4, x)}px`;
    tip.style.top = `${Math.max(4, y)}px`;
  }
  function hideTip() { tip.hidden = true; }

  function niceTicks(lo, hi, n) {
    if (!(hi > lo)) return [lo];
    const raw = (hi - lo) / Math.max(1, n);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const out = [];
    const first = Math.ceil(lo / step - 1e-9), last = Math.floor(hi / step + 1e-9);
    for (let k = first; k <= last; k++) out.push(Number((k * step).toPrecision(12)));
    return out;
  }

  function colour(t) {
    t = Math.max(0, Math.min(1, t));
    const x = t * (VIRIDIS.length - 1);
    const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
    const f = x - i;
    const a = parseInt(VIRIDIS[i].slice(1), 16), b = parseInt(VIRIDIS[i + 1].slice(1), 16);
    const mix = (s) => Math.round(((a >> s) & 255) * (1 - f) + ((b >> s) & 255) * f);
    return `rgb(${mix(16)},${mix(8)},${mix(0)})`;
  }

  // A chart frame: axes, grid, labels; returns the scales and the plotting group.
  function chart(parent, o) {
    const width = o.width || 440, height = o.height || 270;
    const m = { l: 58, r: 14, t: 12, b: 40 };
    const root = svg("svg", { width: width, height: height, viewBox: `0 0 ${width} ${height}`, class: "chart" }, parent);
    let [x0, x1] = o.x, [y0, y1] = o.y;
    if (!(x1 > x0)) { x0 -= 0.5; x1 += 0.5; }
    if (!(y1 > y0)) { y0 -= 0.5; y1 += 0.5; }
    const sx = (v) => m.l + ((v - x0) / (x1 - x0)) * (width - m.l - m.r);
    const sy = (v) => height - m.b - ((v - y0) / (y1 - y0)) * (height - m.t - m.b);
    const grid = svg("g", { class: "grid" }, root);
    const axis = svg("g", { class: "axis" }, root);
    const xt = niceTicks(x0, x1, o.xTicks || 6).filter((t) => !o.integerX || Number.isInteger(t));
    for (const t of xt) {
      svg("line", { x1: sx(t), x2: sx(t), y1: m.t, y2: height - m.b }, grid);
      svg("text", { x: sx(t), y: height - m.b + 14, "text-anchor": "middle" }, axis, fmt(t, 4));
    }
    for (const t of niceTicks(y0, y1, 5)) {
      svg("line", { x1: m.l, x2: width - m.r, y1: sy(t), y2: sy(t) }, grid);
      svg("text", { x: m.l - 5, y: sy(t) + 4, "text-anchor": "end" }, axis, fmt(t, 3));
    }
    svg("path", { d: `M${m.l},${m.t}V${height - m.b}H${width - m.r}`, fill: "none" }, axis);
    svg("text", { x: (m.l + width - m.r) / 2, y: height - 6, "text-anchor": "middle" }, axis, o.xlabel || "");
    svg("text", { x: 12, y: (m.t + height - m.b) / 2, "text-anchor": "middle",
                  transform: `rotate(-90 12 ${(m.t + height - m.b) / 2})` }, axis, o.ylabel || "");
    const plot = svg("g", {}, root);
    return { root, plot, sx, sy, m, width, height, x0, x1, y0, y1 };
  }

  function polyline(points, attrs, parent) {
    const d = points.map((p, i) => `${i ? "L" : "M"}${p[0].toFixed(2)},${p[1].toFixed(2)}`).join("");
    return svg("path", Object.assign({ d: d, fill: "none" }, attrs), parent);
  }

  // Runs of finite points: a gap (missing value) breaks a line.
  function segments(xs, ys) {
    const out = [];
    let cur = [];
    xs.forEach((x, i) => {
      if (isNum(ys[i])) cur.push([x, ys[i]]);
      else if (cur.length) { out.push(cur); cur = []; }
    });
    if (cur.length) out.push(cur);
    return out;
  }

  // ------------------------------------------------------------------ sortable tables

  function sortableTable(table, columns, rows) {
    let sortKey = null, dir = 1;
    const thead = el("thead", {}, table), tbody = el("tbody", {}, table);
    const head = el("tr", {}, thead);
    const ths = columns.map((c) => {
      const th = el("th", { title: "click to sort" }, head, c.label);
      th.addEventListener("click", () => {
        dir = sortKey === c ? -dir : 1;
        sortKey = c;
        ths.forEach((h) => h.removeAttribute("data-sort"));
        th.setAttribute("data-sort", dir > 0 ? "asc" : "desc");
        draw();
      });
      return th;
    });
    function value(c, r) {
      const v = c.sort ? c.sort(r) : r[c.key];
      return v === undefined ? null : v;
    }
    function draw() {
      const order = rows.map((r, i) => i);
      if (sortKey) {
        order.sort((a, b) => {
          const va = value(sortKey, rows[a]), vb = value(sortKey, rows[b]);
          if (va === null && vb === null) return a - b;
          if (va === null) return 1;  // missing values last, whichever the direction
          if (vb === null) return -1;
          const c = typeof va === "number" && typeof vb === "number" ? va - vb : String(va).localeCompare(String(vb));
          return c * dir || a - b;
        });
      }
      tbody.textContent = "";
      for (const i of order) {
        const tr = el("tr", {}, tbody);
        for (const c of columns) {
          const td = el("td", { class: c.num ? "num" : null }, tr);
          const content = c.render ? c.render(rows[i]) : rows[i][c.key];
          if (content instanceof Node) td.appendChild(content);
          else td.textContent = content === null || content === undefined ? "–" : String(content);
        }
      }
    }
    draw();
  }

  // ------------------------------------------------------------------ header

  function renderHeader() {
    const p = DATA.params || {};
    const about = document.getElementById("about");
    about.textContent = `horizon ${DATA.horizon_version} · ${DATA.runs.length} run(s), ${DATA.models.length} model(s) · `
      + `threshold ${p.threshold} of each curve's maximum, vanishing test ${p.vanishing_test} (α ${p.alpha}), `
      + `uniformity onset at ${p.uniformity_threshold}, ${p.n_boot} bootstrap resamples, ${p.n_perm} permutations, `
      + `seed ${p.seed}`;
    const estimated = DATA.runs.filter((r) => r.estimator);
    if (estimated.length) {
      const banner = document.getElementById("estimate-banner");
      banner.hidden = false;
      banner.textContent = `Estimated, not measured: ${estimated.length} run(s) hold scores of an estimator `
        + `(${[...new Set(estimated.map((r) => r.estimator))].join(", ")}) instead of exact removals: `
        + estimated.map((r) => r.name).join(", ") + ". Their rows and samples are tagged \u201cestimate\u201d.";
    }
    if (!DATA.grids.length) {
      document.getElementById("grids").hidden = true;
      document.getElementById("nav-grids").hidden = true;
    }
  }

  // ------------------------------------------------------------------ summary

  function statusCell(r) {
    const span = el("span", {});
    if (r.horizon_status === "found") span.textContent = withCI(r.horizon, r.horizon_lo, r.horizon_hi, fmtLayer);
    else el("span", { class: "status" }, span, r.status_text);
    if (r.estimate) el("span", { class: "tag", title: `scores of the ${r.estimate} estimator` }, span, "estimate");
    return span;
  }

  function renderSummary() {
    const select = document.getElementById("summary-metric");
    option(select, "", "all", true);
    for (const m of DATA.metrics) option(select, m, m);
    const columns = [
      { key: "model", label: "model" }, { key: "task", label: "task" }, { key: "metric", label: "metric" },
      { key: "n_samples", label: "n", num: true },
      { key: "horizon", label: "horizon [95% CI]", num: true, render: statusCell,
        sort: (r) => (r.horizon_status === "found" ? r.horizon : null) },
      { key: "relative_horizon", label: "h/L [CI]", num: true,
        render: (r) => (r.horizon_status === "found"
          ? withCI(r.relative_horizon, r.relative_horizon_lo, r.relative_horizon_hi, (v) => v.toFixed(2)) : "–") },
      { key: "uniformity_onset", label: "uniform from [CI]", num: true,
        render: (r) => withCI(r.uniformity_onset, r.uniformity_onset_lo, r.uniformity_onset_hi, fmtLayer) },
      { key: "n_layers", label: "L", num: true },
      { key: "horizon_status", label: "status", render: (r) => STATUS[r.horizon_status] || r.horizon_status },
    ];
    const table = document.getElementById("summary-table");
    function draw() {
      table.textContent = "";
      const rows = DATA.summary.filter((r) => !select.value || r.metric === select.value);
      sortableTable(table, columns, rows);
    }
    select.addEventListener("change", draw);
    draw();
    document.getElementById("summary").dataset.rendered = "1";
  }

  // ------------------------------------------------------------------ curves

  function summaryRow(model, task, metric) {
    return DATA.summary.find((r) => r.model === model && r.task === task && r.metric === metric) || null;
  }

  function curvePanel(parent, model, series, metric, what) {
    const info = what === "info";
    const column = info ? "mean_info" : "uniformity";
    const layers = [...new Set(series.flatMap((s) => s.layers))].sort((a, b) => a - b);
    let lo = info ? 0 : 0, hi = info ? 0 : 1.02;
    if (info) {
      for (const s of series) {
        for (const v of [...s[column], ...s[`${column}_lo`], ...s[`${column}_hi`]]) {
          if (isNum(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
        }
        const row = summaryRow(model, s.task, metric);
        if (row && isNum(row.threshold_value)) hi = Math.max(hi, row.threshold_value);
      }
      const pad = (hi - lo) * 0.05 || 0.01;
      lo -= lo < 0 ? pad : 0; hi += pad;
    }
    const box = el("div", { class: "panel" }, parent);
    const depth = series[0] && isNum(series[0].n_layers) ? ` (L = ${series[0].n_layers})` : "";
    el("h3", {}, box, `${model}${depth}: ${info ? "information" : "uniformity"}`);
    const c = chart(box, {
      x: [layers[0], layers[layers.length - 1]], y: [lo, hi], integerX: true, xlabel: "decoder layer",
      ylabel: info ? (DATA.labels[metric] || metric) : "uniformity (1 − Gini over windows)",
    });
    c.root.setAttribute("data-model", model);
    c.root.setAttribute("data-kind", what);
    if (info && lo < 0) svg("line", { x1: c.m.l, x2: c.width - c.m.r, y1: c.sy(0), y2: c.sy(0), stroke: "#888", "stroke-width": 0.6 }, c.plot);
    const empty = [];
    for (const s of series) {
      const col = DATA.task_colors[s.task] || "#333";
      const los = s[`${column}_lo`], his = s[`${column}_hi`];
      for (const seg of segments(s.layers.map((l, i) => i), s.layers.map((l, i) => (isNum(los[i]) && isNum(his[i]) ? 0 : null)))) {
        const idx = seg.map((p) => p[0]);
        const up = idx.map((i) => [c.sx(s.layers[i]), c.sy(his[i])]);
        const down = idx.slice().reverse().map((i) => [c.sx(s.layers[i]), c.sy(los[i])]);
        svg("path", { d: `M${[...up, ...down].map((p) => p.map((v) => v.toFixed(2)).join(",")).join("L")}Z`,
                      fill: col, "fill-opacity": 0.2, stroke: "none", class: "band" }, c.plot);
      }
      for (const seg of segments(s.layers, s[column])) {
        polyline(seg.map((p) => [c.sx(p[0]), c.sy(p[1])]), { stroke: col, "stroke-width": 1.8, class: "curve",
                                                              "data-task": s.task }, c.plot);
        for (const p of seg) svg("circle", { cx: c.sx(p[0]), cy: c.sy(p[1]), r: 2.2, fill: col }, c.plot);
      }
      const row = summaryRow(model, s.task, metric);
      if (!row) continue;
      if (row.horizon_status === "no-information") empty.push(s.task);
      if (isNum(row.horizon)) {
        svg("line", { x1: c.sx(row.horizon), x2: c.sx(row.horizon), y1: c.m.t, y2: c.height - c.m.b, stroke: col,
                      "stroke-dasharray": "6 4", "stroke-width": 1.3, class: "horizon-mark", "data-task": s.task }, c.plot);
      }
      if (info && isNum(row.threshold_value)) {
        svg("line", { x1: c.m.l, x2: c.width - c.m.r, y1: c.sy(row.threshold_value), y2: c.sy(row.threshold_value),
                      stroke: col, "stroke-dasharray": "1.5 3", "stroke-width": 1.3, class: "threshold-mark" }, c.plot);
      }
      if (!info && isNum(row.uniformity_onset)) {
        svg("line", { x1: c.sx(row.uniformity_onset), x2: c.sx(row.uniformity_onset), y1: c.m.t, y2: c.height - c.m.b,
                      stroke: col, "stroke-dasharray": "7 3 1.5 3", "stroke-width": 1.3, class: "onset-mark" }, c.plot);
      }
    }
    if (empty.length) {
      el("p", { class: "note no-information" }, box,
         `no information at any layer (never above the numerical floor): ${empty.join(", ")}`);
    }
    // hover: the nearest scanned layer's numbers for every task
    const guide = svg("line", { y1: c.m.t, y2: c.height - c.m.b, stroke: "#555", "stroke-width": 0.8, visibility: "hidden" }, c.plot);
    const hit = svg("rect", { x: c.m.l, y: c.m.t, width: c.width - c.m.l - c.m.r, height: c.height - c.m.t - c.m.b,
                              fill: "transparent", class: "hover" }, c.root);
    hit.addEventListener("mousemove", (event) => {
      const r = c.root.getBoundingClientRect();
      const x = ((event.clientX - r.left) / r.width) * c.width;
      let best = layers[0];
      for (const l of layers) if (Math.abs(c.sx(l) - x) < Math.abs(c.sx(best) - x)) best = l;
      guide.setAttribute("x1", c.sx(best)); guide.setAttribute("x2", c.sx(best));
      guide.setAttribute("visibility", "visible");
      const lines = [`${model}, layer ${best}`];
      for (const s of series) {
        const i = s.layers.indexOf(best);
        if (i < 0) continue;
        lines.push(`${s.task}: ${withCI(s[column][i], s[`${column}_lo`][i], s[`${column}_hi`][i], (v) => fmt(v, 3))}`
                   + ` (n = ${s.n_samples[i]})`);
      }
      showTip(event, lines.join("\n"));
    });
    hit.addEventListener("mouseleave", () => { guide.setAttribute("visibility", "hidden"); hideTip(); });
  }

  function renderCurves() {
    const select = document.getElementById("curve-metric");
    DATA.metrics.forEach((m, i) => option(select, m, m, i === 0));
    function draw() {
      const metric = select.value;
      const panels = document.getElementById("curve-panels");
      panels.textContent = "";
      const legend = document.getElementById("curve-legend");
      legend.textContent = "";
      const tasks = [...new Set(DATA.curves.filter((s) => s.metric === metric).map((s) => s.task))];
      for (const t of tasks) {
        const item = el("span", {}, legend);
        el("i", { style: `border-color:${DATA.task_colors[t]}` }, item);
        el("span", {}, item, t);
      }
      for (const model of DATA.models) {
        const series = DATA.curves.filter((s) => s.model === model && s.metric === metric);
        if (!series.length) continue;
        const row = el("div", { class: "panels" }, panels);
        const estimate = series.map((s) => (summaryRow(model, s.task, metric) || {}).estimate).find((e) => e);
        curvePanel(row, model, series, metric, "info");
        curvePanel(row, model, series, metric, "uniformity");
        if (estimate) el("p", { class: "note" }, row, `estimate (${estimate} estimator), not measured`);
      }
    }
    select.addEventListener("change", draw);
    draw();
    document.getElementById("curves").dataset.rendered = "1";
  }

  // ------------------------------------------------------------------ samples

  const view = { run: 0, sample: 0, metric: null, layer: 0, timer: null };

  function currentRun() { return DATA.runs[view.run]; }
  function currentSample() { return currentRun().samples[view.sample] || null; }

  function renderRunPicker() {
    const picker = document.getElementById("run-picker");
    DATA.runs.forEach((r, i) => option(picker, i, r.label + (r.estimator ? ` [estimate: ${r.estimator}]` : ""), i === 0));
    picker.addEventListener("change", () => { stop(); view.run = Number(picker.value); view.sample = 0; pickRun(); });
    document.getElementById("sample-metric").addEventListener("change", (e) => { view.metric = e.target.value; drawSample(); });
    document.getElementById("sample-search").addEventListener("input", fillSampleList);
    document.getElementById("sample-list").addEventListener("change", (e) => {
      stop(); view.sample = Number(e.target.value); drawSample();
    });
    document.getElementById("layer-slider").addEventListener("input", (e) => { view.layer = Number(e.target.value); drawLayer(); });
    document.getElementById("play").addEventListener("click", () => (view.timer ? stop() : play()));
    pickRun();
    document.getElementById("samples").dataset.rendered = "1";
  }

  function pickRun() {
    const run = currentRun();
    const metric = document.getElementById("sample-metric");
    metric.textContent = "";
    if (!run.metrics.includes(view.metric)) view.metric = run.metrics[0] || null;
    for (const m of run.metrics) option(metric, m, m + (DATA.metrics.includes(m) ? "" : " (raw level)"), m === view.metric);
    const slider = document.getElementById("layer-slider");
    slider.max = Math.max(0, run.layers.length - 1);
    view.layer = Math.min(view.layer, run.layers.length - 1);
    if (view.layer < 0) view.layer = 0;
    slider.value = view.layer;
    fillSampleList();
  }

  function fillSampleList() {
    const run = currentRun();
    const query = document.getElementById("sample-search").value.trim().toLowerCase();
    const list = document.getElementById("sample-list");
    list.textContent = "";
    const matches = [];
    run.samples.forEach((s, i) => {
      const text = `${s.id} ${s.question || ""} ${s.task || ""}`.toLowerCase();
      if (!query || text.includes(query)) matches.push(i);
    });
    if (matches.length && !matches.includes(view.sample)) view.sample = matches[0];
    for (const i of matches) {
      const s = run.samples[i];
      option(list, i, `${s.id} · ${s.task || ""}${s.status === "ok" ? "" : " · failed"}`, i === view.sample);
    }
    const shown = run.samples.length < run.n_samples_total ? ` (the first ${run.samples.length} of the run's ${run.n_samples_total})` : "";
    document.getElementById("sample-count").textContent = `${matches.length} of ${run.samples.length} samples${shown}`;
    drawSample();
  }

  function sampleScale(sample) {
    const values = (sample.scores[view.metric] || []).filter(isNum);
    if (!values.length) return null;
    let lo = Math.min(...values), hi = Math.max(...values);
    if (!(hi > lo)) { lo -= 0.5; hi += 0.5; }
    return { lo, hi };
  }

  function drawSample() {
    const run = currentRun(), sample = currentSample();
    const heat = document.getElementById("heatmap");
    const note = document.getElementById("sample-note");
    const text = document.getElementById("sample-text");
    heat.textContent = ""; text.textContent = ""; note.hidden = true;
    if (!sample) { note.hidden = false; note.textContent = "no sample matches the search"; drawLayer(); return; }
    const notes = [];
    if (sample.status !== "ok") notes.push(`this sample failed in the scan: ${sample.status}`);
    if (run.estimator) notes.push(`estimate: these scores come from the ${run.estimator} estimator, not from exact removals`
                                  + (sample.exact ? " (dashed white outline: estimated window; solid: measured exactly)" : ""));
    if (sample.layout_note) notes.push(sample.layout_note);
    if (notes.length) { note.hidden = false; note.textContent = notes.join(" · "); }
    sample.blocks.forEach((block, b) => {
      const fig = el("figure", {}, heat);
      const [x0, y0, x1, y1] = block.frame;
      const w = x1 - x0, h = y1 - y0;
      const scale = 300 / Math.max(w, h);
      const root = svg("svg", { width: Math.round(w * scale), height: Math.round(h * scale),
                                viewBox: `${x0} ${y0} ${w} ${h}`, "data-block": b, preserveAspectRatio: "none" }, fig);
      if (block.image) {
        const size = DATA.image_sizes[block.image];
        svg("image", { href: DATA.images[block.image], x: 0, y: 0, width: size[0], height: size[1],
                       preserveAspectRatio: "none" }, root);
      }
      sample.windows.forEach((win, i) => {
        if (!win || win[0] !== b) return;
        const rect = svg("rect", { x: win[1], y: win[2], width: win[3] - win[1], height: win[4] - win[2],
                                   class: "window", "data-window": i, "vector-effect": "non-scaling-stroke" }, root);
        rect.addEventListener("mousemove", (event) => showTip(event, windowText(i)));
        rect.addEventListener("mouseleave", hideTip);
      });
      const caption = [block.label, ...block.notes].filter((x) => x).join(" · ");
      if (caption) el("figcaption", {}, fig, caption);
    });
    const rows = [["sample", sample.id], ["task", sample.task], ["status", sample.status], ["question", sample.question],
                  ["answer", sample.answer], ["prediction", sample.prediction], ["run", run.label]];
    for (const [k, v] of rows) { el("dt", {}, text, k); el("dd", { "data-field": k }, text, v === null ? "–" : v); }
    drawLayer();
  }

  function windowValue(sample, i) {
    const values = sample.scores[view.metric];
    const n = sample.windows.length;
    return values ? values[view.layer * n + i] : null;
  }

  function windowText(i) {
    const run = currentRun(), sample = currentSample();
    const v = windowValue(sample, i);
    const floor = run.floor[view.metric];
    let what = fmt(v, 4);
    if (isNum(v) && isNum(floor) && Math.abs(v) <= floor) what += " (within the numerical floor: counts as zero)";
    const exact = sample.exact && sample.exact[view.metric];
    const how = exact ? (exact[view.layer * sample.windows.length + i] === "1" ? ", measured exactly" : ", estimated") : "";
    return `window ${i}, layer ${run.layers[view.layer]}\n${view.metric}: ${what}${how}`;
  }

  function drawLayer() {
    const run = currentRun(), sample = currentSample();
    const label = document.getElementById("layer-label");
    const layer = run.layers[view.layer];
    label.textContent = layer === undefined ? "no scanned layer" : `layer ${layer} / ${run.n_layers - 1}`;
    document.getElementById("layer-slider").value = view.layer;
    const bar = document.getElementById("colorbar");
    bar.textContent = "";
    if (!sample) return;
    const scale = sampleScale(sample);
    const floor = run.floor[view.metric];
    const exact = sample.exact && sample.exact[view.metric];
    const n = sample.windows.length;
    for (const rect of document.querySelectorAll("#heatmap rect.window")) {
      const i = Number(rect.getAttribute("data-window"));
      const v = windowValue(sample, i);
      const hasImage = sample.blocks[sample.windows[i][0]].image;
      const withinFloor = isNum(v) && isNum(floor) && Math.abs(v) <= floor;
      if (!isNum(v) || !scale || withinFloor) {
        rect.setAttribute("fill", "none");
        rect.setAttribute("stroke", withinFloor ? "#9aa3ab" : "none");
        rect.setAttribute("stroke-dasharray", withinFloor ? "1 2" : "");
        rect.setAttribute("class", withinFloor ? "window floor" : "window empty");
      } else {
        rect.setAttribute("fill", colour((v - scale.lo) / (scale.hi - scale.lo)));
        rect.setAttribute("fill-opacity", hasImage ? 0.6 : 1);
        const estimated = exact && exact[view.layer * n + i] !== "1";
        rect.setAttribute("stroke", estimated ? "#ffffff" : "none");
        rect.setAttribute("stroke-dasharray", estimated ? "3 2" : "");
        rect.setAttribute("class", "window");
      }
    }
    if (!scale) { el("p", { class: "muted" }, bar, `no ${view.metric || ""} scores for this sample`); return; }
    const w = 300, h = 46;
    const root = svg("svg", { width: w + 120, height: h }, bar);
    const defs = svg("defs", {}, root);
    const grad = svg("linearGradient", { id: "viridis", x1: 0, x2: 1, y1: 0, y2: 0 }, defs);
    VIRIDIS.forEach((c, i) => svg("stop", { offset: i / (VIRIDIS.length - 1), "stop-color": c }, grad));
    svg("rect", { x: 10, y: 6, width: w, height: 12, fill: "url(#viridis)", "fill-opacity": 0.8 }, root);
    svg("text", { x: 10, y: 32 }, root, fmt(scale.lo, 3));
    svg("text", { x: 10 + w, y: 32, "text-anchor": "end" }, root, fmt(scale.hi, 3));
    svg("text", { x: 10 + w / 2, y: 32, "text-anchor": "middle" }, root,
        `${DATA.short_labels[view.metric] || view.metric} (this sample, all layers)`);
    if (isNum(floor)) {
      svg("rect", { x: w + 22, y: 6, width: 12, height: 12, fill: "none", stroke: "#9aa3ab", "stroke-dasharray": "1 2" }, root);
      svg("text", { x: w + 38, y: 16 }, root, "≤ floor");
      const p = el("p", { class: "muted" }, bar, `Dotted, unfilled: a score within the numerical floor (|score| ≤ ${fmt(floor, 3)}),`
                   + " which the analysis counts as zero.");
      p.style.margin = "0";
    }
  }

  function play() {
    const run = currentRun();
    if (run.layers.length < 2) return;
    if (view.layer >= run.layers.length - 1) { view.layer = 0; drawLayer(); }
    document.getElementById("play").textContent = "❚❚ pause";
    view.timer = window.setInterval(() => {
      if (view.layer >= currentRun().layers.length - 1) { stop(); return; }
      view.layer += 1;
      drawLayer();
    }, 700);
  }

  function stop() {
    if (view.timer) window.clearInterval(view.timer);
    view.timer = null;
    document.getElementById("play").textContent = "▶ play";
  }

  // ------------------------------------------------------------------ comparisons

  function renderComparisons() {
    const table = document.getElementById("comparisons-table");
    const columns = [
      { key: "kind", label: "kind" }, { key: "metric", label: "metric" },
      { key: "within", label: "within", sort: (r) => (r.kind === "task" ? r.model_a : r.task_a),
        render: (r) => (r.kind === "task" ? r.model_a : r.task_a) },
      { key: "a", label: "a", sort: (r) => (r.kind === "task" ? r.task_a : r.model_a),
        render: (r) => (r.kind === "task" ? r.task_a : r.model_a) },
      { key: "b", label: "b", sort: (r) => (r.kind === "task" ? r.task_b : r.model_b),
        render: (r) => (r.kind === "task" ? r.task_b : r.model_b) },
      { key: "horizon_a", label: "horizon a", num: true, render: (r) => fmt(r.horizon_a, 3) },
      { key: "horizon_b", label: "horizon b", num: true, render: (r) => fmt(r.horizon_b, 3) },
      { key: "difference", label: "a − b [95% CI]", num: true,
        render: (r) => (isNum(r.difference) ? `${withCI(r.difference, r.difference_lo, r.difference_hi, (v) => fmt(v, 3))} ${r.units || ""}` : "–") },
      { key: "p_value", label: "p", num: true, render: (r) => fmt(r.p_value, 3) },
      { key: "note", label: "note" },
    ];
    if (!DATA.comparisons.length) el("p", { class: "muted" }, table.parentNode, "Nothing to compare: one task per model and one model per task.");
    sortableTable(table, columns, DATA.comparisons);
    document.getElementById("comparisons").dataset.rendered = "1";
  }

  // ------------------------------------------------------------------ pruning grids

  function pruneChart(parent, lines, x, o) {
    const xs = [], ys = [];
    for (const line of lines) for (const p of line.points) { xs.push(p[0]); ys.push(p[1]); if (isNum(p[2])) { ys.push(p[1] + p[2]); ys.push(p[1] - p[2]); } }
    if (isNum(o.unpruned)) ys.push(o.unpruned);
    if (o.horizon && isNum(o.horizon.layer)) { xs.push(o.horizon.layer); }
    if (!xs.length) return null;
    const lo = Math.min(...ys), hi = Math.max(...ys), left = Math.min(...xs), right = Math.max(...xs);
    const pad = (hi - lo) * 0.08 || 0.05, xpad = (right - left) * 0.05 || 0.5;  // marks at the ends stay visible
    const c = chart(parent, { x: [left - xpad, right + xpad], y: [lo - pad, hi + pad], xlabel: o.xlabel,
                               ylabel: "accuracy", integerX: o.integerX });
    const h = o.horizon;
    if (h && h.status === "found" && isNum(h.layer)) {
      if (isNum(h.lo) && isNum(h.hi)) {
        svg("rect", { x: c.sx(Math.min(h.lo, h.hi)), y: c.m.t, width: Math.max(1, c.sx(Math.max(h.lo, h.hi)) - c.sx(Math.min(h.lo, h.hi))),
                      height: c.height - c.m.t - c.m.b, fill: "#808080", "fill-opacity": 0.18 }, c.plot);
      }
      svg("line", { x1: c.sx(h.layer), x2: c.sx(h.layer), y1: c.m.t, y2: c.height - c.m.b, stroke: "#404040",
                    "stroke-dasharray": "6 4", "stroke-width": 1.3, class: "horizon-mark" }, c.plot);
    } else if (h) {
      svg("text", { x: (c.m.l + c.width - c.m.r) / 2, y: c.height - c.m.b - 8, "text-anchor": "middle", fill: "#555",
                    class: "no-horizon" }, c.plot, h.status === "no-information" ? "no information at any layer" : "no horizon found");
    }
    if (isNum(o.unpruned)) {
      svg("line", { x1: c.m.l, x2: c.width - c.m.r, y1: c.sy(o.unpruned), y2: c.sy(o.unpruned), stroke: "#333",
                    "stroke-dasharray": "1.5 3", "stroke-width": 1.4 }, c.plot);
    }
    for (const line of lines) {
      if (!line.points.length) continue;
      polyline(line.points.map((p) => [c.sx(p[0]), c.sy(p[1])]), { stroke: line.color, "stroke-width": 1.6,
               "stroke-dasharray": line.hybrid ? "5 3" : null, class: "prune-line" }, c.plot);
      for (const p of line.points) {
        if (isNum(p[2]) && p[2] > 0) {
          svg("line", { x1: c.sx(p[0]), x2: c.sx(p[0]), y1: c.sy(p[1] - p[2]), y2: c.sy(p[1] + p[2]), stroke: line.color }, c.plot);
        }
        const dot = svg("circle", { cx: c.sx(p[0]), cy: c.sy(p[1]), r: 3.6, fill: line.hybrid ? "#fff" : line.color,
                                    stroke: line.color, "stroke-width": 1.3 }, c.plot);
        const text = `${line.label}\naccuracy ${fmt(p[1], 3)}${isNum(p[2]) && p[2] > 0 ? ` ± ${fmt(p[2], 2)}` : ""}\n`
          + `${x} ${fmt(p[0], 4)}${isNum(p[3]) ? `, budget ${fmt(p[3], 4)}` : ""}`;
        dot.addEventListener("mousemove", (event) => showTip(event, text));
        dot.addEventListener("mouseleave", hideTip);
      }
    }
    return c;
  }

  function renderGrids() {
    const root = document.getElementById("grid-panels");
    for (const grid of DATA.grids) {
      el("h3", {}, root, `${grid.name}${grid.metric ? ` (horizon of ${grid.metric})` : ""}`);
      for (const panel of grid.panels) {
        const who = [panel.model, panel.task].filter((x) => x).join(" / ");
        const legend = el("div", { class: "legend" }, root);
        for (const line of panel.lines) {
          const item = el("span", {}, legend);
          el("i", { style: `border-color:${line.color};border-top-style:${line.hybrid ? "dashed" : "solid"}` }, item);
          el("span", {}, item, line.label);
        }
        const row = el("div", { class: "panels prune-panel", "data-pair": who }, root);
        const left = el("div", { class: "panel" }, row);
        el("h3", {}, left, `${who ? who + ": " : ""}accuracy vs visual tokens`);
        pruneChart(left, panel.lines, "avg_tokens", { unpruned: panel.unpruned, xlabel: "average visual tokens per layer" });
        if (panel.switch_lines.length) {
          const right = el("div", { class: "panel" }, row);
          const depth = isNum(panel.horizon.n_layers) ? `, L = ${panel.horizon.n_layers}` : "";
          el("h3", {}, right, `${who ? who + ": " : ""}accuracy vs switch layer (hybrids at budget ${fmt(panel.budget, 4)}${depth})`);
          pruneChart(right, panel.switch_lines, "switch_layer", { unpruned: panel.unpruned, horizon: panel.horizon,
                     xlabel: "switch layer (random pruning from this layer)", integerX: true });
          el("p", { class: "note" }, right, `information horizon: ${panel.horizon.text}`);
        }
      }
    }
    document.getElementById("grids").dataset.rendered = "1";
  }

  // ------------------------------------------------------------------ all

  renderHeader();
  renderSummary();
  renderCurves();
  renderRunPicker();
  renderComparisons();
  renderGrids();
  document.body.dataset.ready = "1";
})();
