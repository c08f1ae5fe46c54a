// The console's little JS: the overview refreshes itself by fetching its live part again.
"use strict";

function refreshLive(box) {
  const url = box.dataset.refresh;
  const every = Math.max(2, Number(box.dataset.every) || 5) * 1000;
  let timer = null;
  async function again() {
    try {
      const answer = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (answer.headers.get("X-Console-Fragment") !== "overview") {
        window.location.reload(); // signed out meanwhile: show the sign-in form
        return;
      }
      if (answer.ok) {
        box.innerHTML = await answer.text();
        box.dataset.refreshed = String(Number(box.dataset.refreshed || 0) + 1);
      }
    } catch (error) {
      // The relay is restarting or the network is gone: keep the last view and try again.
    }
    timer = setTimeout(again, every);
  }
  timer = setTimeout(again, every);
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) { clearTimeout(timer); } else { clearTimeout(timer); again(); }
  });
}

document.querySelectorAll("[data-refresh]").forEach(refreshLive);
