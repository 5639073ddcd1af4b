// The dashboard's one script (the Content-Security-Policy allows no inline script): times
// in the browser's zone, live updates of the page (paused and timed by the user), actions
// posted with the session's CSRF token, and the overview's uPlot charts. Everything it puts
// into the page comes from the server already escaped, or goes in as text.
'use strict';

(function () {
  const main = document.getElementById('main');
  if (!main) return;

  // Same-origin addresses built from the origin: a page opened as http://user:pass@host/
  // would make relative ones carry the credentials, which fetch refuses.
  function here(path) { return location.origin + path; }

  let csrfToken = null;
  async function csrf() {
    if (!csrfToken) {
      const response = await fetch(here('/api/session'), { credentials: 'same-origin' });
      csrfToken = (await response.json()).csrf_token;
    }
    return csrfToken;
  }

  function localTimes(root) {
    root.querySelectorAll('time[data-ms]').forEach(function (node) {
      const ms = Number(node.dataset.ms);
      if (!ms) return;
      const at = new Date(ms);
      node.textContent = at.toLocaleString();
      node.title = at.toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
      node.dateTime = at.toISOString();
    });
  }

  function flash(text, bad) {
    const box = document.getElementById('flash');
    box.textContent = text;
    box.className = bad ? 'bad' : 'good';
  }

  // Live updates: the page's <main> again, swapped in; the charts and open details stay.
  const toggle = document.getElementById('live-toggle');
  const picker = document.getElementById('live-interval');
  const status = document.getElementById('live-status');
  let paused = localStorage.getItem('psw-live-paused') === '1';
  let interval = Number(localStorage.getItem('psw-live-interval') || '2000');
  picker.value = String(interval);
  if (picker.value !== String(interval)) { interval = 2000; picker.value = '2000'; }
  let timer = null;
  let busy = false;

  function schedule() {
    clearTimeout(timer);
    toggle.textContent = paused ? 'Resume updates' : 'Pause updates';
    if (!paused) timer = setTimeout(refresh, interval);
  }

  async function refresh() {
    if (busy) return schedule();
    // Do not pull the page from under someone typing into it.
    const active = document.activeElement;
    if (active && main.contains(active) && (active.tagName === 'INPUT' || active.tagName === 'SELECT')) {
      return schedule();
    }
    busy = true;
    try {
      const response = await fetch(here(location.pathname + location.search), {
        credentials: 'same-origin',
        headers: { 'X-Psw-Fragment': '1' },
      });
      if (response.ok) {
        const html = await response.text();
        const charts = document.getElementById('charts');
        const open = Array.from(main.querySelectorAll('[data-group] details[open]'))
          .map(function (node) { return node.closest('[data-group]').dataset.group; });
        main.innerHTML = html;
        const fresh = document.getElementById('charts');
        if (charts && fresh) fresh.replaceWith(charts);
        main.querySelectorAll('[data-group]').forEach(function (row) {
          if (open.indexOf(row.dataset.group) >= 0) {
            const details = row.querySelector('details');
            if (details) details.open = true;
          }
        });
        localTimes(main);
        status.textContent = 'updated ' + new Date().toLocaleTimeString();
        status.className = '';
      } else {
        status.textContent = 'update failed (' + response.status + ')';
        status.className = 'bad';
      }
    } catch (err) {
      status.textContent = 'update failed';
      status.className = 'bad';
    }
    busy = false;
    schedule();
  }

  toggle.addEventListener('click', function () {
    paused = !paused;
    localStorage.setItem('psw-live-paused', paused ? '1' : '0');
    schedule();
  });
  picker.addEventListener('change', function () {
    interval = Number(picker.value);
    localStorage.setItem('psw-live-interval', String(interval));
    schedule();
  });

  // Actions: POST with the CSRF token; the server checks the role and the token itself.
  function describe(body) {
    if (body.replayed !== undefined) return body.replayed + ' replayed';
    if (body.purged !== undefined) return body.purged + ' purged';
    if (body.job_id) return 'job ' + body.job_id;
    if (body.paused !== undefined) return (body.queue || body.schedule) + (body.paused ? ' paused' : ' resumed');
    if (body.cancelled) return body.cancelled + ' cancelled';
    return 'done';
  }

  document.addEventListener('click', async function (event) {
    const button = event.target.closest('button[data-action]');
    if (!button) return;
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
    button.disabled = true;
    try {
      const response = await fetch(here(button.dataset.action), {
        method: 'POST',
        credentials: 'same-origin',
        headers: { 'X-CSRF-Token': await csrf() },
      });
      const body = await response.json().catch(function () { return {}; });
      if (response.ok) flash('Done: ' + describe(body), false);
      else flash('Refused: ' + (body.error || response.status), true);
    } catch (err) {
      flash('Failed: ' + err, true);
    }
    button.disabled = false;
    refresh();
  });

  // The overview's charts, from /api/charts, in the browser's zone (uPlot's time axis).
  let chartWindow = 'hour';
  let plots = [];
  async function drawCharts() {
    const charts = document.getElementById('charts');
    if (!charts || typeof uPlot === 'undefined') return;
    const response = await fetch(here('/api/charts?window=' + chartWindow), { credentials: 'same-origin' });
    if (!response.ok) return;
    const s = await response.json();
    const width = Math.max(320, charts.clientWidth - 16);
    plots.forEach(function (plot) { plot.destroy(); });
    plots = [];
    const ms = { values: function (u, values) { return values.map(function (v) { return v + ' ms'; }); } };
    plots.push(new uPlot({
      width: width, height: 220,
      series: [{}, { label: 'succeeded', stroke: '#2a7' }, { label: 'failed', stroke: '#d33' },
        { label: 'retried', stroke: '#e90' }, { label: 'dead-lettered', stroke: '#808' }],
    }, [s.at, s.succeeded, s.failed, s.retried, s.dead_lettered], document.getElementById('chart-throughput')));
    plots.push(new uPlot({
      width: width, height: 220,
      axes: [{}, ms],
      series: [{}, { label: 'wait p50', stroke: '#9bd' }, { label: 'wait p95', stroke: '#59c' },
        { label: 'wait p99', stroke: '#147' }, { label: 'run p50', stroke: '#dc9' },
        { label: 'run p95', stroke: '#c94' }, { label: 'run p99', stroke: '#741' }],
    }, [s.at, s.wait_p50_ms, s.wait_p95_ms, s.wait_p99_ms, s.run_p50_ms, s.run_p95_ms, s.run_p99_ms],
    document.getElementById('chart-latency')));
  }

  document.addEventListener('click', function (event) {
    const button = event.target.closest('#charts button[data-window]');
    if (!button) return;
    chartWindow = button.dataset.window;
    document.querySelectorAll('#charts button[data-window]').forEach(function (b) {
      b.classList.toggle('current', b === button);
    });
    drawCharts();
  });

  localTimes(document);
  schedule();
  drawCharts();
  setInterval(function () { if (!paused) drawCharts(); }, 30000);
})();
