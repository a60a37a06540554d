// The dashboard's one script: the campaign list (/dashboard) and a
// campaign's live page (/dashboard/campaigns/{id}).
//
// Rules it keeps, because campaign names and ad ids come from clients:
// text goes into the page with textContent (never innerHTML), elements are
// built with createElement, and nothing is evaluated. The server's
// Content-Security-Policy forbids inline scripts, so this file is all the
// code the pages run (with the vendored uPlot on the campaign page).
//
// With API keys configured, the API answers 401 without one: the page then
// shows only a form asking for a key, keeps it in sessionStorage (this tab
// only) and sends it as `Authorization: Bearer`. The live stats come from
// the Server-Sent Events endpoint, read with fetch() (EventSource cannot
// send headers).
'use strict';

(function () {
  const KEY = 'impression-counter.api-key';
  const numbers = new Intl.NumberFormat();
  const localTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
  const utcTime = new Intl.DateTimeFormat(undefined, {
    dateStyle: 'medium', timeStyle: 'long', timeZone: 'UTC',
  });

  const $ = (id) => document.getElementById(id);
  const fmt = (n) => (typeof n === 'number' ? numbers.format(n) : '–');

  /** An element with its text (never markup) and class. */
  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function setText(id, text) {
    const node = $(id);
    if (node) node.textContent = text;
  }

  /** A <time>: the browser's zone in the text, UTC on hover. */
  function timeEl(iso) {
    const node = document.createElement('time');
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) {
      node.textContent = String(iso);
      return node;
    }
    node.dateTime = date.toISOString();
    node.textContent = localTime.format(date);
    node.title = utcTime.format(date);
    return node;
  }

  // ---- The API, with the key -------------------------------------------

  class Unauthorized extends Error {}

  function authHeaders() {
    const key = sessionStorage.getItem(KEY);
    return key ? { Authorization: 'Bearer ' + key } : {};
  }

  async function api(path, options) {
    const opts = options || {};
    const response = await fetch(path, {
      method: opts.method || 'GET',
      headers: Object.assign({ Accept: 'application/json' }, authHeaders(), opts.headers || {}),
      body: opts.body,
      cache: 'no-store',
    });
    if (response.status === 401) throw new Unauthorized('unauthorized');
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const message = body && typeof body.error === 'string' ? body.error : 'HTTP ' + response.status;
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  // Timers and streams of the page, stopped when the key is refused.
  const running = { timers: [], stream: null };

  function every(ms, fn) {
    running.timers.push(setInterval(fn, ms));
  }

  function stopAll() {
    running.timers.forEach(clearInterval);
    running.timers = [];
    if (running.stream) running.stream.abort();
    running.stream = null;
  }

  function showStatus(text) {
    setText('status', text || '');
  }

  /** Hides every datum and asks for a key. */
  function askKey(message) {
    stopAll();
    $('content').hidden = true;
    $('content').setAttribute('aria-hidden', 'true');
    $('auth').hidden = false;
    setText('auth-error', message || '');
    showStatus('');
    $('auth-key').value = '';
    $('auth-key').focus();
  }

  function onError(error) {
    if (error instanceof Unauthorized) {
      const had = sessionStorage.getItem(KEY) !== null;
      sessionStorage.removeItem(KEY);
      askKey(had ? 'That key was not accepted.' : '');
      return;
    }
    showStatus(error && error.message ? error.message : String(error));
  }

  /** Runs `fn`, routing failures to onError; skips a round still running. */
  function guarded(fn) {
    let busy = false;
    return async function () {
      if (busy || document.hidden) return;
      busy = true;
      try {
        await fn();
      } catch (error) {
        onError(error);
      } finally {
        busy = false;
      }
    };
  }

  async function boot() {
    $('auth-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const key = $('auth-key').value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY, key);
      $('auth').hidden = true;
      boot2();
    });
    boot2();
  }

  async function boot2() {
    try {
      // Whether the key (or no key) is accepted, before showing anything.
      await api('/api/v1/campaigns?limit=1');
    } catch (error) {
      onError(error);
      if (error instanceof Unauthorized) return;
    }
    $('auth').hidden = true;
    $('content').hidden = false;
    $('content').removeAttribute('aria-hidden');
    if (document.body.dataset.page === 'campaign') {
      startCampaign();
    } else {
      startList();
    }
  }

  // ---- The campaign list -----------------------------------------------

  const PAGE_SIZE = 25;
  const list = { cursors: [null], index: 0, rows: new Map(), bound: false };

  function startList() {
    if (!list.bound) {
      list.bound = true;
      $('prev').addEventListener('click', () => {
        if (list.index > 0) {
          list.index -= 1;
          loadPage().catch(onError);
        }
      });
      $('next').addEventListener('click', () => {
        if (list.cursors[list.index + 1]) {
          list.index += 1;
          loadPage().catch(onError);
        }
      });
      $('filter').addEventListener('input', applyFilter);
      $('create-form').addEventListener('submit', (event) => {
        event.preventDefault();
        createCampaign().catch(onError);
      });
    }
    loadPage().catch(onError);
    every(1000, guarded(refreshCounts));
  }

  async function loadPage() {
    const cursor = list.cursors[list.index];
    let path = '/api/v1/campaigns?limit=' + PAGE_SIZE;
    if (cursor) path += '&cursor=' + encodeURIComponent(cursor);
    const page = await api(path);
    list.cursors[list.index + 1] = page.next_cursor || null;
    list.cursors.length = list.index + 2;
    const body = $('campaigns').tBodies[0];
    const rows = [];
    list.rows = new Map();
    for (const campaign of page.campaigns) {
      const tr = document.createElement('tr');
      tr.dataset.campaign = campaign.id;
      tr.dataset.name = campaign.name.toLowerCase();
      const name = el('td', null, 'name');
      name.dataset.label = 'Name';
      const link = el('a', campaign.name);
      link.href = '/dashboard/campaigns/' + encodeURIComponent(campaign.id);
      name.append(link);
      const start = el('td', null, 'start');
      start.dataset.label = 'Start';
      start.append(timeEl(campaign.start_time));
      tr.append(name, start);
      const cells = {};
      for (const [key, label] of [
        ['last_hour', 'Last hour'], ['last_day', 'Last day'], ['total', 'Total'], ['users', 'Unique users'],
      ]) {
        const td = el('td', '…', 'num ' + key);
        td.dataset.label = label;
        cells[key] = td;
        tr.append(td);
      }
      list.rows.set(campaign.id, cells);
      rows.push(tr);
    }
    body.replaceChildren(...rows);
    $('prev').disabled = list.index === 0;
    $('next').disabled = !page.next_cursor;
    setText('page-no', 'Page ' + (list.index + 1));
    const empty = $('empty');
    empty.hidden = page.campaigns.length > 0;
    empty.textContent = 'No campaigns yet: create one above.';
    applyFilter();
    await refreshCounts();
  }

  function applyFilter() {
    const wanted = $('filter').value.trim().toLowerCase();
    let shown = 0;
    for (const tr of $('campaigns').tBodies[0].rows) {
      const match = !wanted || tr.dataset.name.includes(wanted);
      tr.hidden = !match;
      if (match) shown += 1;
    }
    if (wanted && shown === 0 && list.rows.size > 0) {
      $('empty').hidden = false;
      $('empty').textContent = 'No campaign on this page has that in its name.';
    } else if (list.rows.size > 0) {
      $('empty').hidden = true;
    }
  }

  async function refreshCounts() {
    const entries = Array.from(list.rows.entries());
    await Promise.all(entries.map(async ([id, cells]) => {
      try {
        const stats = await api('/api/v1/campaigns/' + encodeURIComponent(id) + '/stats');
        cells.last_hour.textContent = fmt(stats.last_hour);
        cells.last_day.textContent = fmt(stats.last_day);
        cells.total.textContent = fmt(stats.total);
        cells.users.textContent = fmt(stats.unique_users && stats.unique_users.total);
      } catch (error) {
        if (error instanceof Unauthorized) throw error;
        cells.total.title = error.message;
      }
    }));
    showStatus('');
  }

  async function createCampaign() {
    const name = $('create-name').value.trim();
    const startValue = $('create-start').value;
    const request = { name: name };
    if (startValue) {
      const start = new Date(startValue);
      if (Number.isNaN(start.getTime())) {
        setText('create-status', 'The start time is not a valid date.');
        return;
      }
      request.start_time = start.toISOString();
    }
    try {
      const created = await api('/api/v1/campaigns', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify(request),
      });
      setText('create-status', 'Created “' + created.name + '”.');
      $('create-form').reset();
      // Campaigns are listed in creation order: the new one is on the last
      // page. Show it where it is.
      window.location.assign('/dashboard/campaigns/' + encodeURIComponent(created.id));
    } catch (error) {
      if (error instanceof Unauthorized) throw error;
      setText('create-status', error.message);
    }
  }

  // ---- A campaign's page -------------------------------------------------

  const page = {
    id: null,
    stats: null,
    sort: { key: 'total', descending: true },
    secondsChart: null,
    historyChart: null,
    history: { resolution: 'minute', tz: null, hourWindow: '7d' },
    ingest: null,
    bound: false,
  };
  const SHOWN_ADS = 100;

  function startCampaign() {
    const parts = window.location.pathname.split('/');
    page.id = decodeURIComponent(parts[parts.length - 1]);
    setText('cid', page.id);
    setText('snippet',
      '<img src="' + window.location.origin + '/api/v1/impressions/pixel.gif?campaign_id=' +
      encodeURIComponent(page.id) + '&ad_id=AD_ID" width="1" height="1" alt="">');
    if (!page.bound) {
      page.bound = true;
      bindCampaignControls();
    }
    loadCampaign().catch(onError);
    follow();
    guarded(refreshSeconds)();
    guarded(refreshHistory)();
    guarded(refreshIngest)();
    every(1000, guarded(refreshSeconds));
    every(30000, guarded(refreshHistory));
    every(2000, guarded(refreshIngest));
  }

  function bindCampaignControls() {
    for (const button of document.querySelectorAll('#ads thead button')) {
      button.addEventListener('click', () => {
        const key = button.dataset.sort;
        if (page.sort.key === key) {
          page.sort.descending = !page.sort.descending;
        } else {
          page.sort = { key: key, descending: key !== 'ad' };
        }
        renderAds();
      });
    }
    for (const button of document.querySelectorAll('.tabs button')) {
      button.addEventListener('click', () => {
        page.history.resolution = button.dataset.res;
        for (const other of document.querySelectorAll('.tabs button')) {
          other.setAttribute('aria-pressed', String(other === button));
        }
        $('tz-label').hidden = page.history.resolution !== 'day';
        guarded(refreshHistory)();
      });
    }
    fillZones();
    $('tz').addEventListener('change', () => {
      page.history.tz = $('tz').value;
      guarded(refreshHistory)();
    });
    $('copy').addEventListener('click', copySnippet);
    window.addEventListener('resize', resizeCharts);
  }

  function fillZones() {
    const own = Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
    let zones = ['UTC'];
    if (typeof Intl.supportedValuesOf === 'function') {
      zones = zones.concat(Intl.supportedValuesOf('timeZone'));
    }
    if (!zones.includes(own)) zones.push(own);
    const select = $('tz');
    select.replaceChildren(...zones.map((zone) => {
      const option = el('option', zone);
      option.value = zone;
      return option;
    }));
    select.value = own;
    page.history.tz = own;
  }

  async function loadCampaign() {
    const campaign = await api('/api/v1/campaigns/' + encodeURIComponent(page.id));
    setText('name', campaign.name);
    document.title = campaign.name + ' · impression-counter';
    $('start').replaceChildren(timeEl(campaign.start_time));
  }

  // The stats stream, read with fetch so it can carry the key.
  async function follow() {
    const controller = new AbortController();
    running.stream = controller;
    const url = '/api/v1/campaigns/' + encodeURIComponent(page.id) + '/stats/stream?by=ad';
    let retry = 1000;
    try {
      const response = await fetch(url, {
        headers: Object.assign({ Accept: 'text/event-stream' }, authHeaders()),
        signal: controller.signal,
        cache: 'no-store',
      });
      if (response.status === 401) throw new Unauthorized('unauthorized');
      if (!response.ok) {
        let message = 'HTTP ' + response.status;
        try {
          message = (await response.json()).error || message;
        } catch (_) { /* not JSON */ }
        live(false, message);
        retry = 3000;
      } else {
        live(true);
        await readEvents(response.body, (name, data) => {
          if (name === 'stats') {
            showStats(JSON.parse(data));
          } else if (name === 'error') {
            live(false, JSON.parse(data).error);
          }
        });
      }
    } catch (error) {
      if (controller.signal.aborted) return;
      if (error instanceof Unauthorized) {
        onError(error);
        return;
      }
      live(false, 'reconnecting');
    }
    if (controller.signal.aborted || running.stream !== controller) return;
    live(false, 'reconnecting');
    setTimeout(() => {
      if (running.stream === controller) follow();
    }, retry);
  }

  /** Reads a text/event-stream body, calling `onEvent(name, data)`. */
  async function readEvents(body, onEvent) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, '\n');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = 'message';
        const data = [];
        for (const line of block.split('\n')) {
          if (line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? '' : line.slice(colon + 1);
          if (value.startsWith(' ')) value = value.slice(1);
          if (field === 'event') name = value;
          if (field === 'data') data.push(value);
        }
        if (data.length > 0) onEvent(name, data.join('\n'));
      }
    }
  }

  function live(on, why) {
    const badge = $('live');
    badge.classList.toggle('on', on);
    badge.textContent = on ? 'live' : (why || 'offline');
  }

  function showStats(stats) {
    page.stats = stats;
    live(true);
    for (const key of ['last_hour', 'last_day', 'total']) {
      setText('c-' + key, fmt(stats[key]));
      setText('u-' + key, fmt(stats.unique_users && stats.unique_users[key]));
    }
    renderAds();
  }

  function adRows(stats) {
    const ads = stats.ads || {};
    return Object.keys(ads).map((ad) => ({
      ad: ad,
      last_hour: ads[ad].last_hour,
      last_day: ads[ad].last_day,
      total: ads[ad].total,
      users: ads[ad].unique_users ? ads[ad].unique_users.total : 0,
    }));
  }

  function renderAds() {
    const stats = page.stats;
    if (!stats) return;
    const rows = adRows(stats);
    const { key, descending } = page.sort;
    rows.sort((a, b) => {
      let order;
      if (key === 'ad') {
        order = a.ad < b.ad ? -1 : a.ad > b.ad ? 1 : 0;
      } else {
        order = a[key] - b[key] || (a.ad < b.ad ? 1 : a.ad > b.ad ? -1 : 0);
      }
      return descending ? -order : order;
    });
    for (const th of document.querySelectorAll('#ads thead th')) {
      const button = th.querySelector('button');
      th.setAttribute('aria-sort', button && button.dataset.sort === key
        ? (descending ? 'descending' : 'ascending') : 'none');
    }
    const table = $('ads');
    table.tBodies[0].replaceChildren(...rows.slice(0, SHOWN_ADS).map((row) => adRow(row.ad, row)));
    const foot = [];
    const other = stats.other_ads;
    if (other && (other.total > 0 || stats.ads_limit_exceeded)) {
      foot.push(adRow('Other ads (beyond the limit)', {
        last_hour: other.last_hour,
        last_day: other.last_day,
        total: other.total,
        users: other.unique_users ? other.unique_users.total : 0,
      }, 'other'));
    }
    table.tFoot.replaceChildren(...foot);
    setText('ads-more', rows.length > SHOWN_ADS
      ? 'Showing ' + fmt(SHOWN_ADS) + ' of ' + fmt(rows.length) + ' ads.'
      : (rows.length === 0 ? 'No ad has been counted yet.' : ''));
    const limit = $('ads-limit');
    if (typeof stats.ads_limit === 'number') {
      limit.textContent = stats.ads_limit_exceeded
        ? 'Limit of ' + fmt(stats.ads_limit) + ' ads reached: later ads are counted together as other ads.'
        : 'Up to ' + fmt(stats.ads_limit) + ' ads get their own counters.';
      limit.classList.toggle('warn', Boolean(stats.ads_limit_exceeded));
    }
  }

  function adRow(label, row, className) {
    const tr = document.createElement('tr');
    if (className) tr.className = className;
    const name = el(className ? 'th' : 'td', label, 'ad');
    if (className) name.scope = 'row';
    name.dataset.label = 'Ad';
    tr.append(name);
    for (const [key, title] of [
      ['last_hour', 'Last hour'], ['last_day', 'Last day'], ['total', 'Total'], ['users', 'Unique users'],
    ]) {
      const td = el('td', fmt(row[key]), 'num');
      td.dataset.label = title;
      tr.append(td);
    }
    return tr;
  }

  // ---- Charts -------------------------------------------------------------

  function chartWidth(node) {
    return Math.max(260, Math.floor(node.getBoundingClientRect().width));
  }

  function chartOptions(node, label, extra) {
    return Object.assign({
      width: chartWidth(node),
      height: 220,
      legend: { show: false },
      // Room on the right for the last time label.
      padding: [12, 36, 0, 0],
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
      series: [
        {},
        { label: label, stroke: '#2563eb', width: 2, fill: 'rgba(37, 99, 235, 0.12)', points: { show: false } },
      ],
      axes: [
        { stroke: '#555', grid: { stroke: '#eee' } },
        {
          stroke: '#555',
          grid: { stroke: '#eee' },
          size: 60,
          values: (u, ticks) => ticks.map((t) => (Number.isInteger(t) ? numbers.format(t) : '')),
        },
      ],
    }, extra || {});
  }

  function seriesData(points) {
    return [
      points.map((p) => Date.parse(p.t) / 1000),
      points.map((p) => p.count),
    ];
  }

  async function refreshSeconds() {
    const series = await api('/api/v1/campaigns/' + encodeURIComponent(page.id) +
      '/timeseries?resolution=second&window=5m');
    const points = series.points;
    const data = seriesData(points);
    const counts = data[1];
    setText('sec-now', fmt(counts.length ? counts[counts.length - 1] : 0));
    setText('sec-minute', fmt(counts.slice(-60).reduce((a, b) => a + b, 0)));
    setText('sec-peak', fmt(counts.reduce((a, b) => Math.max(a, b), 0)));
    const node = $('chart-seconds');
    if (!window.uPlot) return;
    if (!page.secondsChart) {
      page.secondsChart = new window.uPlot(chartOptions(node, 'Impressions per second'), data, node);
    } else {
      page.secondsChart.setData(data);
    }
  }

  async function refreshHistory() {
    const h = page.history;
    const base = '/api/v1/campaigns/' + encodeURIComponent(page.id) + '/timeseries?resolution=' + h.resolution;
    let query;
    let note;
    if (h.resolution === 'minute') {
      query = base + '&window=24h';
      note = 'Impressions per minute over the last 24 hours, in your time zone.';
    } else if (h.resolution === 'hour') {
      query = base + '&window=' + h.hourWindow;
      note = 'Impressions per hour over the kept history, in your time zone.';
    } else {
      query = base + '&window=30d&tz=' + encodeURIComponent(h.tz || 'UTC');
      note = 'Impressions per calendar day in ' + (h.tz || 'UTC') + ', last 30 days.';
    }
    let series;
    try {
      series = await api(query);
    } catch (error) {
      // HISTORY shorter than 7 days: fall back to the least it can be.
      if (h.resolution === 'hour' && h.hourWindow !== '25h' && error.status === 400) {
        h.hourWindow = '25h';
        return refreshHistory();
      }
      throw error;
    }
    setText('history-note', note);
    const data = seriesData(series.points);
    const node = $('chart-history');
    if (!window.uPlot) return;
    const zone = h.resolution === 'day' ? (h.tz || 'UTC') : null;
    const key = h.resolution + '|' + zone;
    if (page.historyChart && page.historyChart.key === key) {
      page.historyChart.chart.setData(data);
      return;
    }
    if (page.historyChart) page.historyChart.chart.destroy();
    const extra = {};
    if (zone) extra.tzDate = (ts) => window.uPlot.tzDate(new Date(ts * 1000), zone);
    const label = 'Impressions per ' + h.resolution;
    const options = chartOptions(node, label, extra);
    if (h.resolution !== 'minute') {
      options.series[1].paths = window.uPlot.paths.bars({ size: [0.8, 40] });
      options.series[1].fill = 'rgba(37, 99, 235, 0.5)';
    }
    page.historyChart = { key: key, chart: new window.uPlot(options, data, node) };
  }

  function resizeCharts() {
    if (page.secondsChart) {
      page.secondsChart.setSize({ width: chartWidth($('chart-seconds')), height: 220 });
    }
    if (page.historyChart) {
      page.historyChart.chart.setSize({ width: chartWidth($('chart-history')), height: 220 });
    }
  }

  // ---- Ingest health --------------------------------------------------------

  async function refreshIngest() {
    const now = await api('/api/v1/ingest');
    const at = performance.now();
    const before = page.ingest;
    page.ingest = { at: at, counts: now };
    const rate = (a, b) => {
      if (!before) return null;
      const seconds = (at - before.at) / 1000;
      return seconds > 0 ? Math.max(0, (a - b) / seconds) : null;
    };
    const oneDecimal = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
    const shown = (r) => (r === null ? '–' : oneDecimal.format(r));
    const rejectedNow = Object.values(now.rejected).reduce((a, b) => a + b, 0);
    const rejectedBefore = before ? Object.values(before.counts.rejected).reduce((a, b) => a + b, 0) : 0;
    setText('i-counted', shown(rate(now.counted, before && before.counts.counted)));
    setText('i-duplicates', shown(rate(now.duplicates, before && before.counts.duplicates)));
    setText('i-rejected', shown(rate(rejectedNow, rejectedBefore)));
    const fill = now.queue.capacity > 0 ? now.queue.depth / now.queue.capacity : 0;
    setText('i-queue', fmt(now.queue.depth) + ' of ' + fmt(now.queue.capacity));
    $('i-fill').value = fill;
    $('i-fill').title = Math.round(fill * 100) + '% full';
    const rows = Object.keys(now.rejected).map((reason) => {
      const tr = document.createElement('tr');
      const name = el('th', reason.replace(/_/g, ' '));
      name.scope = 'row';
      const per = before ? rate(now.rejected[reason], before.counts.rejected[reason] || 0) : null;
      tr.append(name, el('td', shown(per), 'num'), el('td', fmt(now.rejected[reason]), 'num'));
      if (now.rejected[reason] > 0) tr.className = 'warn';
      return tr;
    });
    $('rejects').tBodies[0].replaceChildren(...rows);
  }

  // ---- The pixel snippet ----------------------------------------------------

  async function copySnippet() {
    const text = $('snippet').textContent;
    try {
      await navigator.clipboard.writeText(text);
      setText('copied', 'Copied.');
    } catch (_) {
      // No clipboard (plain HTTP on another host): select it for Ctrl-C.
      const range = document.createRange();
      range.selectNodeContents($('snippet'));
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      setText('copied', 'Selected: press Ctrl-C (⌘-C) to copy.');
    }
  }

  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', boot);
  } else {
    boot();
  }
}());
