// otstream report: one device over a day or a week: its track and stops
// on a map, its speed over time beside it, its trips and its stops with
// the places they are visits of.
// Plain JavaScript over Leaflet; everything it loads comes from this
// server. Everything a device sends (names, places, addresses) reaches the
// page as text only (textContent, or a text element handed to Leaflet).
// Nothing here assigns innerHTML.
(function () {
  'use strict';

  var settings = JSON.parse(document.getElementById('settings').textContent);
  var params = new URLSearchParams(location.search);
  var DAY = 86400;
  var deviceEl = document.getElementById('device');
  var dayEl = document.getElementById('day');
  var spanEl = document.getElementById('span');
  var statusEl = document.getElementById('status');
  var canvas = document.getElementById('speed');

  function isoDay(t) { return new Date(t * 1000).toISOString().slice(0, 10); }
  // A real day (2026-02-31 is none), else today.
  function dayOr(s, fallback) {
    var t = Date.parse((s || '') + 'T00:00:00Z');
    return /^\d{4}-\d{2}-\d{2}$/.test(s || '') && !isNaN(t) && isoDay(t / 1000) === s ? s : fallback;
  }
  var state = {
    user: params.get('user') || '',
    device: params.get('device') || '',
    day: dayOr(params.get('day'), isoDay(Date.now() / 1000)),
    span: params.get('span') === 'week' ? 'week' : 'day'
  };
  // What the page shows, to redraw the chart at a new size; and which
  // load is the latest (an earlier answer arriving later is not drawn).
  var shown = null;
  var loads = 0;

  var map = L.map('map').setView([20, 0], 2);
  if (settings.tileUrl) {
    L.tileLayer(settings.tileUrl, { maxZoom: 19, attribution: settings.tileAttribution }).addTo(map);
  }
  var drawn = L.layerGroup().addTo(map);

  function textEl(text) {
    var span = document.createElement('span');
    span.textContent = text;
    return span;
  }

  function cell(text, cls) {
    var td = document.createElement('td');
    td.textContent = text;
    if (cls) { td.className = cls; }
    return td;
  }

  function query(p) {
    return Object.keys(p).map(function (k) {
      return encodeURIComponent(k) + '=' + encodeURIComponent(p[k]);
    }).join('&');
  }

  function getJSON(url) {
    return fetch(url, { credentials: 'same-origin' }).then(function (r) {
      if (!r.ok) { throw new Error(url.split('?')[0] + ': HTTP ' + r.status); }
      return r.json();
    });
  }

  function setStatus(text, cls) {
    statusEl.textContent = text;
    statusEl.className = 'status ' + cls;
  }

  // Times in UTC, as the API's days are: a week's with their date.
  function when(t) {
    var iso = new Date(t * 1000).toISOString();
    return state.span === 'week' ? iso.slice(5, 10) + ' ' + iso.slice(11, 16) : iso.slice(11, 16);
  }
  function duration(s) {
    var m = Math.round(s / 60);
    return m < 60 ? m + ' min' : Math.floor(m / 60) + ' h ' + (m % 60) + ' min';
  }

  function span() {
    var from = Date.parse(state.day + 'T00:00:00Z') / 1000;
    return { from: from, to: from + (state.span === 'week' ? 7 : 1) * DAY - 1 };
  }

  // The speed a fix reports, else the speed from the fix before it.
  function speeds(positions) {
    var out = [];
    var prev = null;
    positions.forEach(function (p) {
      if (p.filtered) { return; }
      var v = typeof p.vel === 'number' && p.vel >= 0 ? p.vel : null;
      if (v === null && prev && p.tst > prev.tst) {
        v = metres(prev, p) / (p.tst - prev.tst) * 3.6;
      }
      out.push({ t: p.tst, v: v === null ? 0 : v });
      prev = p;
    });
    return out;
  }

  function metres(a, b) {
    var r = Math.PI / 180;
    var dlat = (b.lat - a.lat) * r;
    var dlon = (b.lon - a.lon) * r;
    var h = Math.sin(dlat / 2) * Math.sin(dlat / 2) +
      Math.cos(a.lat * r) * Math.cos(b.lat * r) * Math.sin(dlon / 2) * Math.sin(dlon / 2);
    return 2 * 6371008.8 * Math.asin(Math.min(1, Math.sqrt(h)));
  }

  // Speed on a canvas over the part of the window with data (the whole
  // window when there is none): trips shaded, a line through the fixes,
  // times along the bottom.
  function drawSpeed(points, trips, whole) {
    var w = { from: whole.from, to: whole.to };
    if (points.length) {
      var first = points[0].t;
      var last = points[points.length - 1].t;
      trips.forEach(function (t) { first = Math.min(first, t.start); last = Math.max(last, t.end); });
      var margin = Math.max(60, Math.round((last - first) * 0.05));
      w = { from: Math.max(whole.from, first - margin), to: Math.min(whole.to, last + margin) };
    }
    var ratio = window.devicePixelRatio || 1;
    var cssW = canvas.clientWidth || 400;
    var cssH = canvas.clientHeight || 300;
    canvas.width = Math.round(cssW * ratio);
    canvas.height = Math.round(cssH * ratio);
    var g = canvas.getContext('2d');
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, cssW, cssH);
    var pad = { l: 36, r: 10, t: 8, b: 22 };
    var max = 10;
    points.forEach(function (p) { max = Math.max(max, p.v); });
    max = Math.ceil(max / 10) * 10;
    var x = function (t) { return pad.l + (t - w.from) / Math.max(1, w.to - w.from) * (cssW - pad.l - pad.r); };
    var y = function (v) { return cssH - pad.b - v / max * (cssH - pad.t - pad.b); };
    g.fillStyle = '#dbe7fb';
    trips.forEach(function (t) { g.fillRect(x(t.start), pad.t, Math.max(1, x(t.end) - x(t.start)), cssH - pad.t - pad.b); });
    g.strokeStyle = '#c8ced6';
    g.fillStyle = '#5b6573';
    g.font = '11px system-ui, sans-serif';
    g.lineWidth = 1;
    for (var v = 0; v <= max; v += max / 5) {
      g.beginPath(); g.moveTo(pad.l, y(v)); g.lineTo(cssW - pad.r, y(v)); g.stroke();
      g.fillText(String(Math.round(v)), 4, y(v) + 4);
    }
    // At most eight ticks, on round times.
    var steps = [300, 900, 1800, 3600, 3 * 3600, 6 * 3600, DAY];
    var step = steps.find(function (s) { return (w.to - w.from) / s <= 8; }) || DAY;
    for (var t = Math.ceil(w.from / step) * step; t <= w.to; t += step) {
      var iso = new Date(t * 1000).toISOString();
      var label = step >= DAY ? iso.slice(5, 10) : iso.slice(11, 16);
      g.fillText(label, x(t) - 14, cssH - 6);
    }
    g.strokeStyle = '#2563eb';
    g.lineWidth = 1.5;
    g.beginPath();
    points.forEach(function (p, i) {
      if (i === 0) { g.moveTo(x(p.t), y(p.v)); } else { g.lineTo(x(p.t), y(p.v)); }
    });
    g.stroke();
    canvas.dataset.points = String(points.length);
    canvas.dataset.max = String(Math.round(points.reduce(function (m, p) { return Math.max(m, p.v); }, 0)));
  }

  function placeName(stop, place) {
    return (place && place.name) || stop.place || stop.address || stop.locality || '—';
  }

  function render(positions, trips, stops, places) {
    var w = span();
    drawn.clearLayers();
    var line = positions.filter(function (p) { return !p.filtered; }).map(function (p) { return [p.lat, p.lon]; });
    if (line.length) {
      var track = L.polyline(line, { color: '#2563eb', weight: 3 }).addTo(drawn);
      map.fitBounds(track.getBounds(), { padding: [20, 20], maxZoom: 16 });
    }
    var byId = new Map();
    places.forEach(function (p) { byId.set(p.id, p); });

    var tbody = document.querySelector('#trips tbody');
    tbody.replaceChildren();
    var km = 0;
    var driving = 0;
    trips.forEach(function (t) {
      km += t.distance / 1000;
      driving += t.duration;
      var tr = document.createElement('tr');
      tr.append(cell(when(t.start)), cell(when(t.end)), cell(duration(t.duration)),
        cell((t.distance / 1000).toFixed(1), 'num'), cell(t.avg_vel.toFixed(0), 'num'), cell(t.max_vel.toFixed(0), 'num'),
        cell(t.start_address || t.start_place || '—', 'place'), cell(t.end_address || t.end_place || '—', 'place'));
      tbody.appendChild(tr);
    });

    var sbody = document.querySelector('#stops tbody');
    sbody.replaceChildren();
    stops.forEach(function (s) {
      var place = s.place_id ? byId.get(s.place_id) : null;
      var name = placeName(s, place);
      var tr = document.createElement('tr');
      tr.dataset.place = s.place_id ? String(s.place_id) : '';
      tr.append(cell(when(s.start)), cell(when(s.end)), cell(duration(s.duration)), cell(name, 'place'),
        cell(place ? String(place.visits) : '—', 'num'));
      sbody.appendChild(tr);
      L.circleMarker([s.lat, s.lon], { radius: 7, color: '#d97706', fillOpacity: 0.6 })
        .bindTooltip(textEl(name + ' · ' + when(s.start) + '–' + when(s.end)))
        .addTo(drawn);
    });

    document.getElementById('summary').textContent = trips.length + (trips.length === 1 ? ' trip' : ' trips') +
      ', ' + km.toFixed(1) + ' km, driving ' + duration(driving) + '; ' +
      stops.length + (stops.length === 1 ? ' stop' : ' stops');
    shown = { points: speeds(positions), trips: trips, w: w };
    drawSpeed(shown.points, trips, w);
  }

  function load() {
    if (!state.user || !state.device) {
      setStatus('choose a device', 'down');
      return;
    }
    var w = span();
    var one = { user: state.user, device: state.device };
    var windowed = { user: state.user, device: state.device, from: w.from, to: w.to };
    setStatus('loading…', '');
    var asked = ++loads;
    Promise.all([
      getJSON('/api/v1/positions?' + query(windowed)),
      getJSON('/api/v1/trips?' + query(windowed)),
      getJSON('/api/v1/stops?' + query(windowed)),
      // The places name the stops; without them (a token that may not
      // read them) the stops keep their own names.
      getJSON('/api/v1/places?' + query(one)).catch(function () { return []; })
    ]).then(function (r) {
      if (asked !== loads) { return; }
      render(r[0], r[1], r[2], r[3]);
      setStatus(r[0].length + ' fixes', 'ok');
      document.body.dataset.loaded = state.user + '/' + state.device + '/' + state.day + '/' + state.span;
    }).catch(function (e) { setStatus(String(e.message || e), 'down'); });
  }

  function go() {
    var parts = deviceEl.value.split('/');
    state.user = parts[0] || '';
    state.device = parts.slice(1).join('/');
    state.day = dayOr(dayEl.value, state.day);
    state.span = spanEl.value;
    history.replaceState(null, '', '/report?' + query(state));
    load();
  }

  dayEl.value = state.day;
  spanEl.value = state.span;
  getJSON('/api/v1/devices').then(function (rows) {
    rows.forEach(function (d) {
      var o = document.createElement('option');
      o.value = d.user + '/' + d.device;
      o.textContent = (d.name ? d.name + ' (' + d.user + '/' + d.device + ')' : d.user + '/' + d.device);
      deviceEl.appendChild(o);
    });
    if (!state.user && rows.length) {
      state.user = rows[0].user;
      state.device = rows[0].device;
    }
    deviceEl.value = state.user + '/' + state.device;
    load();
  }).catch(function (e) { setStatus(String(e.message || e), 'down'); });
  [deviceEl, dayEl, spanEl].forEach(function (e) { e.addEventListener('change', go); });
  // A new size redraws the chart from what is shown; nothing is read again.
  var resizing = 0;
  window.addEventListener('resize', function () {
    cancelAnimationFrame(resizing);
    resizing = requestAnimationFrame(function () {
      if (shown) { drawSpeed(shown.points, shown.trips, shown.w); }
    });
  });
})();
