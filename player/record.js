// Recording page: sizes itself from the URL, asks the relay where the recording is stored,
// plays it with the browser's own <video> (HTTP range requests) and tells window.parent.
"use strict";
(function () {
  const query = new URLSearchParams(location.search);
  const box = document.getElementById("box");
  const video = document.getElementById("video");
  const status = document.getElementById("status");
  box.style.width = (parseInt(query.get("width"), 10) || 850) + "px";
  box.style.height = (parseInt(query.get("height"), 10) || 550) + "px";

  function say(state, text) {
    status.dataset.state = state;
    status.textContent = text;
    if (state === "playing" || state === "ended" || state === "error") {
      window.parent.postMessage({ source: "relay-player", event: state }, "*");
    }
  }

  video.addEventListener("playing", () => say("playing", "播放中 · playing"));
  video.addEventListener("ended", () => say("ended", "播放结束 · ended"));
  video.addEventListener("error", () => say("error", "无法播放录像 · cannot play this recording"));

  const info = location.pathname.replace(/\/$/, "") + "/info?ticket=" +
    encodeURIComponent(query.get("ticket") || "");
  fetch(info).then((response) => response.json().then((body) => ({ response, body })))
    .then(({ response, body }) => {
      if (!response.ok) { say("error", "无法播放 · " + (body.err_msg || response.status)); return; }
      if (body.poster) video.poster = body.poster;
      video.src = body.url;
      say("connecting", (body.camera_name || "") + " · 点击播放 · press play");
    })
    .catch(() => say("error", "网络错误 · network error"));
})();
