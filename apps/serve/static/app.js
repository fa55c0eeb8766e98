// The web chat page: a small client of this server's own /v1/chat/completions (streamed).
// Plain JavaScript, no libraries, nothing fetched from elsewhere: it works offline.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  model: null,
  key: localStorage.getItem("vlm-api-key") || "",
  history: [],   // the conversation as OpenAI messages, images included (each with its own turn)
  pending: [],   // images attached for the next message: {name, url}
  controller: null,
};

function headers() {
  const h = { "Content-Type": "application/json" };
  if (state.key) h["Authorization"] = "Bearer " + state.key;
  return h;
}

function setStatus(text) { $("status").textContent = text; }

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON */ }
  return "HTTP " + response.status;
}

async function loadModel() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (response.status === 401) {
    $("key-box").hidden = false;
    $("model-name").textContent = "API key needed";
    setStatus(await errorText(response));
    return;
  }
  if (!response.ok) { setStatus("could not list the models: " + await errorText(response)); return; }
  const body = await response.json();
  state.model = body.data[0].id;
  $("model-name").textContent = state.model;
  $("key-box").hidden = true;
  setStatus("");
}

// --- images ---------------------------------------------------------------------------------------

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function attach(files) {
  for (const file of files) {
    if (!file.type.startsWith("image/")) { setStatus(file.name + " is not an image"); continue; }
    state.pending.push({ name: file.name, url: await readAsDataURL(file) });
  }
  renderPending();
}

function renderPending() {
  const box = $("pending");
  box.replaceChildren();
  state.pending.forEach((image, i) => {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.src = image.url; img.alt = image.title = image.name;
    const remove = document.createElement("button");
    remove.type = "button"; remove.textContent = "×"; remove.title = "remove " + image.name;
    remove.onclick = () => { state.pending.splice(i, 1); renderPending(); };
    figure.append(img, remove);
    box.append(figure);
  });
  if (state.pending.length) setStatus(state.pending.length + " image(s) attached to the next message");
}

// --- messages -------------------------------------------------------------------------------------

function bubble(role, text, images) {
  $("empty").hidden = true;
  const div = document.createElement("div");
  div.className = "message " + role;
  for (const image of images || []) {
    const img = document.createElement("img");
    img.src = image.url; img.alt = image.name;
    div.append(img);
  }
  const span = document.createElement("span");
  span.className = "text";
  span.textContent = text;
  div.append(span);
  $("messages").append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function systemMessages() {
  const system = $("system").value.trim();
  return system ? [{ role: "system", content: system }] : [];
}

// Reads OpenAI's server-sent events: "data: {chunk}" lines, ending with "data: [DONE]".
async function* sseData(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end).replace(/\r$/, "");
      buffer = buffer.slice(end + 1);
      if (!line.startsWith("data:")) continue;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

async function send(event) {
  event.preventDefault();
  if (state.controller) return;
  const text = $("prompt").value.trim();
  if (!text && !state.pending.length) { setStatus("type a question (and attach an image)"); return; }
  const images = state.pending;
  const content = images.map((image) => ({ type: "image_url", image_url: { url: image.url } }));
  if (text) content.push({ type: "text", text });
  const user = { role: "user", content };
  const userBubble = bubble("user", text, images);
  const answer = bubble("assistant streaming", "");
  const answerText = answer.querySelector(".text");
  state.pending = []; renderPending(); $("prompt").value = "";
  state.controller = new AbortController();
  $("send").hidden = true; $("stop").hidden = false;
  setStatus("waiting for the model…");
  const body = {
    model: state.model, stream: true, stream_options: { include_usage: true },
    messages: [...systemMessages(), ...state.history, user],
    max_tokens: Number($("max-tokens").value) || undefined,
    temperature: Number($("temperature").value) || 0,
  };
  let reply = "", finish = null, usage = null, failure = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: state.controller.signal,
    });
    if (!response.ok) {
      failure = await errorText(response);
      if (response.status === 401) $("key-box").hidden = false;
    } else {
      setStatus("answering…");
      for await (const chunk of sseData(response)) {
        if (chunk.error) { failure = chunk.error.message; break; }
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) { reply += choice.delta.content; answerText.textContent = reply; }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
        answer.scrollIntoView({ block: "end" });
      }
    }
  } catch (err) {
    failure = err.name === "AbortError" ? "stopped" : String(err);
  }
  answer.classList.remove("streaming");
  state.controller = null;
  $("send").hidden = false; $("stop").hidden = true;
  if (failure !== null) {
    // The turn did not happen: take it back, keep what was typed and attached for another try.
    userBubble.remove(); answer.remove();
    bubble("error", failure);
    $("prompt").value = text; state.pending = images; renderPending();
    setStatus("not sent: " + failure);
    return;
  }
  state.history.push(user, { role: "assistant", content: reply });
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = usage ? `${usage.prompt_tokens} prompt + ${usage.completion_tokens} reply tokens` : "";
  if (finish === "length") meta.textContent += " (cut at max tokens)";
  answer.append(meta);
  answer.scrollIntoView({ block: "end" });
  answer.dataset.done = "true";
  setStatus("");
}

function reset() {
  if (state.controller) state.controller.abort();
  state.history = []; state.pending = [];
  renderPending();
  $("messages").querySelectorAll(".message").forEach((m) => m.remove());
  $("empty").hidden = false;
  setStatus("new conversation");
}

// --- wiring ---------------------------------------------------------------------------------------

$("composer").addEventListener("submit", send);
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
});
$("file-input").addEventListener("change", (e) => { attach(e.target.files); e.target.value = ""; });
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("reset").addEventListener("click", reset);
$("save-key").addEventListener("click", () => {
  state.key = $("api-key").value.trim();
  localStorage.setItem("vlm-api-key", state.key);
  loadModel();
});
let dragDepth = 0;
document.addEventListener("dragenter", (e) => { e.preventDefault(); dragDepth++; $("drop-overlay").hidden = false; });
document.addEventListener("dragleave", () => { if (--dragDepth <= 0) { dragDepth = 0; $("drop-overlay").hidden = true; } });
document.addEventListener("dragover", (e) => e.preventDefault());
document.addEventListener("drop", (e) => {
  e.preventDefault(); dragDepth = 0; $("drop-overlay").hidden = true;
  attach(e.dataTransfer.files);
});
document.addEventListener("paste", (e) => {
  const files = [...(e.clipboardData ? e.clipboardData.files : [])];
  if (files.length) attach(files);
});
loadModel();
