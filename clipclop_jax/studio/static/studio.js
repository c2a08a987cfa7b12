// The studio page: draws the state the server broadcasts, sends edits over one socket.
// Geometry in canvas pixels throughout; the SVG overlay's viewBox is the canvas, so the
// outlines scale with the displayed size. window.studio exposes the state for tests.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const DRAG_THRESHOLD = 3; // screen pixels before a press becomes a drag, not a click
  const $ = (id) => document.getElementById(id);
  const canvas = $("canvas"), overlay = $("overlay"), context = canvas.getContext("2d");
  const token = new URLSearchParams(location.search).get("token");
  // sentAt, okVersion, drawn: timings for benchmarks/studio.py (edit -> frame on screen).
  const studio = {
    state: null, socket: null, replies: [], errors: [], hits: null, nextId: 1,
    sentAt: {}, okVersion: {}, drawn: [], framesDrawn: 0,
  };
  window.studio = studio;
  let hover = -1, drag = null, polygons = [], frameVersion = 0;

  // -- the socket ---------------------------------------------------------------------
  function connect() {
    const url = new URL("ws", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.search = token ? "?token=" + encodeURIComponent(token) : "";
    const socket = new WebSocket(url);
    studio.socket = socket;
    socket.onopen = () => status("connected");
    socket.onclose = () => { status("disconnected: reconnecting…"); setTimeout(connect, 1000); };
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "state") show(message);
      else {
        studio.replies.push(message);
        if (message.type === "ok" && message.id !== null) studio.okVersion[message.id] = studio.state ? studio.state.version : 0;
        if (studio.replies.length > 200) studio.replies.shift();
        if (message.type === "error") note(message.message, true);
        else if (message.result && message.result.out_dir) note("exported to " + message.result.out_dir);
      }
    };
  }
  function send(message) {
    message.id = studio.nextId++;
    studio.sentAt[message.id] = performance.now();
    delete studio.sentAt[message.id - 1000]; delete studio.okVersion[message.id - 1000];
    if (studio.socket && studio.socket.readyState === WebSocket.OPEN) studio.socket.send(JSON.stringify(message));
    return message.id;
  }
  studio.send = send;
  function edit(op, fields) {
    const state = studio.state;
    return send({ type: "edit", edit: Object.assign({ op: op, member: state.shown }, fields) });
  }

  // -- drawing ------------------------------------------------------------------------
  function show(state) {
    studio.state = state;
    if (canvas.width !== state.width || canvas.height !== state.height) {
      canvas.width = state.width; canvas.height = state.height;
      overlay.setAttribute("viewBox", `0 0 ${state.width} ${state.height}`);
    }
    const image = new Image();
    const version = state.version;
    image.onload = () => {
      if (version < frameVersion) return;
      frameVersion = version;
      context.drawImage(image, 0, 0);
      studio.drawnVersion = version;
      studio.framesDrawn++;
      studio.drawn.push([version, performance.now()]);
      if (studio.drawn.length > 1000) studio.drawn.shift();
    };
    image.src = "data:image/png;base64," + state.frame;
    const bytes = Uint8Array.from(atob(state.hits), (c) => c.charCodeAt(0));
    studio.hits = new Int16Array(bytes.buffer);
    drawOutlines(state);
    drawPlot(state.plot);
    $("play").textContent = state.playing ? "❚❚ pause" : "▶ play";
    $("undo").disabled = !state.can_undo;
    $("redo").disabled = !state.can_redo;
    if (document.activeElement !== $("prompt")) $("prompt").value = state.prompt;
    const select = $("member");
    if (select.options.length !== state.population + 1) {
      select.length = 1;
      for (let i = 0; i < state.population; i++) select.add(new Option("member " + i, String(i)));
    }
    for (let i = 0; i < state.population; i++) {
      const loss = state.losses[i];
      select.options[i + 1].text = `member ${i}` + (loss === null ? "" : ` (${loss.toFixed(3)})`);
    }
    select.value = state.member === null ? "best" : String(state.member);
    // After an edit the best collage is unscored until the next step: show the latest losses.
    const scored = state.losses.filter((v) => v !== null);
    const bestLoss = state.best_loss !== null ? state.best_loss : (scored.length ? Math.min(...scored) : null);
    const best = bestLoss === null ? "–" : bestLoss.toFixed(4);
    const speed = state.steps_per_second ? `, ${state.steps_per_second.toFixed(1)} steps/s` : "";
    status(`step ${state.step} / ${state.total_steps}, best loss ${best}${speed}, showing member ${state.shown}`);
  }

  function drawOutlines(state) {
    overlay.replaceChildren();
    polygons = state.outlines.map((corners, patch) => {
      const polygon = document.createElementNS(SVG, "polygon");
      polygon.setAttribute("points", corners.map((c) => c.join(",")).join(" "));
      polygon.dataset.patch = patch;
      if (state.hidden[patch]) polygon.style.display = "none";
      if (state.frozen[patch]) polygon.classList.add("frozen");
      if (patch === hover) polygon.classList.add("hover");
      overlay.appendChild(polygon);
      if (state.frozen[patch] && !state.hidden[patch]) {
        // A padlock drawn in SVG (no emoji font needed): a body and a shackle.
        const centre = corners.reduce((a, c) => [a[0] + c[0] / 4, a[1] + c[1] / 4], [0, 0]);
        const size = Math.max(state.width, state.height) / 20;
        const lock = document.createElementNS(SVG, "g");
        lock.setAttribute("transform", `translate(${centre[0]} ${centre[1]}) scale(${size / 10})`);
        lock.classList.add("lock"); lock.dataset.patch = patch;
        const body = document.createElementNS(SVG, "rect");
        body.setAttribute("x", -5); body.setAttribute("y", -1); body.setAttribute("width", 10); body.setAttribute("height", 8);
        const shackle = document.createElementNS(SVG, "path");
        shackle.setAttribute("d", "M -3 -1 V -4 A 3 3 0 0 1 3 -4 V -1");
        lock.append(body, shackle);
        overlay.appendChild(lock);
      }
      return polygon;
    });
  }

  function drawPlot(plot) {
    const c = $("plot"), g = c.getContext("2d");
    g.clearRect(0, 0, c.width, c.height);
    const values = plot.best.concat(plot.mean).filter((v) => v !== null);
    if (!values.length) return;
    const low = Math.min(...values), high = Math.max(...values), span = high - low || 1;
    const last = plot.steps[plot.steps.length - 1] || 1;
    const line = (series, colour) => {
      g.strokeStyle = colour; g.beginPath();
      series.forEach((v, i) => {
        if (v === null) return;
        const x = 4 + (c.width - 8) * (plot.steps[i] / last);
        const y = c.height - 4 - (c.height - 8) * ((v - low) / span);
        i ? g.lineTo(x, y) : g.moveTo(x, y);
      });
      g.stroke();
    };
    line(plot.mean, "#f90"); line(plot.best, "#39f");
    g.fillStyle = "#888"; g.fillText(high.toFixed(3), 4, 12); g.fillText(low.toFixed(3), 4, c.height - 6);
  }

  function status(text) { $("status").textContent = text; }
  function note(text, isError) {
    if (isError) studio.errors.push(text);
    const line = document.createElement("div");
    line.textContent = text;
    if (isError) line.className = "error";
    $("messages").prepend(line);
  }

  // -- the pointer --------------------------------------------------------------------
  function canvasPoint(event) {
    const box = overlay.getBoundingClientRect(), state = studio.state;
    return [(event.clientX - box.left) * state.width / box.width,
            (event.clientY - box.top) * state.height / box.height];
  }
  function patchAt(point) {
    const state = studio.state;
    if (!state || !studio.hits) return -1;
    const x = Math.floor(point[0]), y = Math.floor(point[1]);
    if (x < 0 || y < 0 || x >= state.width || y >= state.height) return -1;
    return studio.hits[y * state.width + x];
  }
  function setHover(patch) {
    if (patch === hover) return;
    if (polygons[hover]) polygons[hover].classList.remove("hover");
    hover = patch;
    if (polygons[hover]) polygons[hover].classList.add("hover");
  }

  overlay.addEventListener("pointermove", (event) => {
    if (!studio.state) return;
    const point = canvasPoint(event);
    if (drag) {
      const dx = point[0] - drag.start[0], dy = point[1] - drag.start[1];
      if (Math.hypot(event.clientX - drag.screen[0], event.clientY - drag.screen[1]) > DRAG_THRESHOLD) drag.moved = true;
      const polygon = polygons[drag.patch];
      if (polygon) { polygon.setAttribute("transform", `translate(${dx} ${dy})`); polygon.classList.add("dragging"); }
      drag.last = point;
      return;
    }
    setHover(patchAt(point));
  });
  overlay.addEventListener("pointerdown", (event) => {
    if (!studio.state || event.button !== 0) return;
    const point = canvasPoint(event), patch = patchAt(point);
    if (patch < 0) return;
    overlay.setPointerCapture(event.pointerId);
    drag = { patch: patch, start: point, last: point, screen: [event.clientX, event.clientY], moved: false };
  });
  overlay.addEventListener("pointerup", (event) => {
    if (!drag) return;
    const done = drag;
    drag = null;
    const point = canvasPoint(event);
    if (done.moved) {
      edit("move", { patch: done.patch, dx: point[0] - done.start[0], dy: point[1] - done.start[1] });
    } else {
      const frozen = studio.state.frozen[done.patch];
      edit(frozen ? "unfreeze" : "freeze", { patch: done.patch });
    }
  });
  overlay.addEventListener("wheel", (event) => {
    const patch = studio.state ? patchAt(canvasPoint(event)) : -1;
    if (patch < 0) return;
    event.preventDefault();
    const up = event.deltaY < 0;
    if (event.shiftKey) edit("rotate", { patch: patch, degrees: up ? -15 : 15 });
    else edit("scale", { patch: patch, factor: up ? 1.1 : 1 / 1.1 });
  }, { passive: false });

  // -- the controls -------------------------------------------------------------------
  $("play").onclick = () => send({ type: studio.state && studio.state.playing ? "pause" : "play" });
  $("step").onclick = () => send({ type: "step", steps: studio.state ? chunkSteps() : 1 });
  $("undo").onclick = () => send({ type: "undo" });
  $("redo").onclick = () => send({ type: "redo" });
  $("member").onchange = (event) => {
    const value = event.target.value;
    send({ type: "member", member: value === "best" ? null : Number(value) });
  };
  $("export").onclick = () => send({ type: "export", blend: $("blend").checked });
  $("prompt-form").onsubmit = (event) => {
    event.preventDefault();
    send({ type: "prompt", prompt: $("prompt").value });
    $("prompt").blur();
  };
  function chunkSteps() { return studio.state.chunk_steps || 1; }
  document.addEventListener("keydown", (event) => {
    if (event.target.tagName === "TEXTAREA" || event.target.tagName === "INPUT") return;
    const key = event.key.toLowerCase();
    if ((event.ctrlKey || event.metaKey) && key === "z") {
      event.preventDefault(); send({ type: event.shiftKey ? "redo" : "undo" });
    } else if ((event.ctrlKey || event.metaKey) && key === "y") {
      event.preventDefault(); send({ type: "redo" });
    } else if (key === " ") {
      event.preventDefault(); $("play").click();
    }
  });

  connect();
})();
