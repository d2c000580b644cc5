// lorakit review: the page. Plain JS, no build step, nothing fetched from elsewhere.
"use strict";
const TOKEN = document.body.dataset.token;
const READ_ONLY = document.body.dataset.readOnly === "true";
const $ = (id) => document.getElementById(id);
const state = { page: 1, pages: 1, current: null, items: [], shown: "", diskVersion: "", picked: new Set(), lastPick: null };

function params(extra = {}) {
  const p = new URLSearchParams({ q: $("q").value, folder: $("folder").value, page: state.page });
  if ($("no_caption").checked) p.set("no_caption", "1");
  if ($("flagged").checked) p.set("flagged", "1");
  if ($("duplicates").checked) p.set("duplicates", "1");
  if ($("unreadable").checked) p.set("unreadable", "1");
  if ($("smaller").value) p.set("smaller_than", $("smaller").value);
  for (const [k, v] of Object.entries(extra)) p.set(k, v);
  return p;
}

function query() {  // the filters as the bulk endpoint takes them
  return Object.fromEntries([...params().entries()].filter(([k]) => k !== "page"));
}

async function post(action, body) {
  const response = await fetch(`/api/${action}`, {
    method: "POST", headers: { "Content-Type": "application/json", "X-Lorakit-Token": TOKEN },
    body: JSON.stringify(body),
  });
  const data = await response.json();
  return { ok: response.ok, status: response.status, data };
}

// the caption box was filled by the page, not typed in (editor.js redraws its chips on this)
function captionSet(text) { $("caption").value = text; $("caption").dispatchEvent(new Event("lorakit:caption")); }

function say(text) { $("message").textContent = text; }
// stays until the next bulk edit, tagger run or undo; an error is shown as one
function result(text, error = false) { $("result").textContent = text; $("result").classList.toggle("error", error); }

let loads = 0;
async function load({ tags = false } = {}) {
  const mine = ++loads;  // an answer to an older request (a save's reload) never replaces a newer one
  if (tags) state.tagsStale = true;  // kept for the newest answer, which fetches the panel
  const job = jobId();  // grouping near-duplicates of 20,000 images takes a while: its progress shows
  const request = fetch(`/api/images?${params({ job })}`);
  const response = $("duplicates").checked ? await withProgress(job, "near-duplicates", request) : await request;
  const data = await response.json();
  if (mine !== loads) return;
  state.pages = data.pages; state.items = data.items;
  $("count").textContent = `${data.count} of ${data.total} images`;
  if ($("bulk-count")) { $("bulk-count").textContent = data.count; showPicked(); }
  for (const where of ["", "-top"]) { $("page" + where).textContent = data.page; $("pages" + where).textContent = data.pages; }
  const folder = $("folder");
  if (folder.options.length === 1) {
    for (const f of data.folders) {
      const label = f.repeats ? `${f.folder} (${f.images} × ${f.repeats} repeats)` : `${f.folder} (${f.images})`;
      folder.add(new Option(label, f.folder));
    }
  }
  state.folders = Object.fromEntries(data.folders.map((f) => [f.folder, f]));
  render(data.items);
  // turning pages keeps the tag panel: it is fetched again only when the filters or captions change
  if (state.tagsStale || new URLSearchParams(query()).toString() !== state.tagsKey) { state.tagsStale = false; loadTags(); }
}

