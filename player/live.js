// Live page: opens a viewer session with the play ticket, plays the camera over WebRTC and falls
// back to MSE (fragmented MP4 over a WebSocket) when WebRTC does not connect in time; ?mode=webrtc
// or ?mode=mse forces one. Heartbeats keep the session (and the camera's push) alive; pagehide says
// goodbye. Tells window.parent "playing", "ended" and "error" by postMessage.
//
// Retries: while the camera is offline (409: after a relay restart the agent may not be back yet)
// the page asks again after 0.5 s, doubling up to 2 s, so it plays within about 2 s of the camera's
// return; while the relay cannot be reached (network error, 5xx) after 0.5 s doubling up to 5 s.
// Each wait is jittered (half to all of it), so the pages of a restarted relay do not all come back
// at the same instant; the waits start short again once the video plays. Error answers are
// {"err_code": status, "err_msg": why}, as everywhere on the relay.
"use strict";
(function () {
  const query = new URLSearchParams(location.search);
  const base = location.pathname.replace(/\/$/, "");
  const forced = query.get("mode");
  const box = document.getElementById("box");
  const video = document.getElementById("video");
  const status = document.getElementById("status");
  box.style.width = (parseInt(query.get("width"), 10) || 850) + "px";
  box.style.height = (parseInt(query.get("height"), 10) || 550) + "px";

  let ticket = query.get("ticket") || "";
  let session = null;
  let heartbeatTimer = null;
  let fallbackTimer = null;
  let retryTimer = null;
  let pc = null;
  let socket = null;
  let playing = false;
  let lastState = "";
  let attempt = 0;  // each start() is one; only the latest may take a session
  const RETRY_FIRST = 0.5, OFFLINE_CAP = 2, NETWORK_CAP = 5;  // seconds
  let retryDelay = RETRY_FIRST;

  function say(state, text) {
    status.dataset.state = state;
    status.textContent = text;
    if (state !== lastState && (state === "playing" || state === "ended" || state === "error")) {
      window.parent.postMessage({ source: "relay-player", event: state, mode: video.dataset.mode || "" }, "*");
    }
    lastState = state;
  }

  function url(path, params) {
    return base + path + "?" + new URLSearchParams(params).toString();
  }

  function closeTransports() {
    clearTimeout(fallbackTimer);
    if (pc) { pc.onconnectionstatechange = null; pc.close(); pc = null; }
    if (socket) { socket.onclose = null; socket.close(); socket = null; }
  }

  function endSession() {
    clearInterval(heartbeatTimer);
    if (session) navigator.sendBeacon(url("/bye", { session: session }));
    session = null;
  }

  function retryLater(cap) {
    const seconds = Math.min(retryDelay, cap) * (0.5 + Math.random() * 0.5);
    retryDelay = Math.min(retryDelay * 2, cap);
    clearTimeout(retryTimer);
    retryTimer = setTimeout(start, seconds * 1000);
  }

  async function start() {
    // Heartbeat 404s, a closed MSE socket and retry timers can each call start(): the latest wins,
    // and the session it replaces says goodbye (or it would linger until its heartbeat timeout).
    const mine = ++attempt;
    clearTimeout(retryTimer);
    closeTransports();
    endSession();
    playing = false;
    say("connecting", "连接中 · connecting…");
    let response, body;
    try {
      response = await fetch(url("/session", { ticket: ticket }), { method: "POST" });
      body = await response.json();
    } catch (error) {  // no answer, or not JSON (a proxy's page while the relay restarts)
      if (mine !== attempt) return;
      say("error", "网络错误 · network error");
      retryLater(NETWORK_CAP);
      return;
    }
    if (mine !== attempt) {  // a newer start() took over: this session is not needed
      if (response.ok && body.session) navigator.sendBeacon(url("/bye", { session: body.session }));
      return;
    }
    if (!response.ok) {
      if (response.status === 409) {
        if (lastState === "playing") say("ended", "直播结束 · ended");
        say("offline", "通道离线 · " + body.err_msg);
        retryLater(OFFLINE_CAP);
      } else if (response.status >= 500) {
        say("error", "服务器错误 · " + (body.err_msg || response.status));
        retryLater(NETWORK_CAP);
      } else {
        say("error", "无法播放 · " + (body.err_msg || response.status));
      }
      return;
    }
    session = body.session;
    renewTicket(body.ticket);
    clearInterval(heartbeatTimer);
    heartbeatTimer = setInterval(heartbeat, body.heartbeat * 1000);
    if (forced === "mse") startMse();
    else startWebRtc(body.fallback_after);
  }

  function renewTicket(fresh) {
    if (!fresh) return;
    ticket = fresh;
    const params = new URLSearchParams(location.search);
    params.set("ticket", fresh);
    history.replaceState(null, "", location.pathname + "?" + params.toString());
  }

  async function heartbeat() {
    const current = session;
    if (!current) return;
    try {
      const response = await fetch(url("/heartbeat", { session: current }), { method: "POST" });
      if (session !== current) return;  // replaced while this was on its way
      if (response.status === 404) {  // the relay forgot us (restart, timeout): start again
        session = null;
        clearInterval(heartbeatTimer);
        start();
        return;
      }
      const body = await response.json();
      renewTicket(body.ticket);
      if (body.error && !playing) say("error", "推流失败 · " + body.error);
    } catch (error) { /* a missed heartbeat is retried at the next tick */ }
  }

  async function startWebRtc(fallbackAfter) {
    video.dataset.mode = "webrtc";
    const peer = pc = new RTCPeerConnection({ iceServers: [] });
    peer.addTransceiver("video", { direction: "recvonly" });
    peer.ontrack = (event) => {
      video.srcObject = event.streams[0] || new MediaStream([event.track]);
      video.play().catch(() => {});
    };
    peer.onconnectionstatechange = () => {
      if (peer.connectionState === "failed") fallBack("WebRTC failed");
    };
    if (forced !== "webrtc") {
      fallbackTimer = setTimeout(() => { if (!playing) fallBack("WebRTC too slow"); }, fallbackAfter * 1000);
    }
    try {
      await peer.setLocalDescription(await peer.createOffer());
      // No wait for ICE gathering: with no ICE servers the browser gathers only mDNS host
      // candidates, which the relay drops; it learns this browser's address from its connectivity checks.
      const response = await fetch(url("/webrtc", { session: session }), {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ sdp: peer.localDescription.sdp }),
      });
      const body = await response.json();
      if (!response.ok) throw new Error(body.err_msg || response.status);
      if (pc !== peer) return;
      await peer.setRemoteDescription({ type: "answer", sdp: body.sdp });
    } catch (error) {
      if (pc === peer) fallBack("WebRTC: " + error.message);
    }
  }

  function fallBack(reason) {
    if (forced === "webrtc") {
      say("error", "无法连接 · " + reason);
      return;
    }
    if (video.dataset.mode === "mse") return;
    console.info("live: falling back to MSE:", reason);
    startMse();
  }

  function startMse() {
    if (pc) { pc.onconnectionstatechange = null; pc.close(); pc = null; }
    clearTimeout(fallbackTimer);
    video.dataset.mode = "mse";
    video.srcObject = null;
    const source = new MediaSource();
    const queue = [];
    let buffer = null;
    video.src = URL.createObjectURL(source);
    const address = new URL(url("/mse", { session: session }), location.href);
    address.protocol = address.protocol === "https:" ? "wss:" : "ws:";
    const ws = socket = new WebSocket(address);
    ws.binaryType = "arraybuffer";

    function pump() {
      if (!buffer || buffer.updating || !queue.length) return;
      try {
        buffer.appendBuffer(queue.shift());
      } catch (error) {
        say("error", "播放错误 · " + error.name);
      }
    }

    function keepLive() {
      const ranges = video.buffered;
      if (!ranges.length) return;
      const end = ranges.end(ranges.length - 1);
      if (end - video.currentTime > 1.5) video.currentTime = Math.max(ranges.start(ranges.length - 1), end - 0.3);
      if (video.currentTime - ranges.start(0) > 30 && !buffer.updating) buffer.remove(0, video.currentTime - 10);
    }

    ws.onmessage = (event) => {
      if (typeof event.data === "string") {
        const description = JSON.parse(event.data);
        const type = 'video/mp4; codecs="' + description.codec + '"';
        const open = () => {
          if (buffer) { queue.length = 0; return; }
          buffer = source.addSourceBuffer(type);
          buffer.mode = "segments";
          buffer.addEventListener("updateend", () => { keepLive(); pump(); });
          pump();
        };
        if (source.readyState === "open") open();
        else source.addEventListener("sourceopen", open, { once: true });
        return;
      }
      queue.push(event.data);
      pump();
      if (video.paused) video.play().catch(() => {});
    };
    ws.onclose = () => {
      if (socket === ws && session) { socket = null; retryLater(OFFLINE_CAP); }
    };
  }

  video.addEventListener("playing", () => {
    playing = true;
    retryDelay = RETRY_FIRST;
    clearTimeout(fallbackTimer);
    say("playing", "直播中 · live");
  });

  window.addEventListener("pagehide", () => {
    attempt++;  // a start() still waiting for its session must not take one now
    clearTimeout(retryTimer);
    closeTransports();
    endSession();
  });
  start();
})();
