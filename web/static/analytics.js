// Draws the analytics page's charts (Chart.js, vendored under /static/vendor/chartjs) from the
// page's JSON data block. No inline script: the admin CSP allows scripts from this origin only.
(function () {
  "use strict";
  var node = document.getElementById("analytics-data");
  if (!node || typeof window.Chart === "undefined") return;
  var data = JSON.parse(node.textContent);
  var green = "#2f6f4f", amber = "#d08a1e", grey = "#9aa6ae", red = "#a12626";
  var other = data.conversations.map(function (n, i) {
    return n - data.resolved_by_bot[i] - data.handed_off[i];
  });
  function percent(values) {
    return values.map(function (v) { return v === null ? null : Math.round(v * 1000) / 10; });
  }
  var common = { responsive: true, maintainAspectRatio: false, animation: false,
                 interaction: { mode: "index", intersect: false } };

  new window.Chart(document.getElementById("chart-conversations"), {
    type: "bar",
    data: { labels: data.days, datasets: [
      { label: "Resolved by the bot", data: data.resolved_by_bot, backgroundColor: green },
      { label: "Handed off", data: data.handed_off, backgroundColor: amber },
      { label: "Other", data: other, backgroundColor: grey }
    ] },
    options: Object.assign({}, common, { scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true,
                                                                            ticks: { precision: 0 } } } })
  });
  new window.Chart(document.getElementById("chart-rates"), {
    type: "line",
    data: { labels: data.days, datasets: [
      { label: "Resolution rate (%)", data: percent(data.resolution_rate), borderColor: green,
        backgroundColor: green, spanGaps: true },
      { label: "Hand-off rate (%)", data: percent(data.handoff_rate), borderColor: amber,
        backgroundColor: amber, spanGaps: true }
    ] },
    options: Object.assign({}, common, { scales: { y: { min: 0, max: 100 } } })
  });
  new window.Chart(document.getElementById("chart-feedback"), {
    type: "bar",
    data: { labels: data.days, datasets: [
      { label: "Thumbs up", data: data.thumbs_up, backgroundColor: green },
      { label: "Thumbs down", data: data.thumbs_down, backgroundColor: red }
    ] },
    options: Object.assign({}, common, { scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } })
  });
  document.documentElement.setAttribute("data-charts", "drawn");
})();