function render(items) {
  const gallery = $("gallery");
  gallery.replaceChildren();
  let grid = null, last = null;
  for (const item of items) {
    const section = item.group ? `near-duplicates, group ${item.group}` : item.folder;
    if (section !== last) {
      const heading = document.createElement("h3");
      const f = state.folders[item.folder];
      heading.textContent = item.group ? section
        : f && f.repeats ? `${f.folder}: ${f.images} images × ${f.repeats} repeats` : section;
      grid = document.createElement("div"); grid.className = "grid";
      gallery.append(heading, grid); last = section;
    }
    const card = document.createElement("div");
    card.className = "card" + (item.caption === null ? " nocaption" : "") + (item.error ? " broken" : "");
    card.dataset.rel = item.rel;
    card.title = item.rel;  // which file: near-duplicates look alike
    card.tabIndex = 0; card.setAttribute("role", "button");
    const caption = document.createElement("p");
    caption.textContent = item.caption === null ? "(no caption)" : item.caption;
    if (item.error) {  // no thumbnail to show: say why instead of a broken picture
      const why = document.createElement("div");
      why.className = "unreadable"; why.textContent = `cannot be read: ${item.error}`;
      card.append(why, caption);
    } else {
      const img = document.createElement("img");
      img.loading = "lazy"; img.alt = item.rel;
      img.src = `/thumb?rel=${encodeURIComponent(item.rel)}`;
      card.append(img, caption);
    }
    if (!READ_ONLY) {  // picked by hand (shift: the range from the last one), for a bulk edit of just these
      const pick = document.createElement("input");
      pick.type = "checkbox"; pick.className = "pick"; pick.checked = state.picked.has(item.rel);
      pick.setAttribute("aria-label", `pick ${item.rel}`);
      pick.addEventListener("click", (e) => { e.stopPropagation(); picked(item.rel, pick.checked, e.shiftKey); });
      card.prepend(pick);
    }
    card.addEventListener("click", () => openDetail(item.rel));
    card.addEventListener("keydown", (e) => { if (e.key === "Enter") openDetail(item.rel); });
    grid.append(card);
  }
}

const ROW = 22;  // px: the tag list shows only the rows in view, however many tags there are

function picked(rel, on, range) {
  const rels = state.items.map((i) => i.rel);
  const from = rels.indexOf(state.lastPick), to = rels.indexOf(rel);
  const span = range && from >= 0 ? rels.slice(Math.min(from, to), Math.max(from, to) + 1) : [rel];
  for (const r of span) { if (on) state.picked.add(r); else state.picked.delete(r); }
  state.lastPick = rel;
  for (const box of document.querySelectorAll(".card .pick")) {
    box.checked = state.picked.has(box.closest(".card").dataset.rel);
  }
  showPicked();
}

function showPicked() {
  if (!$("bulk-what")) return;
  const n = state.picked.size;
  $("bulk-what").textContent = n ? `${n} picked` : `${$("bulk-count").textContent} matching`;
  $("unpick").hidden = !n;
}

async function loadTags() {
  const key = new URLSearchParams(query()).toString();
  state.tagsKey = key;
  const data = await (await fetch(`/api/tags?${params()}`)).json();
  if (state.tagsKey !== key) return;  // the filters changed meanwhile: a newer answer is coming
  state.tags = data.tags;
  $("tags").scrollTop = 0;
  $("tag-count").textContent = data.tags.length;
  drawTags();
}

function drawTags() {
  const list = $("tags"), tags = state.tags || [];
  const first = Math.max(0, Math.floor(list.scrollTop / ROW) - 5);
  const last = Math.min(tags.length, first + Math.ceil((list.clientHeight || 600) / ROW) + 10);
  const rows = [];
  for (let k = first; k < last; k++) {
    const t = tags[k];
    const li = document.createElement("li");
    li.style.top = `${k * ROW}px`;
    li.tabIndex = 0;
    const name = document.createElement("span");
    name.textContent = t.tag.replaceAll("_", " ");
    if (t.implied) name.className = "implied";
    if (t.unknown) name.className = "unknown";
    const n = document.createElement("span"); n.textContent = t.images;
    li.append(name, n);
    li.title = [t.implied ? `implied by another tag of the caption in ${t.implied} of its ${t.images}` : "",
      t.unknown ? "unknown to the vocabulary" : ""]
      .filter(Boolean).join("; ");
    const pick = () => { $("q").value = t.tag.replaceAll("_", " "); state.page = 1; load(); };
    li.addEventListener("click", pick);
    li.addEventListener("keydown", (e) => { if (e.key === "Enter") pick(); });
    rows.push(li);
  }
  const spacer = document.createElement("div");
  spacer.style.height = `${tags.length * ROW}px`;
  list.replaceChildren(spacer, ...rows);
}

