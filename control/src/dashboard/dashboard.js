// The dashboard's script. It asks the admin API with the admin token a person typed in
// (kept in sessionStorage: gone when the tab closes) or passed as `/#token=...` (read,
// then removed from the address bar; `&window=day` shows the last day at once). Every value from the API is written with
// textContent or as an SVG attribute computed here, never as markup: a route or an id
// cannot inject anything. The page's CSP also requires Trusted Types, so assigning any
// string as markup would throw. The charts are SVG built with DOM calls, in this page:
// nothing is loaded from anywhere else.
'use strict';
(function () {
  const TOKEN_KEY = 'gatehouse.adminToken';
  const SVG_NS = 'http://www.w3.org/2000/svg';
  // Reloads the data this often while a token is set (quietly: the page stays as it is
  // until the new answers are in).
  const REFRESH_MS = 30000;
  const byId = (id) => document.getElementById(id);
  let currentWindow = 'hour';

  class Refused extends Error {}

  // `/#token=...[&window=day]`: a shortcut for scripts and bookmarks. The fragment never
  // reaches the server; it is dropped from the address bar and the history at once.
  function tokenFromFragment() {
    const hash = window.location.hash;
    if (!hash.startsWith('#token=')) return;
    let token = '';
    let value = hash.slice('#token='.length);
    // Only as a suffix: a token may hold an `&` of its own.
    if (value.endsWith('&window=day')) {
      value = value.slice(0, -'&window=day'.length);
      setWindow('day');
    }
    try {
      token = decodeURIComponent(value);
    } catch (e) {
      token = '';
    }
    window.history.replaceState(null, '', window.location.pathname + window.location.search);
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
  }

  function say(text, isError) {
    const m = byId('message');
    m.textContent = text;
    m.className = isError ? 'error' : '';
  }

  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
  }

  // `nowrap`: the indexes of the cells kept on one line (times, codes, callers).
  function row(body, values, nowrap) {
    const tr = document.createElement('tr');
    values.forEach((v, i) => {
      const td = document.createElement('td');
      td.textContent = v === null || v === undefined ? '' : String(v);
      const classes = [];
      if (typeof v === 'number') classes.push('num');
      if (nowrap && nowrap.includes(i)) classes.push('nowrap');
      if (classes.length) td.className = classes.join(' ');
      tr.appendChild(td);
    });
    body.appendChild(tr);
    return tr;
  }

  function emptyRow(body, columns, text) {
    const tr = document.createElement('tr');
    const td = document.createElement('td');
    td.colSpan = columns;
    td.className = 'empty';
    td.textContent = text;
    tr.appendChild(td);
    body.appendChild(tr);
  }

  function note(id, text) {
    const el = byId(id);
    el.textContent = text || '';
    el.hidden = !text;
  }

  async function fetchApi(path, token) {
    const res = await fetch(path, {
      headers: { authorization: 'Bearer ' + token },
      cache: 'no-store',
      credentials: 'omit',
    });
    if (res.status === 401) throw new Refused();
    return res;
  }

  async function api(path, token) {
    const res = await fetchApi(path, token);
    if (!res.ok) throw new Error(path + ' answered ' + res.status);
    return res.json();
  }

  // An endpoint this control service may not have (an older one): null on 404.
  async function apiIfPresent(path, token) {
    const res = await fetchApi(path, token);
    if (res.status === 404) return null;
    if (!res.ok) throw new Error(path + ' answered ' + res.status);
    return res.json();
  }

  const DATA_BODIES = ['keys-body', 'groups-body', 'top-callers-body', 'top-routes-body',
    'plans-body', 'proxies-body', 'modes-body', 'overrides-body', 'allowlist-body'];

  function hideData() {
    byId('data').hidden = true;
    for (const id of DATA_BODIES) clear(byId(id));
    clear(byId('charts'));
    for (const id of ['feed-version', 'feed-epoch', 'window-range']) byId(id).textContent = '';
    for (const id of ['lagging', 'alert', 'series-note', 'groups-note', 'levers-note']) note(id, '');
    byId('levers').hidden = true;
  }

  const planName = (p) => (p === '' ? '(anonymous)' : p);
  const windowWords = () => (currentWindow === 'day' ? 'the last day' : 'the last hour');

  // "HH:MM" in UTC, as every time on the page is.
  function hhmm(ms) {
    return new Date(ms).toISOString().slice(11, 16);
  }

  // The smallest of 1, 2, 5 times a power of ten that is at least `n` (1 for 0).
  function niceCeil(n) {
    if (n <= 1) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(n)));
    for (const m of [1, 2, 5, 10]) if (m * p >= n) return m * p;
    return 10 * p;
  }

  function svg(name, attrs, parent) {
    const el = document.createElementNS(SVG_NS, name);
    for (const k of Object.keys(attrs)) el.setAttribute(k, String(attrs[k]));
    if (parent) parent.appendChild(el);
    return el;
  }

  function svgText(parent, x, y, text, cls) {
    const t = svg('text', { x: x, y: y, class: cls }, parent);
    t.textContent = text;
    return t;
  }

  // Geometry of one plan's chart, in the SVG's own units (it scales to its box).
  const W = 760;
  const H = 196;
  const LEFT = 60;
  const RIGHT = 14;
  const TOP_BAND = { top: 8, bottom: 92 };
  const LOW_BAND = { top: 108, bottom: 168 };

  // One plan's requests over the window: allowed as an area in the upper band; refused
  // and shadow "would refuse" as two lines in the lower band, so a shadowed limit's effect
  // is read against the real refusals at a glance. Minutes the API did not list had no
  // requests.
  function chart(plan, fromMs, minutes) {
    const series = { allowed: new Array(minutes).fill(0), refused: new Array(minutes).fill(0),
      shadow: new Array(minutes).fill(0) };
    for (const p of plan.points) {
      const i = Math.round((Date.parse(p.minute) - fromMs) / 60000);
      if (i < 0 || i >= minutes) continue;
      series.allowed[i] = p.allowed;
      series.refused[i] = p.refused;
      series.shadow[i] = p.shadow_refused;
    }
    const x = (i) => LEFT + (minutes === 1 ? 0 : (i * (W - LEFT - RIGHT)) / (minutes - 1));
    const y = (band, max, v) => band.bottom - ((band.bottom - band.top) * v) / max;
    const points = (values, band, max) =>
      values.map((v, i) => x(i).toFixed(1) + ',' + y(band, max, v).toFixed(1)).join(' ');

    const figure = document.createElement('figure');
    figure.className = 'chart';
    figure.dataset.plan = plan.plan;
    const caption = document.createElement('figcaption');
    const name = document.createElement('strong');
    name.textContent = planName(plan.plan);
    caption.appendChild(name);
    caption.appendChild(document.createTextNode(': ' + plan.allowed + ' allowed, ' +
      plan.refused + ' refused, ' + plan.shadow_refused + ' would refuse (shadow) in ' +
      windowWords()));
    figure.appendChild(caption);

    const root = svg('svg', { viewBox: '0 0 ' + W + ' ' + H, class: 'chart-svg', role: 'img',
      'data-minutes': minutes });
    const label = svg('title', {}, root);
    label.textContent = caption.textContent;

    const allowedMax = niceCeil(Math.max(...series.allowed));
    const refusedMax = niceCeil(Math.max(...series.refused, ...series.shadow));
    for (const [band, max, what] of [[TOP_BAND, allowedMax, 'allowed per minute'],
      [LOW_BAND, refusedMax, 'refused / would refuse per minute']]) {
      svg('line', { x1: LEFT, x2: W - RIGHT, y1: band.top, y2: band.top, class: 'grid' }, root);
      svg('line', { x1: LEFT, x2: W - RIGHT, y1: band.bottom, y2: band.bottom, class: 'axis' }, root);
      svgText(root, LEFT - 4, band.top + 8, String(max), 'tick end');
      svgText(root, LEFT - 4, band.bottom, '0', 'tick end');
      svgText(root, LEFT + 4, band.top + 13, what, 'band-label');
    }
    const area = points(series.allowed, TOP_BAND, allowedMax);
    svg('polygon', { points: x(0).toFixed(1) + ',' + TOP_BAND.bottom + ' ' + area + ' ' +
      x(minutes - 1).toFixed(1) + ',' + TOP_BAND.bottom, class: 'allowed-area' }, root);
    const lines = [['allowed', series.allowed, TOP_BAND, allowedMax],
      ['refused', series.refused, LOW_BAND, refusedMax],
      ['shadow', series.shadow, LOW_BAND, refusedMax]];
    for (const [cls, values, band, max] of lines) {
      svg('polyline', { points: points(values, band, max), class: 'line ' + cls,
        'data-series': cls, 'data-total': values.reduce((a, b) => a + b, 0),
        'data-peak': Math.max(...values) }, root);
    }
    const fromLabel = fromMs;
    for (const i of [0, Math.round((minutes - 1) / 4), Math.round((minutes - 1) / 2),
      Math.round((3 * (minutes - 1)) / 4), minutes - 1]) {
      const t = svgText(root, x(i), H - 6, hhmm(fromLabel + i * 60000), 'tick middle');
      if (i === 0) t.setAttribute('class', 'tick start');
      if (i === minutes - 1) t.setAttribute('class', 'tick end');
    }

    // Pointing at a minute reads its three counts out.
    const cursor = svg('line', { x1: LEFT, x2: LEFT, y1: TOP_BAND.top, y2: LOW_BAND.bottom,
      class: 'cursor', visibility: 'hidden' }, root);
    const readout = document.createElement('p');
    readout.className = 'readout';
    readout.textContent = '\u00a0';
    root.addEventListener('mousemove', (ev) => {
      const box = root.getBoundingClientRect();
      const ux = ((ev.clientX - box.left) * W) / box.width;
      const i = Math.min(minutes - 1, Math.max(0,
        Math.round(((ux - LEFT) * (minutes - 1)) / (W - LEFT - RIGHT))));
      cursor.setAttribute('x1', x(i).toFixed(1));
      cursor.setAttribute('x2', x(i).toFixed(1));
      cursor.setAttribute('visibility', 'visible');
      readout.textContent = hhmm(fromMs + i * 60000) + ' UTC: ' + series.allowed[i] +
        ' allowed, ' + series.refused[i] + ' refused, ' + series.shadow[i] + ' would refuse';
    });
    root.addEventListener('mouseleave', () => {
      cursor.setAttribute('visibility', 'hidden');
      readout.textContent = '\u00a0';
    });
    figure.appendChild(root);
    figure.appendChild(readout);
    return figure;
  }

  function renderSeries(series) {
    const charts = byId('charts');
    clear(charts);
    const fromMs = Date.parse(series.from);
    const minutes = Math.round((Date.parse(series.to) - fromMs) / 60000) + 1;
    for (const plan of series.plans) charts.appendChild(chart(plan, fromMs, minutes));
    if (series.plans.length === 0) {
      const p = document.createElement('p');
      p.className = 'empty';
      p.textContent = 'No requests counted in ' + windowWords() + '.';
      charts.appendChild(p);
    }
    note('series-note', series.plans_left_off > 0
      ? 'The ' + series.plans.length + ' busiest plans are drawn; ' + series.plans_left_off +
        ' others had requests too.'
      : '');
    byId('window-range').textContent = series.from + ' to ' + series.to + ' (UTC)';
  }

  function renderRefusals(r) {
    const groups = byId('groups-body');
    clear(groups);
    for (const g of r.groups) {
      const tr = row(groups, [g.code, g.status, g.route === '' ? '(no route)' : g.route, g.caller,
        g.shadow ? 'would refuse (shadow)' : 'refused', g.count, g.first_seen, g.last_seen],
      [0, 3, 4, 6, 7]);
      if (g.shadow) tr.className = 'shadow';
    }
    if (r.groups.length === 0) emptyRow(groups, 8, 'No refusals reported in ' + windowWords() + '.');
    note('groups-note', r.groups_truncated
      ? 'The ' + r.groups.length + ' largest groups are shown; there were more.' : '');

    const callers = byId('top-callers-body');
    clear(callers);
    for (const c of r.top_callers) row(callers, [c.caller, c.refused, c.would_refuse]);
    if (r.top_callers.length === 0) emptyRow(callers, 3, 'None.');
    const routes = byId('top-routes-body');
    clear(routes);
    for (const c of r.top_routes) {
      row(routes, [c.route === '' ? '(no route)' : c.route, c.refused, c.would_refuse]);
    }
    if (r.top_routes.length === 0) emptyRow(routes, 3, 'None.');

    // Legitimate callers blocked: many distinct callers answered 429 within minutes.
    const a = r.alert;
    note('alert', a.firing
      ? 'Many distinct callers refused: ' + a.distinct_callers + ' callers got ' + a.status +
        ' in the last ' + Math.round(a.window_seconds / 60) + ' minutes (the alert is set ' +
        'above ' + a.threshold + '). See the top refused callers and routes; an allowlist ' +
        'entry, a per-key limit or shadow mode lifts a limit without reloading Envoy.'
      : '');
  }

  function when(v) {
    if (v === null || v === undefined) return 'never';
    if (typeof v === 'number') return new Date(v * 1000).toISOString();
    return String(v);
  }

  // GET /v1/allowlist: a list, or an object holding one.
  function allowlistEntries(body) {
    if (Array.isArray(body)) return body;
    for (const k of ['allowlist', 'entries', 'items']) if (Array.isArray(body[k])) return body[k];
    return [];
  }

  function allowlistMatch(e) {
    for (const k of ['cidr', 'key_id', 'user', 'tenant']) {
      if (e[k] !== undefined && e[k] !== null) return (k === 'key_id' ? 'key' : k) + ' ' + e[k];
    }
    return '';
  }

  // The levers (issue 23): shown when this control service has them, hidden otherwise.
  function renderLevers(limits, allowlist, problem) {
    const section = byId('levers');
    const modes = byId('modes-body');
    const overrides = byId('overrides-body');
    const entries = byId('allowlist-body');
    for (const b of [modes, overrides, entries]) clear(b);
    if (problem) {
      section.hidden = false;
      note('levers-note', 'The levers could not be read: ' + problem);
      return;
    }
    section.hidden = limits === null && allowlist === null;
    note('levers-note', '');
    const unavailable = 'Not available on this control service.';
    if (limits === null) {
      emptyRow(modes, 4, unavailable);
      emptyRow(overrides, 6, unavailable);
    } else {
      for (const m of limits.modes || []) {
        const tr = row(modes, [m.limit, m.mode, m.reason, m.updated_at], [0, 1, 3]);
        tr.className = 'mode-' + (m.mode === 'off' ? 'off' : m.mode === 'shadow' ? 'shadow' : 'enforce');
      }
      if (!(limits.modes || []).length) emptyRow(modes, 4, 'None: every rule as the policy says.');
      for (const o of limits.overrides || []) {
        row(overrides, [o.scope, o.id, o.requests_per_minute, when(o.expires_at), o.reason,
          o.updated_at], [0, 1, 3, 5]);
      }
      if (!(limits.overrides || []).length) emptyRow(overrides, 6, 'None.');
    }
    if (allowlist === null) {
      emptyRow(entries, 5, unavailable);
    } else {
      const list = allowlistEntries(allowlist);
      for (const e of list) {
        row(entries, [e.id, allowlistMatch(e), e.limit === null || e.limit === undefined
          ? 'every rate limit' : e.limit, e.reason, e.created_at], [0, 4]);
      }
      if (list.length === 0) emptyRow(entries, 5, 'None.');
    }
  }

  function renderStats(stats) {
    const plansBody = byId('plans-body');
    clear(plansBody);
    for (const p of stats.plans) {
      row(plansBody, [planName(p.plan), p.allowed, p.refused, p.shadow_refused]);
    }
    if (stats.plans.length === 0) emptyRow(plansBody, 4, 'No requests counted in the last 24 h.');

    byId('feed-version').textContent = String(stats.cache.version);
    byId('feed-epoch').textContent = stats.cache.epoch;
    const proxiesBody = byId('proxies-body');
    clear(proxiesBody);
    for (const p of stats.proxies) {
      const tr = row(proxiesBody, [p.proxy, p.cache_version === null ? 'unknown' : p.cache_version,
        p.behind === null ? 'unknown' : p.behind, p.seen_at, p.lagging ? 'lagging' : 'in step']);
      if (p.lagging) tr.className = 'lagging';
    }
    if (stats.proxies.length === 0) emptyRow(proxiesBody, 5, 'No proxy has reported yet.');
    // A proxy lags when a change older than 30 s has not reached it (GET /v1/stats).
    note('lagging', stats.lagging === 0 ? '' : 'Lagging proxies: ' + stats.lagging +
      ' (marked below). A proxy lags when a change older than 30 s has not reached its ' +
      'cache, or it never reported its cache version; see its feed metrics and last report.');
  }

  function renderKeys(keys) {
    const keysBody = byId('keys-body');
    clear(keysBody);
    for (const k of keys.keys) {
      row(keysBody, [k.id, k.user_id, k.plan, k.status, k.created_at, k.expires_at || 'never',
        k.last_used || 'never']);
    }
    if (keys.keys.length === 0) emptyRow(keysBody, 7, 'No keys yet.');
  }

  async function readLevers(token) {
    try {
      const [limits, allowlist] = await Promise.all([
        apiIfPresent('/v1/limits', token),
        apiIfPresent('/v1/allowlist', token),
      ]);
      return { limits: limits, allowlist: allowlist, problem: null };
    } catch (e) {
      if (e instanceof Refused) throw e;
      return { limits: null, allowlist: null, problem: e.message };
    }
  }

  // `quiet`: a refresh, which leaves the page as it is until the answers are in.
  async function load(quiet) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) {
      hideData();
      say('Enter the admin token to see the keys, refusals and counts.', false);
      return;
    }
    if (!quiet) say('Loading…', false);
    const w = currentWindow;
    try {
      const [keys, stats, refusals, series, levers] = await Promise.all([
        api('/v1/keys?limit=100', token),
        api('/v1/stats', token),
        api('/v1/stats/refusals?window=' + w, token),
        api('/v1/stats/series?window=' + w, token),
        readLevers(token),
      ]);
      if (w !== currentWindow) return;
      renderKeys(keys);
      renderStats(stats);
      renderRefusals(refusals);
      renderSeries(series);
      renderLevers(levers.limits, levers.allowlist, levers.problem);
      byId('data').hidden = false;
      say('Signed in with the admin token. Times are UTC. Updated ' +
        new Date().toISOString().slice(11, 19) + '.', false);
    } catch (e) {
      hideData();
      if (e instanceof Refused) {
        sessionStorage.removeItem(TOKEN_KEY);
        say('Wrong admin token: the control service refused it (401). Enter the right one.', true);
      } else {
        say('The control service could not be read: ' + e.message, true);
      }
    }
  }

  function setWindow(w) {
    currentWindow = w;
    byId('window-hour').setAttribute('aria-pressed', String(w === 'hour'));
    byId('window-day').setAttribute('aria-pressed', String(w === 'day'));
  }

  function chooseWindow(w) {
    setWindow(w);
    load(true);
  }

  byId('login').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const input = byId('token');
    const token = input.value.trim();
    input.value = '';
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    load(false);
  });
  byId('forget').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    load(false);
  });
  byId('window-hour').addEventListener('click', () => chooseWindow('hour'));
  byId('window-day').addEventListener('click', () => chooseWindow('day'));
  window.setInterval(() => {
    if (sessionStorage.getItem(TOKEN_KEY) && !document.hidden) load(true);
  }, REFRESH_MS);

  tokenFromFragment();
  load(false);
})();
