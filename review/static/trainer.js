// lorakit review: what the trainer will see (review/trainer.py, from train's own code): per image
// its bucket, the scale to reach it and its caption's CLIP tokens; per folder images × repeats
// and a bucket histogram.
"use strict";

function tokensText(t) {
  return t.tokens.map((n, k) => {
    const over = n > t.max_tokens ? ` (over ${t.max_tokens}: cut off)` : "";
    return `line ${k + 1}: ${n} of ${t.max_tokens} tokens${over}`;
  }).join(" · ");
}

function showTrainer(item) {  // the detail panel's line about this image
  const box = $("trainer-image");
  const t = item.trainer;
  box.hidden = !t;
  if (!t) return;
  const [bw, bh] = t.bucket;
  const scale = t.upscaled ? `enlarged ×${t.scale.toFixed(2)}: the image is smaller than its bucket`
    : `scaled ×${t.scale.toFixed(2)}`;
  const trains = t.trains ? `${t.repeats} repeats${t.regularisation ? " (regularisation)" : ""}`
    : "not trained by these settings (no N_name folder of the config holds it)";
  box.replaceChildren();
  for (const [text, warn] of [[`bucket ${bw}×${bh}, ${scale}`, t.upscaled], [trains, !t.trains],
    [tokensText(t) || "no caption", t.tokens.some((n) => n > t.max_tokens)]]) {
    const li = document.createElement("li");
    li.textContent = text;
    if (warn) li.className = "warn";
    box.append(li);
  }
}

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
    head.textContent = f.trained ? `${f.folder}: ${f.trained} × ${f.repeats} = ${f.weighted} per epoch`
      : `${f.folder}: ${f.images} images, not trained`;
    const hist = document.createElement("ol");
    hist.className = "histogram";
    const most = Math.max(...f.buckets.map(([, n]) => n));
    for (const [bucket, n] of f.buckets.slice(0, 8)) {
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