function dirty() { return !READ_ONLY && state.current !== null && $("caption").value !== state.shown; }

function mayLeave() {  // unsaved text is never dropped without asking
  return !dirty() || confirm(`Discard your unsaved changes to ${state.current.rel}?`);
}

async function openDetail(rel, { force = false } = {}) {
  if (!force && state.current && !mayLeave()) return false;
  const item = await (await fetch(`/api/image?${new URLSearchParams({ rel })}`)).json();
  state.current = item;
  $("detail").hidden = false; $("conflict").hidden = true; say("");
  $("full").hidden = Boolean(item.error);
  if (!item.error) $("full").src = `/file?rel=${encodeURIComponent(rel)}`;
  $("info").textContent = item.error ? `${rel}: cannot be read (${item.error})` :
    `${rel} · ${item.width}×${item.height} ${item.format || ""} · ` +
    `${item.file_size ? Math.round(item.file_size / 1024) + " KiB" : ""}` +
    (item.score !== null && item.score !== undefined ? ` · scan score ${item.score.toFixed(2)}` : "");
  state.shown = item.text || ""; captionSet(state.shown);
  showTrainer(item);
  const probs = item.probabilities;
  $("probs").hidden = !probs;
  if (probs) { showProbabilities(probs); }
  if (!$("detail").contains(document.activeElement)) ($("caption").readOnly ? $("close") : $("caption")).focus();
  return true;
}

function closeDetail() {  // the keyboard goes back to the card it came from
  if (!mayLeave()) return;
  const rel = state.current && state.current.rel;
  $("detail").hidden = true; state.current = null;
  const card = [...document.querySelectorAll(".card")].find((c) => c.dataset.rel === rel);
  if (card) card.focus();
}

async function step(delta) {  // the next or previous image, across page boundaries
  if (!state.current) return;
  const at = state.items.findIndex((i) => i.rel === state.current.rel);
  const next = at + delta;
  if (next >= 0 && next < state.items.length) { await openDetail(state.items[next].rel); return; }
  const page = state.page + (delta > 0 ? 1 : -1);
  if (page < 1 || page > state.pages || !mayLeave()) return;
  state.page = page;
  await load();
  const item = delta > 0 ? state.items[0] : state.items[state.items.length - 1];
  if (item) await openDetail(item.rel, { force: true });
}

function showProbabilities(probs) {
  const list = $("prob-list");
  list.replaceChildren();
  const ratings = probs.tags.filter((t) => t.category === 9);  // kept apart: not a caption tag here
  $("rating").textContent = ratings.map((t) => `${t.tag} ${t.p.toFixed(2)}`).join(", ") || "(none)";
  for (const t of probs.tags.filter((t) => t.category !== 9).slice(0, 60)) {
    const li = document.createElement("li");
    li.textContent = `${t.tag} ${t.p.toFixed(2)}`;
    li.tabIndex = 0;
    const add = () => addToLine1([t.tag]);
    li.addEventListener("click", add);
    li.addEventListener("keydown", (e) => { if (e.key === "Enter") add(); });
    list.append(li);
  }
  let timer = null;
  const update = () => {
    const th = parseFloat($("threshold").value);
    $("threshold-value").textContent = th.toFixed(2);
    clearTimeout(timer);
    timer = setTimeout(async () => {  // the server composes it, as tag auto would: trigger, pruning
      const rel = state.current.rel;
      const answer = await (await fetch(`/api/rethreshold?${new URLSearchParams({ rel, general: th })}`)).json();
      if (state.current && state.current.rel === rel) { state.preview = answer.tags || []; $("preview").textContent = state.preview.join(", "); }
    }, 120);
  };
  $("threshold").oninput = update;
  update();
}

