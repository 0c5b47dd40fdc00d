/* Admin console behaviour (loaded under a CSP that forbids inline scripts).
 * - forms with data-confirm ask before submitting;
 * - the upload form sends each file in its own request, showing per-file progress and errors. */
(function () {
  "use strict";
  var csrf = document.querySelector('meta[name="csrf-token"]');

  document.addEventListener("submit", function (e) {
    var form = e.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) e.preventDefault();
  });

  function uploadOne(url, file, row) {
    return new Promise(function (resolve) {
      var xhr = new XMLHttpRequest(), data = new FormData();
      data.append("files", file, file.name);
      xhr.open("POST", url);
      xhr.setRequestHeader("X-CSRFToken", csrf ? csrf.content : "");
      xhr.setRequestHeader("X-Requested-With", "fetch");
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.addEventListener("progress", function (ev) {
        if (ev.lengthComputable) row.bar.value = ev.loaded / ev.total;
      });
      xhr.addEventListener("load", function () {
        var body = null;
        try { body = JSON.parse(xhr.responseText); } catch (err) { body = null; }
        var result = body && body.files ? body.files[0] : null;
        row.bar.value = 1;
        if (xhr.status < 300 && result && result.ok) {
          row.li.className = "done";
          row.status.textContent = result.added + " added, " + result.replaced + " replaced, " +
            result.unchanged + " unchanged, " + result.chunks + " chunks";
        } else {
          row.li.className = "failed";
          var msg = result ? result.errors.join("; ") : (body && body.error ? body.error.message : "HTTP " + xhr.status);
          row.status.textContent = msg;
        }
        resolve();
      });
      xhr.addEventListener("error", function () {
        row.li.className = "failed"; row.status.textContent = "network error"; resolve();
      });
      row.status.textContent = "uploading…";
      xhr.send(data);
    });
  }

  var form = document.getElementById("upload");
  if (!form) return;
  var list = document.getElementById("upload-progress");
  form.addEventListener("submit", function (e) {
    e.preventDefault();
    var files = Array.prototype.slice.call(form.querySelector('input[type=file]').files);
    list.textContent = "";
    var rows = files.map(function (file) {
      var li = document.createElement("li"), name = document.createElement("span");
      var bar = document.createElement("progress"), status = document.createElement("span");
      name.textContent = file.name; bar.max = 1; bar.value = 0; status.className = "status";
      status.textContent = "waiting";
      li.appendChild(name); li.appendChild(bar); li.appendChild(status); list.appendChild(li);
      return { li: li, bar: bar, status: status };
    });
    var chain = Promise.resolve();
    files.forEach(function (file, i) { chain = chain.then(function () { return uploadOne(form.action, file, rows[i]); }); });
    chain.then(function () {
      var done = document.createElement("li");
      var link = document.createElement("a");
      link.href = window.location.pathname; link.textContent = "Refresh the list";
      done.appendChild(link); list.appendChild(done);
    });
  });
})();
