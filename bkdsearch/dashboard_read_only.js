// bkdsearch: loaded by the pages of a read-only dashboard (bkdsearch/dashboard.py, read_only_page):
// a banner saying so, write controls dimmed with the reason as tooltip, refusals shown with their text.
(function () {
  var NOTICE = __NOTICE__;
  var STYLE = "#bkd-read-only{position:fixed;bottom:0;left:0;right:0;z-index:2000;padding:4px 12px;font:14px sans-serif; background:#fff4ce;color:#4d3800;border-top:1px solid #e0c060;text-align:center} body{padding-bottom:30px} [data-bkd-refused]{opacity:.45;cursor:not-allowed!important}";
  // The labels of optuna-dashboard's controls that change the storage or the artifacts.
  var WRITE = new RegExp("^(" + [
    "create( study)?", "delete( study)?", "delete (artifact|trial)s?", "rename( study)?", "edit( note)?", "save",
    "upload( artifact)?", "add", "remove", "copy study", "tell", "mark as (complete|pruned|failed|fail)",
    "complete", "prune", "fail( trial)?", "DriveFileRenameOutline", "FileUpload", "DeleteOutline"
  ].join("|") + ")$", "i");
  function show(text) {
    var bar = document.getElementById("bkd-read-only");
    if (!bar) {
      bar = document.createElement("div");
      bar.id = "bkd-read-only";
      bar.setAttribute("role", "status");
      document.body.appendChild(bar);
    }
    bar.textContent = text;
  }
  function label(el) {
    var text = (el.getAttribute("aria-label") || el.getAttribute("title") || el.textContent || "").trim();
    var icon = el.querySelector("svg[data-testid]");  // an icon button: MUI names its icon (EditIcon)
    return text || (icon ? icon.getAttribute("data-testid").replace(/(Outlined)?Icon$/, "") : "");
  }
  function mark() {
    var els = document.querySelectorAll("button, [role=button], [role=menuitem], a[download]");
    for (var i = 0; i < els.length; i++) {
      var el = els[i];
      if (el.dataset.bkdRefused || !WRITE.test(label(el))) continue;
      el.dataset.bkdRefused = "1";
      el.setAttribute("aria-disabled", "true");
      el.setAttribute("title", NOTICE);
    }
  }
  document.addEventListener("click", function (e) {
    var el = e.target.closest && e.target.closest("[data-bkd-refused]");
    if (el) { e.preventDefault(); e.stopImmediatePropagation(); show(NOTICE); }
  }, true);
  var send = window.fetch;
  window.fetch = function () {
    return send.apply(this, arguments).then(function (r) {
      if (r.status === 403) {
        r.clone().json().then(function (j) { show(j.reason || NOTICE); }, function () { show(NOTICE); });
      }
      return r;
    });
  };
  function start() {
    var style = document.createElement("style");
    style.textContent = STYLE;
    document.head.appendChild(style);
    show(NOTICE);
    mark();
    new MutationObserver(mark).observe(document.body, {childList: true, subtree: true});
  }
  if (document.body) { start(); } else { document.addEventListener("DOMContentLoaded", start); }
})();
