// Renders report.html's test list and charts from the JSON in #data.
// Everything from the data goes in as text (textContent, setAttribute of
// plain values): test names, reasons and logs are never markup. The list
// is built CHUNK rows at a time as it scrolls into view, so a run of
// 10,000 tests opens as fast as one of ten. The filter lives in the URL's
// fragment (#status=fail,timeout&q=apic&sort=slowest), so a link or a
// bookmark opens the same view.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("data").textContent);
  const tests = data.tests;
  const CHUNK = 200;
  const CHART_ROWS = 30;
  const STATUSES = ["pass", "fail", "skip", "timeout", "error", "flaky", "xfail", "xpass"];
  // Problems first: what failed the run, then what merits a look.
  const RANK = { fail: 0, timeout: 1, error: 2, xpass: 3, flaky: 4, xfail: 5, skip: 6, pass: 7 };
  const SORTS = { problems: "problems first", run: "run order", slowest: "slowest first", name: "name" };
  const SVG = "http://www.w3.org/2000/svg";
  const lowered = tests.map((t) => String(t.label).toLowerCase());
  const counts = {};
  for (const t of tests) counts[t.status] = (counts[t.status] || 0) + 1;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const k of Object.keys(attrs)) e.setAttribute(k, String(attrs[k]));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  function seconds(s) {
    if (s < 1) return Math.round(s * 1000) + " ms";
    if (s < 10) return s.toFixed(2) + " s";
    return s.toFixed(1) + " s";
  }

  function label(status) {
    return String(status).toUpperCase();
  }

  // --- the filter, kept in the URL's fragment --------------------------------

  function readState() {
    const p = new URLSearchParams(location.hash.slice(1));
    const status = new Set((p.get("status") || "").split(",").filter((s) => STATUSES.includes(s)));
    const sort = Object.prototype.hasOwnProperty.call(SORTS, p.get("sort")) ? p.get("sort") : "problems";
    return { status: status, q: p.get("q") || "", sort: sort };
  }

  function writeState() {
    const p = new URLSearchParams();
    if (state.status.size) p.set("status", Array.from(state.status).join(","));
    if (state.q) p.set("q", state.q);
    if (state.sort !== "problems") p.set("sort", state.sort);
    const hash = p.toString();
    history.replaceState(null, "", hash ? "#" + hash : location.pathname + location.search);
  }

  function selected() {
    const q = state.q.toLowerCase();
    const picked = [];
    for (let i = 0; i < tests.length; i++) {
      if (state.status.size && !state.status.has(tests[i].status)) continue;
      if (q && !lowered[i].includes(q)) continue;
      picked.push(i);
    }
    if (state.sort === "problems") picked.sort((a, b) => RANK[tests[a].status] - RANK[tests[b].status] || a - b);
    else if (state.sort === "slowest") picked.sort((a, b) => tests[b].duration_s - tests[a].duration_s || a - b);
    else if (state.sort === "name") picked.sort((a, b) => (lowered[a] < lowered[b] ? -1 : lowered[a] > lowered[b] ? 1 : a - b));
    return picked;
  }

  // --- pictures ----------------------------------------------------------------

  // One bar split by counts: [[class, n, what], ...].
  function stackedBar(parts, width, height, title) {
    const total = parts.reduce((s, p) => s + p[1], 0);
    const bar = svg("svg", { width: width, height: height, class: "bar", role: "img" });
    bar.append(svg("title", {}, title));
    let x = 0;
    for (const [cls, n] of parts) {
      if (!n) continue;
      const w = (n / total) * width;
      bar.append(svg("rect", { x: x, y: 0, width: Math.max(w, 1), height: height, class: "f-" + cls }));
      x += w;
    }
    return bar;
  }

  function subtestParts(s) {
    return [
      ["pass", s.pass || 0, "passed"],
      ["fail", s.fail || 0, "failed"],
      ["skip", s.skip || 0, "skipped"],
      ["xfail", s.xfail || 0, "expected failures"],
      ["notrun", s.not_run || 0, "not run"],
    ];
  }

  function describe(parts) {
    return parts.filter((p) => p[1]).map((p) => p[1] + " " + p[2]).join(", ");
  }

  function subtestBar(s) {
    const parts = subtestParts(s);
    if (!parts.some((p) => p[1])) return el("span", "bar-none");
    return stackedBar(parts, 100, 10, "subtests: " + describe(parts));
  }

  function statusBar() {
    const parts = STATUSES.map((s) => [s, counts[s] || 0, label(s)]);
    const box = document.getElementById("statusbar");
    if (tests.length) box.append(stackedBar(parts, 600, 16, describe(parts)));
  }

  // Horizontal bars, one per row: [name, [[class, value], ...], value text].
  function barChart(title, note, rows, max) {
    const section = el("div", "chart");
    section.append(el("h3", null, title), el("p", "sub", note));
    const rowH = 18;
    const labelW = 320;
    const barW = 460;
    const chart = svg("svg", {
      viewBox: "0 0 " + (labelW + barW + 90) + " " + rows.length * rowH,
      width: "100%",
      class: "chart-svg",
      role: "img",
    });
    chart.append(svg("title", {}, title));
    rows.forEach(([name, parts, text], i) => {
      const y = i * rowH;
      const shown = name.length > 48 ? name.slice(0, 47) + "\u2026" : name;
      const t = svg("text", { x: labelW - 6, y: y + 13, "text-anchor": "end", class: "lbl" }, shown);
      t.append(svg("title", {}, name));
      chart.append(t);
      let x = labelW;
      for (const [cls, v] of parts) {
        if (!v) continue;
        const w = max > 0 ? (v / max) * barW : 0;
        chart.append(svg("rect", { x: x, y: y + 3, width: Math.max(w, 1), height: rowH - 6, class: "f-" + cls }));
        x += w;
      }
      chart.append(svg("text", { x: x + 6, y: y + 13, class: "val" }, text));
    });
    section.append(chart);
    return section;
  }

  function charts(picked) {
    const box = document.getElementById("charts");
    box.replaceChildren();
    if (!picked.length) return;
    const slow = picked.slice().sort((a, b) => tests[b].duration_s - tests[a].duration_s).slice(0, CHART_ROWS);
    const maxD = slow.length ? tests[slow[0]].duration_s : 0;
    box.append(
      barChart(
        "Durations, slowest first",
        slow.length < picked.length ? "the " + slow.length + " slowest of " + picked.length : picked.length + " tests",
        slow.map((i) => [tests[i].label, [[tests[i].status, tests[i].duration_s]], seconds(tests[i].duration_s)]),
        maxD
      )
    );
    const withSubs = picked.filter((i) => tests[i].subtests);
    if (!withSubs.length) return;
    // Failures first, then the largest.
    const total = (s) => subtestParts(s).reduce((n, p) => n + p[1], 0);
    withSubs.sort((a, b) => (tests[b].subtests.fail || 0) - (tests[a].subtests.fail || 0) || total(tests[b].subtests) - total(tests[a].subtests) || a - b);
    const rows = withSubs.slice(0, CHART_ROWS);
    const maxS = Math.max.apply(null, rows.map((i) => total(tests[i].subtests)));
    box.append(
      barChart(
        "Subtests per test",
        (rows.length < withSubs.length ? rows.length + " of " + withSubs.length : withSubs.length) + " tests with subtests, failures first",
        rows.map((i) => {
          const parts = subtestParts(tests[i].subtests);
          return [tests[i].label, parts, describe(parts)];
        }),
        maxS
      )
    );
  }

  // --- one test ----------------------------------------------------------------

  function facts(t) {
    const dl = el("dl", "facts");
    const add = (k, v) => {
      if (v === undefined || v === null || v === "") return;
      dl.append(el("dt", null, k));
      const dd = el("dd");
      if (v instanceof Node) dd.append(v);
      else dd.textContent = String(v);
      dl.append(dd);
    };
    add("status", label(t.status));
    add("duration", seconds(t.duration_s));
    add("exit code", t.exit_code);
    if (t.iteration) add("iteration", t.iteration);
    add("reason", t.reason);
    // Only the links the report writes: relative paths (percent-encoded,
    // so no scheme) or file:///.
    if (t.href && /^(file:\/\/\/|[A-Za-z0-9._~%\/-]+$)/.test(t.href)) {
      const a = el("a", null, t.log);
      a.setAttribute("href", t.href);
      add("log", a);
    } else add("log", t.log);
    add("core", t.core);
    return dl;
  }

  function subtests(s) {
    const box = el("div", "subtests");
    const parts = subtestParts(s);
    box.append(el("h4", null, "Subtests: " + (describe(parts) || "none")));
    box.append(stackedBar(parts, 300, 12, describe(parts)));
    if (s.failed && s.failed.length) {
      const ul = el("ul", "failed-subtests");
      for (const name of s.failed) ul.append(el("li", null, name));
      box.append(ul);
    }
    return box;
  }

  function table(rows, head) {
    const tab = el("table", "kv");
    if (head) {
      const tr = el("tr");
      for (const h of head) tr.append(el("th", null, h));
      tab.append(tr);
    }
    for (const r of rows) {
      const tr = el("tr");
      r.forEach((c, i) => tr.append(el(i === 0 && !head ? "th" : "td", null, c)));
      tab.append(tr);
    }
    return tab;
  }

  function plain(v) {
    return v !== null && typeof v === "object" ? JSON.stringify(v) : v;
  }

  function hex(v) {
    return typeof v === "number" && v > 9 ? "0x" + v.toString(16) : plain(v);
  }

  function forensics(f) {
    const box = el("div", "forensics");
    box.append(el("h4", null, "Where the vCPUs were when it was stopped"));
    if (Array.isArray(f) && f.length && f.every((v) => v && typeof v === "object")) {
      const keys = [];
      for (const v of f) for (const k of Object.keys(v)) if (!keys.includes(k)) keys.push(k);
      box.append(table(f.map((v) => keys.map((k) => (k === "rip" ? hex(v[k]) : plain(v[k])))), keys));
    } else box.append(el("pre", "json", JSON.stringify(f, null, 2)));
    return box;
  }

  function kvmStats(stats) {
    const det = el("details", "kvm");
    const rows = [];
    for (const group of ["vm", "vcpu"]) {
      const m = stats && stats[group];
      if (!m || typeof m !== "object") continue;
      for (const k of Object.keys(m)) if (m[k]) rows.push([group + "." + k, plain(m[k])]);
    }
    rows.sort((a, b) => (Number(b[1]) || 0) - (Number(a[1]) || 0));
    det.append(el("summary", null, "KVM counters (" + rows.length + " non-zero)"));
    det.addEventListener("toggle", () => {
      if (det.childElementCount === 1) det.append(table(rows));
    });
    return det;
  }

  function fill(box, t) {
    box.append(facts(t));
    if (t.subtests) box.append(subtests(t.subtests));
    if (t.forensics) box.append(forensics(t.forensics));
    if (t.excerpt) {
      box.append(el("h4", null, "End of the log"));
      box.append(el("pre", "log", t.excerpt));
    }
    if (t.kvm_stats) box.append(kvmStats(t.kvm_stats));
  }

  function row(t) {
    const item = el("div", "test st-" + t.status);
    item.dataset.status = t.status;
    const head = el("div", "head");
    head.append(el("span", "badge st-" + t.status, label(t.status)), el("span", "name", t.label), el("span", "dur", seconds(t.duration_s)));
    head.append(t.subtests ? subtestBar(t.subtests) : el("span", "bar-none"));
    head.append(el("span", "reason", t.reason || ""));
    item.append(head);
    const more = el("details", "more");
    more.append(el("summary", null, "details"));
    if (t.status !== "pass") {
      fill(more, t);
      more.open = true;
    } else {
      more.addEventListener("toggle", () => {
        if (more.childElementCount === 1) fill(more, t);
      });
    }
    item.append(more);
    return item;
  }

  // --- the list ----------------------------------------------------------------

  const section = document.getElementById("tests");
  const controls = el("div", "controls");
  const buttons = {};
  for (const s of STATUSES) {
    if (!counts[s]) continue;
    const b = el("button", "toggle st-" + s, label(s) + " " + counts[s]);
    b.type = "button";
    b.dataset.status = s;
    b.addEventListener("click", () => {
      if (state.status.has(s)) state.status.delete(s);
      else state.status.add(s);
      changed();
    });
    buttons[s] = b;
    controls.append(b);
  }
  const search = el("input", "search");
  search.type = "search";
  search.placeholder = "search by name";
  search.setAttribute("aria-label", "search by name");
  let typing = null;
  search.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      state.q = search.value;
      changed();
    }, 150);
  });
  const sort = el("select", "sort");
  sort.setAttribute("aria-label", "order");
  for (const k of Object.keys(SORTS)) {
    const o = el("option", null, SORTS[k]);
    o.value = k;
    sort.append(o);
  }
  sort.addEventListener("change", () => {
    state.sort = sort.value;
    changed();
  });
  const shown = el("span", "shown");
  shown.id = "shown";
  controls.append(search, sort, shown);
  const list = el("div", "list");
  list.id = "list";
  const moreRows = el("button", "more-rows");
  moreRows.type = "button";
  section.append(controls, list, moreRows);

  let picked = [];
  let rendered = 0;
  let state = readState();

  function appendRows() {
    const end = Math.min(rendered + CHUNK, picked.length);
    const frag = document.createDocumentFragment();
    for (; rendered < end; rendered++) frag.append(row(tests[picked[rendered]]));
    list.append(frag);
    const left = picked.length - rendered;
    moreRows.hidden = left === 0;
    moreRows.textContent = "show " + Math.min(left, CHUNK) + " more (" + left + " not shown)";
  }

  function render() {
    for (const s of Object.keys(buttons)) buttons[s].classList.toggle("on", state.status.has(s));
    if (search.value !== state.q) search.value = state.q;
    sort.value = state.sort;
    picked = selected();
    rendered = 0;
    list.replaceChildren();
    shown.textContent = "showing " + picked.length + " of " + tests.length + " tests";
    appendRows();
    charts(picked);
  }

  function changed() {
    writeState();
    render();
  }

  moreRows.addEventListener("click", appendRows);
  if ("IntersectionObserver" in window) {
    new IntersectionObserver((seen) => {
      if (seen.some((e) => e.isIntersecting) && rendered < picked.length) appendRows();
    }, { rootMargin: "800px" }).observe(moreRows);
  }
  window.addEventListener("hashchange", () => {
    state = readState();
    render();
  });
  statusBar();
  render();
  // For tests and the curious: how many tests the page holds, and how long
  // after the start of navigation the first view stood.
  document.body.dataset.rendered = String(tests.length);
  document.body.dataset.readyMs = String(Math.round(performance.now()));
})();
