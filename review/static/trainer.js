// lorakit review: what the trainer will see (review/trainer.py, from train's own code): per image
// its bucket, the scale to reach it and its caption's CLIP tokens; per folder images × repeats
// and a bucket histogram.
"use strict";

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

function showTrainer(item) {  // the detail panel's lines about this image
  const box = $("trainer-image");
  const t = item.trainer;
  box.hidden = !t;
  if (!t) return;
  const [bw, bh] = t.bucket;
  const scale = t.upscaled ? `enlarged ×${t.scale.toFixed(2)}: the image is smaller than its bucket`
    : `scaled ×${t.scale.toFixed(2)}`;
  const trains = t.trains ? `${plural(t.repeats, "repeat")}${t.regularisation ? " (regularisation)" : ""}`
    : "not trained by these settings (no N_name folder of the config holds it)";
  const over = t.tokens > t.max_tokens;
  const caption = t.source === "line 1" ? `line 1: ${t.tokens} of ${t.max_tokens} tokens`
    : `no caption: train reads ${t.source}, "${t.caption}" (${plural(t.tokens, "token")})`;
  const rows = [[`bucket ${bw}×${bh}, ${scale}`, t.upscaled], [trains, !t.trains],
    [caption + (over ? `: cut off past ${t.max_tokens}` : ""), over]];
  const counts = t.other_lines.map((n) => plural(n, "token")).join(", ");
  if (t.lines_rule) {  // the config's enable_wildcard or caption_recipe trains the further lines too
    const long = t.other_lines.some((n) => n > t.max_tokens);
    rows.push([`trains ${t.lines_rule}` + (counts ? ` (lines 2+: ${counts})` : ""), long]);
  } else if (t.other_lines.length) {  // kept in the file; train reads line 1 only
    rows.push([`lines 2+ (${counts}) are kept but not trained: train reads line 1`, false]);
  }
  box.replaceChildren();
  for (const [text, warn] of rows) {
    const li = document.createElement("li");
    li.textContent = text;
    if (warn) li.className = "warn";
    box.append(li);
  }
}

let recount = null;
function trainerFollowsTheBox() {  // the counts follow the typing (and what a save wrote)
  clearTimeout(recount);
  recount = setTimeout(async () => {
    const item = state.current;
    if (!item || !item.trainer) return;
    const p = new URLSearchParams({ rel: item.rel, text: $("caption").value });
    const answer = await fetch(`/api/trainer-image?${p}`);
    if (answer.ok && state.current === item) { item.trainer = await answer.json(); showTrainer(item); }
  }, 250);
}
$("caption").addEventListener("input", trainerFollowsTheBox);
$("caption").addEventListener("lorakit:caption", trainerFollowsTheBox);

async function loadTraining() {  // the side panel: settings, then per folder
  const data = await (await fetch("/api/training")).json();
  const s = data.settings;
  $("training-settings").textContent = `${s.source}: ${s.resolution.join("×")} px, ` +
    (s.buckets ? `buckets ${s.min}–${s.max} by ${s.step}${s.no_upscale ? ", no upscale" : ""}` : "no buckets") +
    `, ${s.max_tokens} tokens` + (s.problem ? `. ${s.problem}` : "");
  const list = $("training");
  list.replaceChildren();
  for (const f of data.folders) {
    const li = document.createElement("li");
    const head = document.createElement("div");
    head.textContent = f.trained ? `${f.folder}: ${f.trained} × ${plural(f.repeats, "repeat")} = ${f.weighted} per epoch`
      : `${f.folder}: ${plural(f.images, "image")}, not trained`;
    const hist = document.createElement("ol");
    hist.className = "histogram";
    const most = Math.max(...f.buckets.map(([, n]) => n));
    for (const [bucket, n] of f.buckets) {  // every bucket: the bars add up to the folder
      const row = document.createElement("li");
      row.textContent = `${bucket} ${n}`;
      row.style.setProperty("--share", `${Math.round((100 * n) / most)}%`);
      hist.append(row);
    }
    li.append(head, hist);
    if (f.upscaled) {
      const warn = document.createElement("div");
      warn.className = "warn"; warn.textContent = `${f.upscaled} enlarged to reach their bucket`;
      li.append(warn);
    }
    list.append(li);
  }
}
loadTraining();
