// lorakit review: excluding an image (moved to DIR/.lorakit/excluded with its captions, never
// deleted) and restoring it.
"use strict";

async function loadExcluded() {
  const data = await (await fetch("/api/excluded")).json();
  const list = $("excluded");
  list.replaceChildren();
  if (data.error) { const li = document.createElement("li"); li.className = "warn"; li.textContent = data.error; list.append(li); }
  for (const rel of data.excluded) {
    const li = document.createElement("li");
    li.textContent = rel + " ";
    if (!READ_ONLY) {
      const button = document.createElement("button");
      button.textContent = "restore";
      button.addEventListener("click", async () => {
        const answer = await post("restore", { rel });
        if (!answer.ok) result(answer.data.error, true);
        loadExcluded(); load({ tags: true }); loadTraining();
      });
      li.append(button);
    }
    list.append(li);
  }
}

if (!READ_ONLY) {
  $("exclude").addEventListener("click", async () => {
    if (!mayLeave()) return;  // unsaved text is asked about first, as on closing
    const answer = await post("exclude", { rel: state.current.rel });
    if (answer.ok) {
      $("detail").hidden = true; state.current = null;
      if (answer.data.notes.length) result(answer.data.notes.join("; "));
      load({ tags: true }); loadExcluded(); loadTraining();
    } else { say(answer.data.error); }
  });
}
