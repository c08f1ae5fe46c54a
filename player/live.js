// Live page: sizes itself from the URL and shows the camera's state as the relay reports it.
"use strict";
(function () {
  const query = new URLSearchParams(location.search);
  const box = document.getElementById("box");
  const status = document.getElementById("status");
  box.style.width = (parseInt(query.get("width"), 10) || 850) + "px";
  box.style.height = (parseInt(query.get("height"), 10) || 550) + "px";

  function say(state, text) {
    status.dataset.state = state;
    status.textContent = text;
    if (state === "error") {
      window.parent.postMessage({ source: "relay-player", event: state }, "*");
    }
  }

  const info = location.pathname.replace(/\/$/, "") + "/info?ticket=" +
    encodeURIComponent(query.get("ticket") || "");
  fetch(info).then((response) => response.json().then((body) => ({ response, body })))
    .then(({ response, body }) => {
      if (!response.ok) { say("error", "无法播放 · " + (body.error || response.status)); return; }
      if (body.status !== 1) { say("offline", body.camera_name + " · 通道离线 · camera offline"); return; }
      say("connecting", body.camera_name + " · 通道在线 · camera online");
    })
    .catch(() => say("error", "网络错误 · network error"));
})();
