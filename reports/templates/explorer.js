// The sample explorer of report.html (safebench/reports/explorer.py writes its data).
// Model text is only ever inserted with textContent; nothing here builds HTML from strings.
(() => {
  "use strict";
  const root = document.getElementById("explorer");
  const data = JSON.parse(document.getElementById("explorer-data").textContent);
  const columns = data.columns;
  const byLabel = new Map(columns.map((c, i) => [c.label, i]));
  const SAFE_MAX = data.safe_cost_max;
  const HARM = data.judge_columns.indexOf("judge_harm");
  // One sample: [prompt, column, sample index, response, reward, cost, oracle reward, oracle cost, refusal, judge]
  const RESPONSE = 3, REWARD = 4, COST = 5, O_REWARD = 6, O_COST = 7, REFUSAL = 8, JUDGE = 9;
  const DEFAULTS = {suite: "", category: "", run: "", cols: [], unsafe: "", safe: "", worse: "", better: "",
                    refused: "", disagree: "", judgediff: "", q: "", prompt: "", sort: "default", page: "1"};
  const LISTS = new Set(["cols"]);

  const unsafe = (cost) => cost !== null && cost > SAFE_MAX;
  function disagrees(s) {  // the cost model against the oracle, or against the judge's harm verdict
    if (s[COST] === null) return false;
    if (s[O_COST] !== null && unsafe(s[O_COST]) !== unsafe(s[COST])) return true;
    const harm = HARM >= 0 && s[JUDGE] ? s[JUDGE][HARM] : null;
    return harm !== null && (harm >= 0.5) !== unsafe(s[COST]);
  }

  // Per prompt and column: its samples and what the filters and sorts ask of them.
  const prompts = data.prompts.map(([suite, category, id, text]) => ({suite, category, id, text, cells: new Map()}));
  for (const s of data.samples) {
    const cells = prompts[s[0]].cells;
    if (!cells.has(s[1])) cells.set(s[1], {samples: []});
    cells.get(s[1]).samples.push(s);
  }
  for (const p of prompts) {
    for (const cell of p.cells.values()) {
      const scored = cell.samples.filter((s) => s[COST] !== null);
      cell.unsafe = scored.some((s) => unsafe(s[COST]));
      cell.safe = scored.length > 0 && !cell.unsafe;
      cell.maxCost = scored.length ? Math.max(...scored.map((s) => s[COST])) : null;
      const rewards = cell.samples.filter((s) => s[REWARD] !== null).map((s) => s[REWARD]);
      cell.reward = rewards.length ? rewards.reduce((a, b) => a + b, 0) / rewards.length : null;
      cell.refused = cell.samples.some((s) => s[REFUSAL]);
      cell.disagrees = cell.samples.some(disagrees);
      cell.byIndex = new Map(cell.samples.map((s) => [s[2], s]));
    }
  }
  // Paired by prompt and sample index: some sample is unsafe (worse) or safe (better) where the
  // same run's SFT sample with that index was the other.
  function changed(p, c, worse) {
    const base = columns[c].baseline, cell = p.cells.get(c), baseCell = base === null ? null : p.cells.get(base);
    if (!cell || !baseCell) return false;
    return cell.samples.some((s) => {
      const b = baseCell.byIndex.get(s[2]);
      return b && s[COST] !== null && b[COST] !== null && unsafe(s[COST]) === worse && unsafe(b[COST]) !== worse;
    });
  }

  let state = {...DEFAULTS};
  function readHash() {
    if (!location.hash.startsWith("#explore")) return false;
    const params = new URLSearchParams(location.hash.slice("#explore".length).replace(/^\?/, ""));
    state = {...DEFAULTS};
    for (const key of Object.keys(DEFAULTS)) {
      if (LISTS.has(key)) state[key] = params.getAll(key);
      else if (params.has(key)) state[key] = params.get(key);
    }
    return true;
  }
  function writeHash() {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(state)) {
      if (LISTS.has(key)) value.forEach((v) => params.append(key, v));
      else if (value !== DEFAULTS[key]) params.set(key, value);
    }
    history.replaceState(null, "", "#explore?" + params.toString());
  }

  function visibleColumns() {
    let shown = state.cols.length ? state.cols.map((l) => byLabel.get(l)).filter((c) => c !== undefined)
                                  : columns.map((_, i) => i);
    for (const key of ["unsafe", "safe", "worse", "better"]) {  // a filter's column is always shown
      const c = byLabel.get(state[key]);
      if (c !== undefined && !shown.includes(c)) shown.push(c);
    }
    if (state.run) shown = shown.filter((c) => columns[c].run === state.run);
    return shown.sort((a, b) => a - b);
  }

  function selected() {
    const shown = visibleColumns();
    const suite = state.suite ? data.suites.indexOf(state.suite) : null;
    const category = state.category ? data.categories.indexOf(state.category) : null;
    const q = state.q.toLowerCase();
    const need = (key) => (state[key] ? byLabel.get(state[key]) ?? -1 : null);
    const wantUnsafe = state.unsafe === "any" ? "any" : need("unsafe");
    const wantSafe = need("safe"), wantWorse = need("worse"), wantBetter = need("better");
    const rows = [];
    for (const p of prompts) {
      if (suite !== null && p.suite !== suite) continue;
      if (category !== null && p.category !== category) continue;
      if (state.prompt && p.id !== state.prompt) continue;
      if (q && !p.text.toLowerCase().includes(q) && !p.id.toLowerCase().includes(q)) continue;
      const cells = shown.map((c) => p.cells.get(c)).filter(Boolean);
      if (!cells.length) continue;
      if (wantUnsafe === "any" ? !cells.some((c) => c.unsafe) : wantUnsafe !== null && !p.cells.get(wantUnsafe)?.unsafe) continue;
      if (wantSafe !== null && !p.cells.get(wantSafe)?.safe) continue;
      if (wantWorse !== null && !changed(p, wantWorse, true)) continue;
      if (wantBetter !== null && !changed(p, wantBetter, false)) continue;
      if (state.refused && !cells.some((c) => c.refused)) continue;
      if (state.disagree && !(cells.some((c) => c.safe) && cells.some((c) => c.unsafe))) continue;
      if (state.judgediff && !cells.some((c) => c.disagrees)) continue;
      const costs = cells.map((c) => c.maxCost).filter((x) => x !== null);
      const rewards = cells.map((c) => c.reward).filter((x) => x !== null);
      rows.push({p, cells, cost: costs.length ? Math.max(...costs) : -Infinity,
                 gap: rewards.length > 1 ? Math.max(...rewards) - Math.min(...rewards) : -Infinity});
    }
    const descending = (key) => (a, b) => (a[key] === b[key] ? 0 : a[key] < b[key] ? 1 : -1);
    if (state.sort === "cost" || state.sort === "gap") rows.sort(descending(state.sort));
    return {rows, shown};
  }

  // --- drawing -------------------------------------------------------------------------------
  function el(tag, props = {}, children = []) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) node.append(child);
    return node;
  }
  const num = (x) => (x === null ? "n/a" : x.toFixed(3));

  function sampleNode(s) {
    const parts = [`#${s[2]}`, `cost ${num(s[COST])}`, `reward ${num(s[REWARD])}`];
    if (s[O_COST] !== null) parts.push(`oracle cost ${num(s[O_COST])} reward ${num(s[O_REWARD])}`);
    if (s[REFUSAL]) parts.push("refusal");
    if (s[JUDGE]) {
      const verdicts = data.judge_columns.map((name, j) => [name.replace(/^judge_/, ""), s[JUDGE][j]])
        .filter(([, v]) => v !== null).map(([name, v]) => `${name} ${Number.isInteger(v) ? v : v.toFixed(2)}`);
      if (verdicts.length) parts.push("judge: " + verdicts.join(", "));
    }
    const cls = "sample" + (unsafe(s[COST]) ? " unsafe" : "") + (disagrees(s) ? " disagree" : "");
    return el("div", {class: cls}, [el("div", {class: "scores", text: parts.join(" · ")}),
                                    el("pre", {class: "response", text: s[RESPONSE]})]);
  }

  const controls = root.querySelector(".controls");
  const table = root.querySelector("table");
  const count = root.querySelector(".count");
  const pager = root.querySelector(".pager");

  function render() {
    const {rows, shown} = selected();
    const size = data.page_size, pages = Math.max(1, Math.ceil(rows.length / size));
    const page = Math.min(Math.max(1, parseInt(state.page, 10) || 1), pages);
    const n = rows.reduce((total, r) => total + r.cells.reduce((t, c) => t + c.samples.length, 0), 0);
    count.textContent = `${rows.length} prompts match (${n} samples)`;
    pager.querySelector(".page").textContent = `page ${page} of ${pages}`;
    pager.querySelector(".prev").disabled = page <= 1;
    pager.querySelector(".next").disabled = page >= pages;
    const head = el("tr", {}, [el("th", {text: "prompt"}), ...shown.map((c) => el("th", {text: columns[c].label}))]);
    const body = rows.slice((page - 1) * size, page * size).map(({p}) => {
      const meta = [data.suites[p.suite], p.id, p.category >= 0 ? data.categories[p.category] : ""].filter(Boolean);
      const cells = shown.map((c) => {
        const cell = p.cells.get(c);
        return el("td", {}, cell ? cell.samples.map(sampleNode) : [el("span", {class: "empty", text: "no sample"})]);
      });
      return el("tr", {"data-prompt": `${data.suites[p.suite]}:${p.id}`}, [
        el("td", {class: "prompt"}, [el("div", {class: "scores", text: meta.join(" · ")}),
                                     el("pre", {text: p.text})]),
        ...cells]);
    });
    table.replaceChildren(el("thead", {}, [head]), el("tbody", {}, body));
  }

  // --- controls ------------------------------------------------------------------------------
  const option = (value, text) => el("option", {value, text});
  function select(key, label, options) {
    const node = el("select", {"data-key": key}, options.map(([v, t]) => option(v, t)));
    controls.append(el("label", {}, [label + " ", node]));
  }
  function checkbox(key, label) {
    controls.append(el("label", {}, [el("input", {type: "checkbox", "data-key": key}), " " + label]));
  }
  const labels = columns.map((c) => [c.label, c.label]);
  select("suite", "suite", [["", "all"], ...data.suites.map((s) => [s, s])]);
  select("category", "category", [["", "all"], ...data.categories.map((s) => [s, s])]);
  if (data.several_runs) select("run", "run", [["", "all"], ...data.runs.map((r) => [r, r])]);
  const methods = el("span", {class: "methods"}, ["methods "]);
  for (const [value] of labels) {
    methods.append(el("label", {}, [el("input", {type: "checkbox", "data-col": value}), " " + value]));
  }
  controls.append(methods);
  select("unsafe", "unsafe in", [["", "—"], ["any", "any shown method"], ...labels]);
  select("safe", "safe in", [["", "—"], ...labels]);
  select("worse", "turned unsafe vs SFT", [["", "—"], ...labels.filter(([l]) => columns[byLabel.get(l)].baseline !== null)]);
  select("better", "turned safe vs SFT", [["", "—"], ...labels.filter(([l]) => columns[byLabel.get(l)].baseline !== null)]);
  checkbox("refused", "refused only");
  checkbox("disagree", "methods disagree");
  checkbox("judgediff", "cost model vs judge/oracle disagree");
  controls.append(el("label", {}, ["search ", el("input", {type: "search", "data-key": "q", placeholder: "prompt text or id"})]));
  controls.append(el("label", {}, ["prompt id ", el("input", {type: "search", "data-key": "prompt", size: "8"})]));
  select("sort", "sort", [["default", "suite, prompt"], ["cost", "highest cost first"], ["gap", "largest reward gap between methods"]]);
  const reset = el("button", {type: "button", text: "reset"});
  controls.append(reset);

  function showState() {
    for (const node of controls.querySelectorAll("[data-key]")) {
      if (node.type === "checkbox") node.checked = Boolean(state[node.dataset.key]);
      else node.value = state[node.dataset.key];
    }
    const shown = new Set(state.cols.length ? state.cols : columns.map((c) => c.label));
    for (const node of controls.querySelectorAll("[data-col]")) node.checked = shown.has(node.dataset.col);
  }
  function changedBy(node) {
    if (node.dataset.col !== undefined) {
      const checked = [...controls.querySelectorAll("[data-col]")].filter((n) => n.checked).map((n) => n.dataset.col);
      state.cols = checked.length === columns.length ? [] : checked;
    } else if (node.dataset.key) {
      state[node.dataset.key] = node.type === "checkbox" ? (node.checked ? "1" : "") : node.value;
    } else {
      return;
    }
    state.page = "1";
    writeHash();
    render();
  }
  controls.addEventListener("change", (event) => changedBy(event.target));
  controls.addEventListener("input", (event) => { if (event.target.type === "search") changedBy(event.target); });
  reset.addEventListener("click", () => { state = {...DEFAULTS}; showState(); writeHash(); render(); });
  for (const [name, step] of [["prev", -1], ["next", 1]]) {
    pager.querySelector("." + name).addEventListener("click", () => {
      state.page = String((parseInt(state.page, 10) || 1) + step);
      writeHash();
      render();
      root.scrollIntoView();
    });
  }
  window.addEventListener("hashchange", () => {
    if (readHash()) { showState(); render(); root.scrollIntoView(); }
  });

  const linked = readHash();
  showState();
  render();
  if (linked) {  // again once the figures above are laid out, which moves the explorer down
    root.scrollIntoView();
    window.addEventListener("load", () => root.scrollIntoView());
  }
  root.dataset.ready = "1";
  performance.mark("explorer-ready");
})();
