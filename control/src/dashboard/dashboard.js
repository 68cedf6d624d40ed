// The dashboard's script. It asks the admin API with the admin token a person typed in
// (kept in sessionStorage: gone when the tab closes) or passed as `/#token=...` (read,
// then removed from the address bar). Every value from the API is written with
// textContent, never as markup: a route or an id cannot inject anything. The page's CSP
// also requires Trusted Types, so assigning any string as markup would throw.
'use strict';
(function () {
  const TOKEN_KEY = 'gatehouse.adminToken';
  const byId = (id) => document.getElementById(id);

  class Refused extends Error {}

  // `/#token=...`: a shortcut for scripts and bookmarks. The fragment never reaches the
  // server; it is dropped from the address bar and the history at once.
  function tokenFromFragment() {
    const hash = window.location.hash;
    if (!hash.startsWith('#token=')) return;
    let token = '';
    try {
      token = decodeURIComponent(hash.slice('#token='.length));
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

  function row(body, values) {
    const tr = document.createElement('tr');
    for (const v of values) {
      const td = document.createElement('td');
      td.textContent = v === null || v === undefined ? '' : String(v);
      tr.appendChild(td);
    }
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

  async function api(path, token) {
    const res = await fetch(path, {
      headers: { authorization: 'Bearer ' + token },
      cache: 'no-store',
      credentials: 'omit',
    });
    if (res.status === 401) throw new Refused();
    if (!res.ok) throw new Error(path + ' answered ' + res.status);
    return res.json();
  }

  function hideData() {
    byId('data').hidden = true;
    for (const id of ['keys-body', 'refusals-body', 'plans-body', 'proxies-body']) clear(byId(id));
    byId('feed-version').textContent = '';
    byId('feed-epoch').textContent = '';
    byId('lagging').textContent = '';
    byId('lagging').hidden = true;
  }

  function render(keys, refusals, stats) {
    const keysBody = byId('keys-body');
    clear(keysBody);
    for (const k of keys.keys) {
      row(keysBody, [k.id, k.user_id, k.plan, k.status, k.created_at, k.expires_at || 'never',
        k.last_used || 'never']);
    }
    if (keys.keys.length === 0) emptyRow(keysBody, 7, 'No keys yet.');

    const refusalsBody = byId('refusals-body');
    clear(refusalsBody);
    for (const e of refusals.events) {
      row(refusalsBody, [e.at, e.actor, e.method, e.target, e.code, e.status]);
    }
    if (refusals.events.length === 0) emptyRow(refusalsBody, 6, 'No refusals reported.');

    const plansBody = byId('plans-body');
    clear(plansBody);
    for (const p of stats.plans) {
      row(plansBody, [p.plan === '' ? '(anonymous)' : p.plan, p.allowed, p.refused]);
    }
    if (stats.plans.length === 0) emptyRow(plansBody, 3, 'No requests counted in the last 24 h.');

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
    const lagging = byId('lagging');
    lagging.textContent = stats.lagging === 0 ? '' : 'Lagging proxies: ' + stats.lagging +
      ' (marked below). A proxy lags when a change older than 30 s has not reached its ' +
      'cache, or it never reported its cache version; see its feed metrics and last report.';
    lagging.hidden = stats.lagging === 0;
    byId('data').hidden = false;
  }

  async function load() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) {
      hideData();
      say('Enter the admin token to see the keys, refusals and counts.', false);
      return;
    }
    say('Loading…', false);
    try {
      const [keys, refusals, stats] = await Promise.all([
        api('/v1/keys?limit=100', token),
        api('/v1/audit?kind=refusal&limit=50', token),
        api('/v1/stats', token),
      ]);
      render(keys, refusals, stats);
      say('Signed in with the admin token. Times are UTC.', false);
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

  byId('login').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const input = byId('token');
    const token = input.value.trim();
    input.value = '';
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    load();
  });
  byId('forget').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    load();
  });

  tokenFromFragment();
  load();
})();