function addToLine1(tags, replace = false) {  // the caption's other lines stay as they are
  const [first, ...rest] = $("caption").value.split("\n");
  const have = replace ? [] : first.split(",").map((t) => t.trim()).filter(Boolean);
  const keys = new Set(have.map((t) => t.toLowerCase().replaceAll(" ", "_")));
  for (const tag of tags) {
    const k = tag.toLowerCase().replaceAll(" ", "_");
    if (!keys.has(k)) { have.push(tag); keys.add(k); }
  }
  captionSet([have.join(", "), ...rest].join("\n"));
}

async function save(anyway = false) {
  const item = state.current;
  if (!item || READ_ONLY) return;
  if ($("caption").value === state.shown && !anyway) { say("nothing changed: nothing to save"); return; }
  const version = anyway ? state.diskVersion : item.version;
  const result = await post("caption", { rel: item.rel, version, caption: $("caption").value });
  if (result.status === 409) {  // shown side by side; nothing was written
    state.diskVersion = result.data.version;
    $("conflict").hidden = false;
    $("disk").textContent = result.data.disk === null ? "(no caption file)" : result.data.disk;
    $("yours").textContent = result.data.yours;
    say(result.data.error);
    return;
  }
  if (!result.ok) { say(result.data.error); return; }
  state.current = result.data;
  state.shown = result.data.text; captionSet(state.shown);  // what was written, as it will be read back
  $("conflict").hidden = true;
  say("saved (tag undo reverts it)");
  await load({ tags: true });
}

async function complete() {
  const prefix = $("add-tag").value;
  if (!prefix) return;
  const data = await (await fetch(`/api/complete?${new URLSearchParams({ prefix })}`)).json();
  $("complete").replaceChildren(...data.tags.map((t) => new Option(t.tag)));
}

function addTag() {
  const tag = $("add-tag").value.trim();
  if (!tag) return;
  addToLine1([tag]);  // the tags are line 1, whatever lines follow
  $("add-tag").value = "";
}

const list = (text) => text.split(",").map((t) => t.trim()).filter(Boolean);

async function bulk(event) {
  event.preventDefault();
  const replace = list($("bulk-replace").value).map((pair) => pair.split("=").map((s) => s.trim()))
    .filter((pair) => pair.length === 2);
  const body = { query: query(), add: list($("bulk-add").value), remove: list($("bulk-remove").value), replace };
  if (state.picked.size) body.rels = [...state.picked];
  if (!body.add.length && !body.remove.length && !body.replace.length) return;
  const job = jobId();  // 20,000 captions are read, then written: the progress shows meanwhile
  const preview = await withProgress(job, "bulk preview", post("bulk", { ...body, job, dry_run: true }));
  if (!preview.ok) { result(preview.data.error, true); return; }
  const sample = preview.data.sample.map(([caption, removed, added]) =>
    `${caption}: ${removed ? "−" + removed : ""}${removed && added ? " " : ""}${added ? "+" + added : ""}`).join("\n");
  if (!preview.data.changed.length) { result(`bulk: none of the ${preview.data.of} matching captions would change`); return; }
  const which = state.picked.size ? "picked" : "matching";
  if (!confirm(`${preview.data.changed.length} of the ${preview.data.of} ${which} captions will change, e.g.\n${sample}`)) return;
  const done = await withProgress(job, "bulk edit", post("bulk", { ...body, job }));
  const failed = done.ok && done.data.failed.length ? `; ${done.data.failed.length} could not be written: ` +
    done.data.failed.slice(0, 3).join("; ") : "";
  result(done.ok ? `bulk: changed ${done.data.changed.length} of ${done.data.of} captions${failed}` : done.data.error,
    !done.ok || Boolean(failed));
  if (done.ok) for (const id of ["bulk-add", "bulk-remove", "bulk-replace"]) $(id).value = "";
  load({ tags: true });
}


