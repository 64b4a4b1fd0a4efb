// The telewire operator page: live calls, their transcripts and state, and the operator's actions.
// The token lives in sessionStorage (this tab only) and travels only as an Authorization header.
// Call data is attacker-controlled (a transcript is whatever a caller said): it reaches the page
// only through textContent, never as markup.
"use strict";

(() => {
  const TOKEN_KEY = "telewire.operator.token";
  const MAX_LINES = 500;       // transcript lines kept per call
  const ENDED_KEPT_MS = 120000; // an ended call stays listed this long
  const $ = (id) => document.getElementById(id);
  const calls = new Map();     // "carrier/call_id" -> call
  let selected = null;
  let stream = null;           // the AbortController of the open event stream
  let timers = [];
  let epoch = null;
  let lastSeq = 0;

  const token = () => sessionStorage.getItem(TOKEN_KEY);
  const keyOf = (carrier, callId) => carrier + "/" + callId;

  function show(el, on) { el.hidden = !on; }

  function setError(message) {
    $("error").textContent = message || "";
    show($("error"), Boolean(message));
  }

  function setStream(message) { $("stream-status").textContent = message; }

  function setStatus(message, failed) {
    const el = $("action-status");
    el.textContent = message;
    el.dataset.kind = failed ? "error" : "ok";
  }

  class Unauthorized extends Error {}

  async function api(path, { method = "GET", body, signal } = {}) {
    const headers = { Authorization: "Bearer " + token() };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method, headers, signal, cache: "no-store", credentials: "omit", redirect: "error",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401) {
      signOut("The server refused this token (wrong or missing).");
      throw new Unauthorized();
    }
    return response;
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    if (stream) stream.abort();
    stream = null;
    timers.forEach(clearInterval);
    timers = [];
    calls.clear();
    selected = null;
    render();
    show($("main"), false);
    show($("sign-out"), false);
    show($("login"), true);
    setStream("");
    setError(message);
    $("token").focus();
  }

  async function start() {
    let response;
    try {
      response = await api("/api/calls");
    } catch (err) {
      if (!(err instanceof Unauthorized)) signOut("The server cannot be reached: " + err.message);
      return;
    }
    if (response.status === 404) { signOut("The operator API is off on this server."); return; }
    if (!response.ok) { signOut("The server answered HTTP " + response.status + "."); return; }
    setError("");
    show($("login"), false);
    show($("main"), true);
    show($("sign-out"), true);
    applyList(await response.json());
    timers.push(setInterval(poll, 2000), setInterval(render, 1000));
    connect();
  }

  async function poll() {
    try {
      const response = await api("/api/calls");
      if (response.ok) applyList(await response.json());
    } catch (err) { /* the next poll tries again */ }
  }

  function callFor(carrier, callId) {
    const key = keyOf(carrier, callId);
    let call = calls.get(key);
    if (!call) {
      call = { key, carrier, callId, state: "live", seconds: null, polledAt: 0, cost: null,
               lines: [], version: 0, endedAt: null };
      calls.set(key, call);
    }
    return call;
  }

  function applyList(list) {
    if (!Array.isArray(list)) return;
    const now = Date.now();
    const listed = new Set();
    for (const item of list) {
      if (!item || typeof item.carrier !== "string" || typeof item.call_id !== "string") continue;
      const call = callFor(item.carrier, item.call_id);
      listed.add(call.key);
      if (typeof item.seconds === "number") { call.seconds = item.seconds; call.polledAt = now; }
      if (typeof item.state === "string" && call.endedAt === null) call.state = item.state;
    }
    for (const call of calls.values()) {
      // listed before, not now, and its end never reached this page (the stream was down)
      if (call.endedAt === null && call.polledAt && !listed.has(call.key)) {
        call.state = "ended";
        call.endedAt = now;
      }
    }
    render();
  }

  function addLine(call, role, text) {
    call.lines.push({ role: String(role), text: String(text) });
    if (call.lines.length > MAX_LINES) call.lines.splice(0, call.lines.length - MAX_LINES);
    call.version += 1;
  }

  function onEvent(event) {
    if (!event || typeof event !== "object") return;
    if (event.type === "hello") {
      if (event.epoch !== epoch) { epoch = event.epoch; lastSeq = 0; }
      return;
    }
    if (typeof event.seq === "number") {
      if (event.seq <= lastSeq) return; // already shown (a resubscription replays)
      lastSeq = event.seq;
    }
    if (event.type === "dropped") {
      setStream("the page fell behind and lost " + event.count + " event(s); resynchronising");
      if (stream) stream.abort();
      stream = null;
      connect();
      return;
    }
    if (typeof event.carrier !== "string" || typeof event.call_id !== "string") return;
    const call = callFor(event.carrier, event.call_id);
    switch (event.type) {
      case "call":
        if (event.state === "ended") {
          call.state = "ended" + (event.reason ? " (" + event.reason + ")" : "");
          call.endedAt = Date.now();
          addLine(call, "event", "call ended" + (event.reason ? ": " + event.reason : ""));
        } else if (call.endedAt === null) {
          call.state = String(event.state);
        }
        break;
      case "transcript":
        addLine(call, event.role, event.text);
        break;
      case "usage":
        if (typeof event.call_cost_usd === "number") call.cost = event.call_cost_usd;
        break;
      case "interrupt":
        addLine(call, "event", "interrupted (" + event.source + ")");
        break;
      case "error":
        addLine(call, "error", "error from " + event.source + ": " + event.message);
        break;
      default:
        return;
    }
    render();
  }

  async function connect() {
    const controller = new AbortController();
    stream = controller;
    setStream("connecting to the event stream…");
    try {
      const response = await api("/api/events", { signal: controller.signal });
      if (response.status === 503) throw new Error("too many event streams are open");
      if (!response.ok || !response.body) throw new Error("HTTP " + response.status);
      setStream("live");
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block.split("\n").filter((line) => line.startsWith("data:"))
            .map((line) => line.slice(5).replace(/^ /, "")).join("\n");
          if (data) onEvent(JSON.parse(data));
          if (stream !== controller) return;
        }
      }
    } catch (err) {
      if (err instanceof Unauthorized || controller.signal.aborted) return;
      setStream("event stream lost (" + err.message + "); reconnecting");
    }
    if (stream === controller && token()) {
      stream = null;
      setTimeout(() => { if (!stream && token()) connect(); }, 2000);
    }
  }

  function duration(call) {
    if (call.seconds === null) return "";
    const live = call.endedAt === null ? (Date.now() - call.polledAt) / 1000 : 0;
    const s = Math.max(0, Math.floor(call.seconds + live));
    return Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
  }

  const money = (usd) => (typeof usd === "number" ? "$" + usd.toFixed(4) : "unknown");

  function cell(row, text) {
    const td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function render() {
    const now = Date.now();
    for (const [key, call] of calls) {
      if (call.endedAt !== null && now - call.endedAt > ENDED_KEPT_MS) calls.delete(key);
    }
    if (!calls.has(selected)) {
      const first = [...calls.values()].find((c) => c.endedAt === null) || calls.values().next().value;
      selected = first ? first.key : null;
    }
    const rows = $("call-rows");
    rows.replaceChildren();
    for (const call of calls.values()) {
      const row = document.createElement("tr");
      row.dataset.key = call.key;
      row.setAttribute("aria-selected", String(call.key === selected));
      const pick = document.createElement("button");
      pick.type = "button";
      pick.textContent = call.callId;
      pick.addEventListener("click", () => { selected = call.key; render(); });
      cell(row, "").appendChild(pick);
      cell(row, call.carrier);
      cell(row, duration(call));
      cell(row, call.state);
      cell(row, money(call.cost));
      rows.appendChild(row);
    }
    show($("no-calls"), calls.size === 0);
    const call = calls.get(selected);
    show($("detail"), Boolean(call));
    if (!call) return;
    $("detail-id").textContent = call.callId + " (" + call.carrier + ")";
    $("detail-state").textContent = call.state;
    $("detail-cost").textContent = money(call.cost);
    const list = $("transcript");
    if (list.dataset.key !== call.key || list.dataset.version !== String(call.version)) {
      list.dataset.key = call.key;
      list.dataset.version = String(call.version);
      list.replaceChildren(...call.lines.map((line) => {
        const li = document.createElement("li");
        li.dataset.role = line.role;
        const role = document.createElement("span");
        role.className = "role";
        role.textContent = line.role;
        const text = document.createElement("span");
        text.className = "text";
        text.textContent = line.text;
        li.append(role, text);
        return li;
      }));
      list.scrollTop = list.scrollHeight;
    }
  }

  async function act(action, body) {
    const call = calls.get(selected);
    if (!call) { setStatus("Select a call first.", true); return false; }
    const path = "/api/calls/" + encodeURIComponent(call.carrier) + "/" +
      encodeURIComponent(call.callId) + "/" + action;
    setStatus(action + "…", false);
    try {
      const response = await api(path, { method: "POST", body });
      const answer = await response.json().catch(() => ({}));
      if (response.ok) { setStatus(action + ": done", false); return true; }
      setStatus(action + " refused: " + (answer.error || "HTTP " + response.status), true);
    } catch (err) {
      if (!(err instanceof Unauthorized)) setStatus(action + " failed: " + err.message, true);
    }
    return false;
  }

  function init() {
    $("login").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("token").value.trim();
      $("token").value = "";
      if (!value) { setError("Enter the operator token."); return; }
      sessionStorage.setItem(TOKEN_KEY, value);
      start();
    });
    $("sign-out").addEventListener("click", () => signOut(""));
    $("steer").addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = {};
      const instructions = $("steer-instructions").value;
      const voice = $("steer-voice").value.trim();
      if (instructions.trim()) body.instructions = instructions;
      if (voice) body.voice = voice;
      if (!body.instructions && !body.voice) { setStatus("Give instructions or a voice.", true); return; }
      if (await act("steer", body)) { $("steer-instructions").value = ""; $("steer-voice").value = ""; }
    });
    $("interrupt").addEventListener("click", () => act("interrupt", {}));
    $("hangup").addEventListener("click", () => act("hangup", {}));
    $("transfer").addEventListener("submit", (event) => {
      event.preventDefault();
      const target = $("transfer-target").value.trim();
      if (!target) { setStatus("Give a number or sip: address to transfer to.", true); return; }
      act("transfer", { target });
    });
    if (token()) start(); else $("token").focus();
  }

  init();
})();
