// distasks console: the one script of the console (no library). It keeps live parts of a
// page fresh: an element with data-refresh-s="N" is fetched again every N seconds and
// swapped in, while the tab is visible; a hidden tab asks nothing. The request says it is
// a refresh (X-Console-Refresh), so that an unattended page does not keep its session
// alive past its idle expiry.
(function () {
  "use strict";
  var live = document.querySelector("[data-refresh-s]");
  if (!live || !live.id) {
    return;
  }
  var seconds = Math.max(2, parseInt(live.getAttribute("data-refresh-s"), 10) || 5);
  var timer = null;

  function editing() {
    var a = document.activeElement;
    return a && live.contains(a) && /^(INPUT|SELECT|TEXTAREA)$/.test(a.tagName);
  }

  function schedule() {
    clearTimeout(timer);
    timer = null;
    if (document.visibilityState === "visible") {
      timer = setTimeout(refresh, seconds * 1000);
    }
  }

  function refresh() {
    if (document.visibilityState !== "visible" || editing()) {
      schedule();
      return;
    }
    fetch(window.location.href, {
      credentials: "same-origin",
      headers: {"X-Console-Refresh": "1"},
      redirect: "manual"
    }).then(function (response) {
      if (response.type === "opaqueredirect" || response.status === 401) {
        window.location.reload();  // signed out meanwhile: show the sign-in page
        return null;
      }
      return response.ok ? response.text() : null;
    }).then(function (html) {
      if (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById(live.id);
        if (fresh) {
          live.replaceWith(fresh);
          live = fresh;
        }
      }
    }).catch(function () {
      // The daemon may be restarting: try again at the next turn.
    }).then(schedule);
  }

  document.addEventListener("visibilitychange", schedule);
  schedule();
})();
