// Charts of the last hour per channel → destination: throughput, end-to-end latency p50/p95 and backlog, from
// GET /api/flow/series (refreshed every 5 s). uPlot (vendored, MIT, see
// uplot.LICENSE) draws on canvas and styles through the CSSOM only, so it runs under the page's strict CSP.
(() => {
  'use strict';

  const REFRESH_MS = 5000;
  const COLORS = ['#1f5fbf', '#1b7f4b', '#b26a00', '#8e44ad', '#b3261e', '#00838f', '#5d4037', '#546e7a'];
  const charts = {}; // name -> {plot, key}
  let inflight = false;

  const box = (name) => document.getElementById(`chart-${name}`);

  function width(node) {
    return Math.max(280, Math.floor(node.clientWidth || node.parentElement.clientWidth || 400));
  }

  function build(name, node, series, data, yLabel) {
    const opts = {
      width: width(node), height: 200,
      scales: { x: { time: true } },
      axes: [{ stroke: '#5f6b7a' }, { stroke: '#5f6b7a', label: yLabel, size: 60 }],
      legend: { live: false },
      series: [{}, ...series],
      cursor: { drag: { x: false, y: false } },
    };
    node.replaceChildren();
    return new uPlot(opts, data, node);
  }

  function render(name, yLabel, series, data) {
    const node = box(name);
    if (!node) return;
    const key = series.map((s) => s.label).join('|');
    const have = charts[name];
    if (!have || have.key !== key) {
      if (have) have.plot.destroy();
      charts[name] = { plot: build(name, node, series, data, yLabel), key };
    } else {
      have.plot.setData(data);
    }
    const total = data.slice(1).flat().filter((v) => v !== null && v !== undefined).reduce((a, b) => a + b, 0);
    const last = data.slice(1).map((col) => col[col.length - 1]).filter((v) => v !== null && v !== undefined);
    node.dataset.series = String(series.length);
    node.dataset.last = String(Math.round(last.reduce((a, b) => a + b, 0)));
    node.dataset.total = String(Math.round(total));
    node.dataset.rendered = String(Number(node.dataset.rendered || 0) + 1);
  }

  function draw(body) {
    const t = body.t;
    const flows = body.series;
    const perMin = 60 / body.bucket_s;
    const label = (f) => `${f.channel} → ${f.destination}`;
    const color = (i) => COLORS[i % COLORS.length];
    document.getElementById('charts-empty').hidden = flows.length > 0;

    render('throughput', 'per min',
      flows.map((f, i) => ({ label: label(f), stroke: color(i), width: 2 })),
      [t, ...flows.map((f) => f.delivered.map((n) => n * perMin))]);
    const lat = [];
    const latData = [t];
    flows.forEach((f, i) => {
      // minutes without a delivery have no latency: gaps, and points so a lone minute still shows
      lat.push({ label: `${label(f)} p50`, stroke: color(i), width: 1.5, points: { show: true, size: 5 } });
      lat.push({ label: `${label(f)} p95`, stroke: color(i), width: 2, dash: [6, 4],
        points: { show: true, size: 5 } });
      latData.push(f.p50_ms, f.p95_ms);
    });
    render('latency', 'ms', lat, latData);
    render('backlog', 'pending',
      flows.map((f, i) => ({ label: label(f), stroke: color(i), fill: `${color(i)}22`, width: 2 })),
      [t, ...flows.map((f) => f.backlog)]);
    const updated = document.getElementById('charts-updated');
    updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
  }

  async function refresh() {
    if (inflight || typeof uPlot === 'undefined') return;
    inflight = true;
    try {
      const r = await fetch('/api/flow/series?window=1h&bucket=1m',
        { credentials: 'same-origin', headers: { Accept: 'application/json' } });
      if (r.ok) draw(await r.json());
    } catch (e) {
      // the next tick tries again; the live connection indicator shows outages
    } finally {
      inflight = false;
    }
  }

  window.addEventListener('resize', () => {
    for (const [name, c] of Object.entries(charts)) c.plot.setSize({ width: width(box(name)), height: 200 });
  });
  document.addEventListener('DOMContentLoaded', refresh);
  if (document.readyState !== 'loading') refresh();
  setInterval(refresh, REFRESH_MS);
})();
