// Recording page: sizes itself from the URL, finds where the recording is stored (the relay names
// it in the page's <video>, so the browser fetches it while parsing; else it asks …/info with the
// page's play ticket) and plays the MP4 with the browser's own <video>: HTTP range requests, so a
// seek anywhere fetches only what it needs (the file has its index first: +faststart).
// Shows the poster, the camera's name and the recording's start time. Tells window.parent
// "playing", "ended" and "error" by postMessage, as the live page does ({source: "relay-player",
// event}); "playing" again after a pause or an end, not after every seek.
"use strict";
(function () {
  const query = new URLSearchParams(location.search);
  const box = document.getElementById("box");
  const video = document.getElementById("video");
  const status = document.getElementById("status");
  box.style.width = (parseInt(query.get("width"), 10) || 850) + "px";
  box.style.height = (parseInt(query.get("height"), 10) || 550) + "px";
  let lastState = "";

  function say(state, text) {
    status.dataset.state = state;
    status.textContent = text;
    if (state !== lastState && (state === "playing" || state === "ended" || state === "error")) {
      window.parent.postMessage({ source: "relay-player", event: state }, "*");
    }
    lastState = state;
  }

  video.addEventListener("playing", () => say("playing", "播放中 · playing"));
  video.addEventListener("pause", () => { if (!video.ended) say("paused", "已暂停 · paused"); });
  video.addEventListener("ended", () => say("ended", "播放结束 · ended"));
  video.addEventListener("error", () => say("error", "无法播放录像 · cannot play this recording"));

  function start() {
    // Autoplay (the page asks for it too) with sound when the browser lets us, else muted (the
    // controls unmute).
    video.play().catch((error) => {
      if (error.name !== "NotAllowedError") return;
      video.muted = true;
      video.play().catch(() => say("paused", "点击播放 · press play"));
    });
  }

  function show(body) {
    document.getElementById("camera").textContent = body.camera_name || "";
    const started = document.getElementById("start");
    started.textContent = body.start_time || "";
    started.dateTime = (body.start_time || "").replace(" ", "T");
    document.getElementById("caption").hidden = false;
    if (body.poster && !video.poster) video.poster = body.poster;
    if (!video.getAttribute("src")) video.src = body.url;
    say("loading", (body.camera_name || "") + " · 加载中 · loading…");
    // The page's autoplay may have started (or failed) before this script ran.
    if (video.error) {
      say("error", "无法播放录像 · cannot play this recording");
      return;
    }
    if (!video.paused && video.readyState > 2) say("playing", "播放中 · playing");
    start();
  }

  if (video.getAttribute("src")) {  // the relay named the recording in the page itself
    show({ camera_name: video.dataset.camera, start_time: video.dataset.start });
    return;
  }
  const info = location.pathname.replace(/\/$/, "") + "/info?ticket=" +
    encodeURIComponent(query.get("ticket") || "");
  fetch(info).then((response) => response.json().then((body) => ({ response, body })))
    .then(({ response, body }) => {
      if (!response.ok) { say("error", "无法播放 · " + (body.err_msg || response.status)); return; }
      show(body);
    })
    .catch(() => say("error", "网络错误 · network error"));
})();
