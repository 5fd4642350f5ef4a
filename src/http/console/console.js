// mcp-fanout operator console: polls GET /admin/stats every second and publishes through
// POST /admin/publish, with the admin token kept in sessionStorage only. Hand-written, no
// dependencies; everything is rendered with textContent / SVG elements (no HTML from data).
'use strict';
(() => {
  const TOKEN_KEY = 'mcp-fanout-admin-token';
  const POLL_MS = 1000;
  const SVG = 'http://www.w3.org/2000/svg';
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let generation = 0;

  const token = () => sessionStorage.getItem(TOKEN_KEY);

  function authHeaders(extra) {
    const h = Object.assign({}, extra);
    const t = token();
    if (t) h.Authorization = 'Bearer ' + t;
    return h;
  }

  async function call(path, init) {
    const resp = await fetch(path, Object.assign({ cache: 'no-store' }, init));
    const text = await resp.text();
    let body = null;
    try { body = JSON.parse(text); } catch (_) { body = null; }
    return { status: resp.status, body, text };
  }

  // The §4.1 error shape as one line: "400 invalid_json: <message> (field …, index …)".
  function describe(r) {
    const e = r.body && r.body.error;
    if (!e) return r.status + ' ' + (r.text || 'no answer');
    let s = r.status + ' ' + e.code + ': ' + e.message;
    if (e.field !== undefined) s += ' (field ' + e.field + ')';
    if (e.index !== undefined) s += ' (index ' + e.index + ')';
    return s;
  }

  function askToken(message) {
    generation += 1;
    clearTimeout(timer);
    $('main').hidden = true;
    $('change-token').hidden = true;
    $('auth').hidden = false;
    $('status').textContent = 'not connected';
    const err = $('auth-error');
    err.hidden = !message;
    err.textContent = message || '';
    $('token').focus();
  }

  // A refused token is forgotten, so a reload asks again.
  function refused(r) {
    sessionStorage.removeItem(TOKEN_KEY);
    const why = r.status === 401
      ? '401 Unauthorized — the server refused this token. '
      : r.status + ' Forbidden — ';
    askToken(why + describe(r));
  }

  function start() {
    generation += 1;
    const mine = generation;
    clearTimeout(timer);
    const loop = async () => {
      await refresh(mine);
      if (mine === generation) timer = setTimeout(loop, POLL_MS);
    };
    loop();
  }

  async function refresh(mine) {
    let r;
    try {
      r = await call('/admin/stats', { headers: authHeaders() });
    } catch (e) {
      $('status').textContent = 'cannot reach the replica: ' + e.message;
      return;
    }
    if (mine !== generation) return;
    if (r.status === 401 || r.status === 403) return refused(r);
    if (r.status !== 200 || !r.body) {
      $('status').textContent = 'stats failed: ' + describe(r);
      return;
    }
    $('auth').hidden = true;
    $('auth-error').hidden = true;
    $('main').hidden = false;
    $('change-token').hidden = false;
    render(r.body);
  }

  function cell(tr, text, cls) {
    const td = document.createElement('td');
    td.textContent = text === null || text === undefined ? '—' : String(text);
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function clock(unix) {
    return new Date(unix * 1000).toLocaleTimeString([], { hour12: false });
  }

  function fill(tbody, rows, build) {
    const fresh = document.createDocumentFragment();
    rows.forEach((row) => fresh.appendChild(build(row)));
    tbody.replaceChildren(fresh);
  }

  function pairs(dl, entries) {
    const f = document.createDocumentFragment();
    entries.forEach(([k, v]) => {
      const dt = document.createElement('dt');
      dt.textContent = k;
      const dd = document.createElement('dd');
      dd.textContent = v === null || v === undefined ? '—' : String(v);
      f.append(dt, dd);
    });
    dl.replaceChildren(f);
  }

  function render(s) {
    $('status').textContent = 'replica ' + s.replica + ' · ' + s.mode + ' mode · database ' +
      s.database + ' · updated ' + clock(s.now);

    fill($('replicas').tBodies[0], s.replicas, (r) => {
      const tr = document.createElement('tr');
      tr.dataset.replica = r.id;
      const k = r.subscribers_by_kind || {};
      cell(tr, r.id + (r.id === s.replica ? ' (this one)' : ''));
      cell(tr, r.address);
      cell(tr, k.sse, 'num');
      cell(tr, k.poll, 'num');
      cell(tr, k.listen, 'num');
      cell(tr, r.last_delivered_id);
      const age = r.heartbeat_age_secs;
      // Late: three heartbeats missed.
      const late = 3 * (s.heartbeat_secs || 2);
      cell(tr, age === undefined ? null : age.toFixed(1) + ' s', age > late ? 'num stale' : 'num');
      const l = r.listen_connected;
      // null: memory mode, or a replica of an older release (it does not report it).
      const none = s.mode === 'memory' ? 'n/a (memory)' : 'unknown';
      cell(tr, l === null || l === undefined ? none : (l ? 'connected' : 'DOWN'),
        l === false ? 'error' : '');
      return tr;
    });

    const log = s.log;
    pairs($('log'), [
      ['head', log.head_id],
      ['pruned watermark', log.pruned === 0 ? 'nothing pruned'
        : (log.pruned_id || 'unknown (database unavailable)')],
      ['retention', (log.retention_secs === null ? 'memory bounds' : log.retention_secs + ' s') +
        ' / ' + log.retention_max_events + ' events'],
      ['published here', s.published_total],
      ['delivered here', s.delivered_total],
    ]);
    pairs($('drops'), Object.entries(s.dropped_total));

    const pts = s.series.points;
    const secs = s.series.interval_secs || 1;
    const win = s.series.window_points || pts.length;
    chart('chart-events', pts, [
      { name: 'published', values: pts.map((p) => p.published_per_s) },
      { name: 'delivered', values: pts.map((p) => p.delivered_per_s) },
    ], (v) => v.toFixed(0) + '/s', win, secs);
    const drops = s.series.drop_reasons
      .map((reason, i) => ({ name: reason, values: pts.map((p) => p.dropped[i] / secs) }))
      .filter((d) => d.values.some((v) => v > 0));
    chart('chart-drops', pts, drops.length ? drops : [{ name: 'none', values: pts.map(() => 0) }],
      (v) => v.toFixed(1) + '/s', win, secs);
    chart('chart-lag', pts, [
      { name: 'p50', values: pts.map((p) => p.lag_p50_ms) },
      { name: 'p99', values: pts.map((p) => p.lag_p99_ms) },
    ], (v) => v.toFixed(2) + ' ms', win, secs);

    fill($('recent').tBodies[0], s.recent, (e) => {
      const tr = document.createElement('tr');
      tr.dataset.eventId = e.id;
      cell(tr, e.id);
      cell(tr, e.method);
      cell(tr, e.tenant);
      cell(tr, e.session);
      cell(tr, e.bytes, 'num');
      cell(tr, clock(e.committed_at));
      return tr;
    });
  }

  function svgEl(name, attrs) {
    const el = document.createElementNS(SVG, name);
    Object.entries(attrs).forEach(([k, v]) => el.setAttribute(k, String(v)));
    return el;
  }

  // A small line chart over the last points: one polyline per series, the y axis from 0 to the
  // largest value, gaps (null) skipped; the legend shows each series' latest value.
  function chart(id, pts, series, fmt, span, secs) {
    const svg = $(id);
    const W = 300, H = 90, TOP = 12;
    // The newest point is at the right edge; the width is the whole window (minutes).
    const n = Math.max(span, pts.length, 2);
    const offset = n - pts.length;
    let max = 0;
    series.forEach((s) => s.values.forEach((v) => { if (v !== null && v > max) max = v; }));
    const top = max > 0 ? max : 1;
    const nodes = [svgEl('line', { class: 'axis', x1: 0, y1: H - 1, x2: W, y2: H - 1 })];
    series.forEach((s, i) => {
      const xy = [];
      s.values.forEach((v, j) => {
        if (v === null) return;
        const x = ((offset + j) / (n - 1)) * W;
        const y = H - 1 - (v / top) * (H - TOP);
        xy.push(x.toFixed(1) + ',' + y.toFixed(1));
        // A value with no neighbour draws no line: mark it.
        const lone = (j === 0 || s.values[j - 1] === null) &&
          (j === s.values.length - 1 || s.values[j + 1] === null);
        if (lone) nodes.push(svgEl('circle', { class: 'dot s' + (i % 8), cx: x, cy: y, r: 1.5 }));
      });
      nodes.push(svgEl('polyline', { class: 's' + (i % 8), points: xy.join(' ') }));
    });
    const label = svgEl('text', { x: 2, y: 9 });
    label.textContent = 'max ' + fmt(max) + ' · last ' + Math.round(n * secs / 60) + ' min';
    nodes.push(label);
    svg.replaceChildren(...nodes);
    svg.dataset.max = String(max);

    const legend = svg.parentElement.querySelector('.legend');
    const items = series.map((s, i) => {
      const span = document.createElement('span');
      const sw = document.createElement('span');
      sw.className = 'swatch s' + (i % 8);
      const last = [...s.values].reverse().find((v) => v !== null);
      span.append(sw, s.name + ' ' + (last === undefined ? '—' : fmt(last)));
      return span;
    });
    legend.replaceChildren(...items);
  }

  async function publish(ev) {
    ev.preventDefault();
    const out = $('publish-result');
    const parts = ['"method":' + JSON.stringify($('pub-method').value.trim())];
    // params go to the server exactly as typed: it validates them and keeps their key order.
    const params = $('pub-params').value.trim();
    if (params) parts.push('"params":' + params);
    for (const [field, id] of [['tenant', 'pub-tenant'], ['session', 'pub-session']]) {
      const v = $(id).value;
      if (v) parts.push(JSON.stringify(field) + ':' + JSON.stringify(v));
    }
    const extra = { 'Content-Type': 'application/json' };
    const key = $('pub-key').value;
    if (key) extra['Idempotency-Key'] = key;
    out.className = '';
    out.textContent = 'publishing…';
    delete out.dataset.id;
    let r;
    try {
      r = await call('/admin/publish', {
        method: 'POST', headers: authHeaders(extra), body: '{' + parts.join(',') + '}',
      });
    } catch (e) {
      out.className = 'error';
      out.textContent = 'cannot reach the replica: ' + e.message;
      return;
    }
    if (r.status === 200 && r.body && r.body.id) {
      out.className = 'ok';
      out.dataset.id = r.body.id;
      out.textContent = 'published ' + r.body.id;
      return;
    }
    out.className = 'error';
    out.textContent = describe(r);
    if (r.status === 401) refused(r);
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('token-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $('token').value);
      $('token').value = '';
      start();
    });
    $('change-token').addEventListener('click', () => {
      sessionStorage.removeItem(TOKEN_KEY);
      askToken('');
    });
    $('publish-form').addEventListener('submit', publish);
    if (token() === null) askToken('');
    else start();
  });
})();