let timer = null;
$("q").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => { state.page = 1; load(); }, 200); });
for (const id of ["folder", "no_caption", "flagged", "duplicates", "unreadable", "smaller"]) {
  $(id).addEventListener("change", () => { state.page = 1; load(); });
}
$("prev").addEventListener("click", () => { if (state.page > 1) { state.page--; load(); } });
$("next").addEventListener("click", () => { if (state.page < state.pages) { state.page++; load(); } });
$("close").addEventListener("click", closeDetail);
$("tags").addEventListener("scroll", drawTags);
for (const id of ["prev-top", "next-top"]) {
  $(id).addEventListener("click", () => $(id.replace("-top", "")).click());
}
window.addEventListener("beforeunload", (e) => { if (dirty()) e.preventDefault(); });

function typing() {
  const el = document.activeElement;
  return el && (el.tagName === "TEXTAREA" || (el.tagName === "INPUT" && !["checkbox", "range"].includes(el.type)));
}

document.addEventListener("keydown", (e) => {
  const open = !$("detail").hidden;
  if (e.key === "Escape" && open) { e.preventDefault(); closeDetail(); return; }
  if (open && (e.ctrlKey || e.metaKey) && (e.key === "s" || e.key === "Enter")) { e.preventDefault(); save(); return; }
  if (open && (e.key === "ArrowLeft" || e.key === "ArrowRight") && (e.altKey || !typing())) {
    e.preventDefault();
    step(e.key === "ArrowRight" ? 1 : -1);
  }
});
if (!READ_ONLY) {
  $("save").addEventListener("click", () => save());
  $("save-anyway").addEventListener("click", () => save(true));
  $("add-tag").addEventListener("input", complete);
  $("add-tag").addEventListener("change", addTag);
  $("add-tag").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); addTag(); } });
  $("bulk").addEventListener("submit", bulk);
  $("unpick").addEventListener("click", () => { state.picked.clear(); picked(null, false, false); });
  for (const action of ["undo", "redo"]) {  // what it will change is shown before it runs
    $(action).addEventListener("click", async () => {
      const preview = await post(action, { dry_run: true });
      if (!preview.ok) { result(preview.data.error, true); return; }
      const files = preview.data.restored, conflicts = preview.data.conflicts;
      const list = files.slice(0, 10).join("\n") + (files.length > 10 ? `\n… and ${files.length - 10} more` : "");
      const warn = conflicts.length ? `\n\n${conflicts.length} of them changed since ` +
        `(${conflicts.slice(0, 3).join(", ")}): ${action} overwrites those changes.` : "";
      const n = files.length === 1 ? "1 caption changes" : `${files.length} captions change`;
      if (!confirm(`${preview.data.notes.join("; ")}: ${n}.\n${list}${warn}`)) return;
      const done = await post(action, { force: conflicts.length > 0 });
      result(done.ok ? `${action}: ${done.data.notes.join("; ")} (${done.data.restored.length} captions)` : done.data.error,
        !done.ok);
      load({ tags: true });
    });
  }
  $("take-disk").addEventListener("click", async () => {  // the card shows the disk's caption too
    await openDetail(state.current.rel, { force: true });
    load({ tags: true });
  });
  $("use-preview").addEventListener("click", () => addToLine1(state.preview || [], true));
}
// after every script of the page has run (tasks.js, editor.js and trainer.js define what load uses)
window.addEventListener("DOMContentLoaded", async () => { await rescan(); load(); loadExcluded(); });
document.addEventListener("visibilitychange", async () => {  // back from the terminal or an editor
  if (document.visibilityState === "visible" && await rescan()) { load({ tags: true }); loadExcluded(); loadTraining(); }
});

async function rescan() {  // edits made elsewhere since the page read the folder
  const answer = await fetch("/api/rescan");
  return answer.ok && (await answer.json()).changed;
}
