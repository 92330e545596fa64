// The search page: plain JS over the HTTP API (/collections, /search, /search/image, thumbnails).
"use strict";
const $ = (id) => document.getElementById(id);
const state = { last: null, offset: 0, k: 40 };

function headers(json) {
  const h = json ? { "Content-Type": "application/json" } : {};
  const key = localStorage.getItem("mbm_key");
  if (key) h["X-API-Key"] = key;
  return h;
}

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function call(url, options) {
  const r = await fetch(url, options);
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

const reranksByDefault = {};  // collection -> whether its text queries re-rank unless told (a calibrated model)

function syncRerank() { $("rerank").checked = Boolean(reranksByDefault[$("collection").value]); }

async function loadCollections() {
  try {
    const list = await call("/collections", { headers: headers(false) });
    const select = $("collection");
    select.innerHTML = "";
    for (const c of list) {
      const o = document.createElement("option");
      o.value = c.name;
      o.textContent = `${c.name} (${c.items} ${c.kind}s)`;
      select.appendChild(o);
      reranksByDefault[c.name] = c.rerank_default > 0;
    }
    syncRerank();
  } catch (e) { status(e.message, true); }
}

function render(result, append) {
  const grid = $("results");
  if (!append) grid.innerHTML = "";
  for (const h of result.hits) {
    const card = document.createElement("article");
    card.className = "hit";
    card.dataset.id = h.id;
    if (h.text === null || h.text === undefined) {
      const img = document.createElement("img");
      img.loading = "lazy";
      img.alt = h.path;
      img.src = `/items/${h.id}/thumbnail?size=256&collection=${encodeURIComponent(result.collection)}`;
      card.appendChild(img);
    } else {
      const t = document.createElement("div");
      t.className = "text";
      t.textContent = h.text;
      card.appendChild(t);
    }
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = `#${h.rank} ${h.score.toFixed(3)}${h.match != null ? " match " + h.match.toFixed(2) : ""} — ${h.path}`;
    card.appendChild(meta);
    const more = document.createElement("button");
    more.type = "button";
    more.className = "more";
    more.textContent = "more like this";
    more.addEventListener("click", () => run({ like: h.id }));
    card.appendChild(more);
    grid.appendChild(card);
  }
  status(`${result.offset + result.hits.length} results · ${result.collection} · generation ${result.generation}`);
}

async function run(query, append) {
  if (append && state.done) return;
  // the fusion head re-ranks against a text: "more like this" (an item) has none
  const body = { ...query, k: state.k, offset: append ? state.offset : 0,
    collection: $("collection").value || null, rerank: $("rerank").checked && !query.like };
  state.last = query;
  if (!append) state.done = false;
  status("searching…");
  try {
    const result = await call("/search", { method: "POST", headers: headers(true), body: JSON.stringify(body) });
    state.offset = body.offset + result.hits.length;
    if (result.hits.length < body.k) state.done = true;  // the last page: scrolling asks for no more
    render(result, append);
  } catch (e) { status(e.message, true); }
}

async function runImage(file) {
  const form = new FormData();
  form.append("file", file);
  form.append("k", String(state.k));
  if ($("collection").value) form.append("collection", $("collection").value);
  form.append("rerank", "0");  // a picture query has no text for the fusion head to score (image collections)
  status(`searching with ${file.name}…`);
  try {
    const result = await call("/search/image", { method: "POST", headers: headers(false), body: form });
    state.last = null;
    render(result, false);
  } catch (e) { status(e.message, true); }
}

$("search-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const q = $("q").value.trim();
  if (q) run({ query: q });
});
$("file").addEventListener("change", (e) => { if (e.target.files[0]) runImage(e.target.files[0]); });
$("rerank").addEventListener("change", () => { if (state.last) run(state.last); });
$("collection").addEventListener("change", () => { syncRerank(); if (state.last) run(state.last); });
$("key-button").addEventListener("click", () => {
  const key = prompt("API key (kept in this browser)", localStorage.getItem("mbm_key") || "");
  if (key !== null) {
    localStorage.setItem("mbm_key", key);
    document.cookie = `mbm_key=${encodeURIComponent(key)}; path=/; SameSite=Strict`;  // thumbnails send it
    loadCollections();
  }
});
document.addEventListener("keydown", (e) => {
  if (e.key === "/" && document.activeElement !== $("q")) { e.preventDefault(); $("q").focus(); }
});
window.addEventListener("scroll", () => {
  if (state.last && window.innerHeight + window.scrollY >= document.body.offsetHeight - 200 && !state.loading) {
    state.loading = true;
    run(state.last, true).finally(() => { state.loading = false; });
  }
});
["dragenter", "dragover"].forEach((t) => document.addEventListener(t, (e) => {
  e.preventDefault(); $("drop").classList.remove("hidden");
}));
["dragleave", "drop"].forEach((t) => document.addEventListener(t, (e) => {
  e.preventDefault(); $("drop").classList.add("hidden");
  if (t === "drop" && e.dataTransfer.files[0]) runImage(e.dataTransfer.files[0]);
}));
loadCollections();
