// lorakit review: the caption editor. Line 1's tags as chips (remove, reorder, filter by one) and
// tag completion inside the caption box. The box stays the one source of truth: every change
// here is written back into it, so Save and the unsaved-changes check see it as typed text.
"use strict";
(() => {
  const box = $("caption"), chips = $("chips"), suggest = $("suggest");
  const tagKey = (tag) => tag.trim().toLowerCase().split(/\s+/).join("_");

  function parts() {  // line 1's tags, and the lines after it untouched
    const [first, ...rest] = box.value.split("\n");
    return { tags: first.split(",").map((t) => t.trim()).filter(Boolean), rest };
  }

  // the page writes the box through captionSet, so app.js and the chips hear of it as of any fill
  function write(tags, focusAt = null) {
    const { rest } = parts();
    captionSet([tags.join(", "), ...rest].join("\n"));
    if (focusAt !== null) {
      const target = chips.children[Math.min(focusAt, chips.children.length - 1)];
      (target || box).focus();
    }
  }

  function remove(at, focus = false) {
    const { tags } = parts();
    tags.splice(at, 1);
    write(tags, focus ? at : null);
  }

  function move(from, to, focus = false) {  // the chip dropped on another takes its place
    const { tags } = parts();
    if (from === to || to < 0 || to >= tags.length) return;
    const [tag] = tags.splice(from, 1);
    tags.splice(to, 0, tag);
    write(tags, focus ? to : null);
  }

  function filterBy(tag) {  // as a row of the side panel's tag list does
    $("q").value = tag.replaceAll("_", " ");
    state.page = 1;
    load();
  }

  let dragFrom = null;

  function drawChips() {
    const { tags } = parts();
    chips.replaceChildren(...tags.map((tag, at) => {
      const li = document.createElement("li");
      li.className = "chip"; li.tabIndex = 0; li.dataset.index = at;
      const name = document.createElement("span");
      name.className = "chip-name"; name.textContent = tag;
      name.addEventListener("click", () => filterBy(tag));
      li.append(name);
      li.title = READ_ONLY ? "click: show the images with this tag"
        : "click: show the images with this tag · drag, or [ and ] (Alt+Shift+← →), to move it · Delete removes it";
      if (!READ_ONLY) {
        const x = document.createElement("button");
        x.type = "button"; x.className = "chip-x"; x.textContent = "×"; x.tabIndex = -1;
        x.setAttribute("aria-label", `remove ${tag}`);
        x.addEventListener("click", () => remove(at));
        li.append(x);
        li.draggable = true;
        li.addEventListener("dragstart", (e) => {
          dragFrom = at;
          e.dataTransfer.effectAllowed = "move";
          e.dataTransfer.setData("text/plain", tag);
          li.classList.add("dragging");
        });
        li.addEventListener("dragend", () => { dragFrom = null; li.classList.remove("dragging"); });
        li.addEventListener("dragover", (e) => {
          if (dragFrom === null) return;  // a file or text dragged in from elsewhere is not a chip
          e.preventDefault();
          li.classList.add("drop");
        });
        li.addEventListener("dragleave", () => li.classList.remove("drop"));
        li.addEventListener("drop", (e) => {
          if (dragFrom === null) return;
          e.preventDefault();
          li.classList.remove("drop");
          const from = dragFrom;
          dragFrom = null;
          move(from, at);
        });
      }
      li.addEventListener("keydown", (e) => chipKey(e, at, tag));
      return li;
    }));
    chips.hidden = tags.length === 0;
  }

  function chipKey(e, at, tag) {
    let handled = true;
    const shifted = e.altKey && e.shiftKey;
    if (e.key === "Enter") filterBy(tag);
    else if (READ_ONLY) handled = false;
    else if (e.key === "Delete" || e.key === "Backspace") remove(at, true);
    else if (e.key === "[" || (shifted && e.key === "ArrowLeft")) move(at, at - 1, true);
    else if (e.key === "]" || (shifted && e.key === "ArrowRight")) move(at, at + 1, true);
    else handled = false;
    if (handled) { e.preventDefault(); e.stopPropagation(); }  // not also the next image (app.js)
  }

  // --- completion inside the box ------------------------------------------------------------------

  let asked = 0, timer = null, options = [], lit = -1, accepting = false;

  function fragment() {  // the tag being typed on line 1: from after the last comma to the caret
    const text = box.value, caret = box.selectionStart;
    if (caret !== box.selectionEnd) return null;
    const lineEnd = text.indexOf("\n");
    if (lineEnd !== -1 && caret > lineEnd) return null;
    let start = text.lastIndexOf(",", caret - 1) + 1;
    while (start < caret && /\s/.test(text[start])) start++;
    const typed = text.slice(start, caret);
    return typed.trim() ? { start, end: caret, typed } : null;
  }

  function others(frag) {  // line 1's tags but the one being typed
    const first = box.value.split("\n")[0];
    const before = first.slice(0, frag.start).split(","), after = first.slice(frag.end).split(",").slice(1);
    return new Set([...before, ...after].map(tagKey).filter(Boolean));
  }

  function ask() {
    clearTimeout(timer);
    const frag = fragment();
    if (!frag || READ_ONLY) { close(); return; }
    const mine = ++asked;
    timer = setTimeout(async () => {
      const answer = await (await fetch(`/api/complete?${new URLSearchParams({ prefix: frag.typed })}`)).json();
      const now = fragment();
      if (mine !== asked || !now || now.typed !== frag.typed || document.activeElement !== box) return;  // stale
      const have = others(now);
      show((answer.tags || []).filter((t) => !have.has(tagKey(t.tag))).slice(0, 10));
    }, 120);
  }

  function show(found) {
    options = found; lit = -1;
    if (!found.length) { close(); return; }
    suggest.replaceChildren(...found.map((t, k) => {
      const li = document.createElement("li");
      li.id = `suggest-${k}`; li.setAttribute("role", "option"); li.setAttribute("aria-selected", "false");
      li.textContent = t.tag; li.title = t.alias ? `${t.tag} ← ${t.alias}` : t.tag;  // the list may cut it short
      if (t.alias) {  // came through an alias: the tag it stands for is what goes in
        const via = document.createElement("span");
        via.className = "alias"; via.textContent = ` ← ${t.alias}`;
        li.append(via);
      }
      li.addEventListener("mousedown", (e) => e.preventDefault());  // the box keeps its focus and caret
      li.addEventListener("click", () => accept(k));
      return li;
    }));
    suggest.style.top = `${box.offsetTop + box.offsetHeight}px`;
    suggest.style.left = `${box.offsetLeft}px`;
    suggest.hidden = false;
    box.setAttribute("aria-expanded", "true");
    highlight(-1);
  }

  function close() {
    clearTimeout(timer); asked++;  // an answer on its way is not shown
    suggest.hidden = true; options = []; lit = -1;
    box.setAttribute("aria-expanded", "false");
    box.removeAttribute("aria-activedescendant");
  }

  function highlight(k) {
    lit = k;
    for (const [j, li] of [...suggest.children].entries()) {
      li.setAttribute("aria-selected", String(j === k));
      li.classList.toggle("lit", j === k);
    }
    if (k >= 0) { box.setAttribute("aria-activedescendant", `suggest-${k}`); suggest.children[k].scrollIntoView({ block: "nearest" }); }
    else box.removeAttribute("aria-activedescendant");
  }

  function accept(k) {
    const frag = fragment(), chosen = options[k];
    close();
    if (!frag || !chosen) return;
    const follows = /^\s*,/.test(box.value.slice(frag.end).split("\n")[0]);
    const text = chosen.tag + (follows ? "" : ", ");
    box.focus();
    box.setSelectionRange(frag.start, frag.end);
    accepting = true;  // the input event it fires must not ask again for the tag just taken
    // insertText keeps the box's own undo (Ctrl+Z); setRangeText where a browser lacks it
    if (!document.execCommand("insertText", false, text)) {
      box.setRangeText(text, frag.start, frag.end, "end");
      box.dispatchEvent(new Event("input"));
    }
    accepting = false;
  }

  box.setAttribute("role", "combobox");
  box.setAttribute("aria-autocomplete", "list");
  box.setAttribute("aria-controls", "suggest");
  box.setAttribute("aria-expanded", "false");
  box.addEventListener("input", () => { drawChips(); if (!accepting) ask(); });
  box.addEventListener("lorakit:caption", () => { close(); drawChips(); });
  box.addEventListener("blur", () => setTimeout(() => { if (document.activeElement !== box) close(); }, 150));
  box.addEventListener("click", () => { if (!suggest.hidden) close(); });
  box.addEventListener("keydown", (e) => {
    if (suggest.hidden || e.isComposing || e.ctrlKey || e.metaKey || e.altKey) return;
    const n = options.length;
    if (e.key === "ArrowDown") highlight(lit + 1 >= n ? -1 : lit + 1);
    else if (e.key === "ArrowUp") highlight(lit - 1 < -1 ? n - 1 : lit - 1);
    else if (e.key === "Tab" && !e.shiftKey) accept(Math.max(lit, 0));
    else if (e.key === "Enter" && lit >= 0) accept(lit);
    else if (e.key === "Escape") close();
    else {
      if (["ArrowLeft", "ArrowRight", "Home", "End", "PageUp", "PageDown"].includes(e.key)) close();  // caret left the tag
      return;
    }
    e.preventDefault(); e.stopPropagation();  // not the caret, not the next image, not closing the panel
  });
  drawChips();
})();
