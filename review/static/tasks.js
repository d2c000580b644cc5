// lorakit review: long requests (a bulk edit of 20,000 captions, grouping near-duplicates, the
// tagger on a selection) with their progress, polled from /api/progress under a job id the page
// picks; and `tag auto` on the picked (or matching) images.
"use strict";

function jobId() { return Math.random().toString(36).slice(2, 12); }

// Runs `request` (a promise) while showing what the server says it has done under `job`.
async function withProgress(job, label, request) {
  const bar = $("progress"), text = $("progress-text");
  let running = true;
  const poll = async () => {
    while (running) {
      await new Promise((r) => setTimeout(r, 250));
      if (!running) break;
      const p = await (await fetch(`/api/progress?${new URLSearchParams({ job })}`)).json();
      if (!running || !p.total) continue;
      $("progress-box").hidden = false;
      bar.max = p.total; bar.value = p.done;
      text.textContent = `${label}: ${p.stage} ${p.done.toLocaleString()} of ${p.total.toLocaleString()}`;
    }
  };
  poll();
  try { return await request; } finally { running = false; $("progress-box").hidden = true; }
}

async function tagAuto(event) {
  event.preventDefault();
  const which = state.picked.size ? "picked" : "matching";
  const n = state.picked.size || Number($("bulk-count").textContent);
  const mode = $("tagger-mode").value;
  const how = { merge: "its tags are merged with each caption's own", overwrite: "each caption's line 1 is replaced",
    append: "its tags are appended", skip: "only images without a caption get one" }[mode];
  if (!confirm(`Run the tagger on the ${n} ${which} images? ${how[0].toUpperCase() + how.slice(1)} ` +
    "(other lines stay; tag undo reverts it).")) return;
  const body = { query: query(), mode, job: jobId() };
  if (state.picked.size) body.rels = [...state.picked];
  const done = await withProgress(body.job, "tagger", post("tag-auto", body));
  if (!done.ok) { result(done.data.error, true); return; }
  const failed = done.data.failed.length ? `; ${done.data.failed.length} failed: ${done.data.failed.slice(0, 3).join("; ")}` : "";
  const notes = done.data.notes.length ? ` (${done.data.notes.join("; ")})` : "";  // the demo model says so, as in the CLI
  result(`tagger: changed ${done.data.changed.length} of ${done.data.of} captions${failed}${notes}`, Boolean(failed));
  load({ tags: true });
}

if (!READ_ONLY && $("tag-auto")) $("tag-auto").addEventListener("click", tagAuto);
