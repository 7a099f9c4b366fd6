// otstream fleet map: every visible device at its last position, moved by
// the live feed, the server's fences and the devices' own regions, the
// operator's rules as they fire; a click shows the device's track and
// trips of the day.
// Plain JavaScript over Leaflet; everything it loads comes from this server.
// Everything a device sends (names, ids, descriptions) is data: it reaches
// the page only as text (textContent, or a text element handed to Leaflet,
// which would write a string as HTML). Nothing here assigns innerHTML.
(function () {
  'use strict';

  var settings = JSON.parse(document.getElementById('settings').textContent);
  // A share link (/share#TOKEN): the token comes from the fragment, which
  // browsers never send to a server, and goes with every read as a bearer
  // token. Its claims (the middle part, base64url JSON) say what it shares.
  var share = location.pathname === '/share' ? location.hash.slice(1) : '';
  var shared = share ? claimsOf(share) : null;
  var map = L.map('map', { worldCopyJump: true }).setView([20, 0], 2);
  if (settings.tileUrl) {
    L.tileLayer(settings.tileUrl, { maxZoom: 19, attribution: settings.tileAttribution }).addTo(map);
  }
  var fenceLayer = L.layerGroup().addTo(map);
  var trackLayer = L.layerGroup().addTo(map);
  var list = document.getElementById('devices');
  var alertsEl = document.getElementById('alerts');
  var alertList = document.getElementById('alert-list');
  // The newest first, the last fifty kept.
  var MAX_ALERTS = 50;
  var statusEl = document.getElementById('status');
  var filterEl = document.getElementById('filter');
  var devices = new Map();
  var selected = null;
  var palette = ['#2563eb', '#dc2626', '#059669', '#d97706', '#7c3aed', '#db2777', '#0891b2', '#4d7c0f'];

  function keyOf(d) { return d.user + '/' + d.device; }

  function colorOf(key) {
    var h = 0;
    for (var i = 0; i < key.length; i++) { h = (h * 31 + key.charCodeAt(i)) | 0; }
    return palette[Math.abs(h) % palette.length];
  }

  function ago(seconds) {
    if (seconds < 60) { return Math.max(0, Math.round(seconds)) + ' s ago'; }
    if (seconds < 3600) { return Math.round(seconds / 60) + ' min ago'; }
    if (seconds < 86400) { return Math.round(seconds / 3600) + ' h ago'; }
    return Math.round(seconds / 86400) + ' d ago';
  }

  function label(d) { return d.name || d.tid || keyOf(d); }

  // A text-only element for Leaflet's tooltips (a string is HTML to them).
  function textEl(text) {
    var span = document.createElement('span');
    span.textContent = text;
    return span;
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text) { e.textContent = text; }
    return e;
  }

  function query(params) {
    return Object.keys(params).map(function (k) {
      return encodeURIComponent(k) + '=' + encodeURIComponent(params[k]);
    }).join('&');
  }

  function claimsOf(token) {
    try {
      var part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      return JSON.parse(atob(part));
    } catch (e) {
      return {};
    }
  }

  function getJSON(url) {
    var init = { credentials: 'same-origin' };
    if (share) { init.headers = { Authorization: 'Bearer ' + share }; }
    return fetch(url, init).then(function (r) {
      if (r.status === 401 && share) { throw new Error('this link expired or was revoked'); }
      if (!r.ok) { throw new Error(url + ': HTTP ' + r.status); }
      return r.json();
    });
  }

  function renderItem(entry) {
    var d = entry.data;
    var li = entry.li;
    var fixAge = Date.now() / 1000 - d.tst;
    li.dataset.key = keyOf(d);
    li.dataset.lat = d.lat;
    li.dataset.lon = d.lon;
    li.dataset.tst = d.tst;
    li.className = (selected === keyOf(d) ? 'selected' : '') + (fixAge > 3600 ? ' stale' : '');
    li.querySelector('.name').textContent = label(d);
    li.querySelector('.batt').textContent = d.batt != null ? d.batt + ' %' : '';
    li.querySelector('.age').textContent = ago(fixAge);
    li.querySelector('.where').textContent = d.inregions && d.inregions.length ? ' · in ' + d.inregions.join(', ') : '';
    entry.marker.setLatLng([d.lat, d.lon]);
    entry.marker.setTooltipContent(textEl(label(d) + ' · ' + ago(fixAge)));
  }

  function upsert(d) {
    var key = keyOf(d);
    var entry = devices.get(key);
    if (entry && entry.data.tst > d.tst) { return entry; }
    if (!entry) {
      var li = el('li');
      var meta = el('span', 'meta');
      meta.append(el('span', 'key', key), ' · ', el('span', 'age'), el('span', 'where'));
      li.append(el('span', 'dot'), el('span', 'name'), el('span', 'batt'), meta);
      li.querySelector('.dot').style.background = colorOf(key);
      li.addEventListener('click', function () { select(key); });
      var marker = L.circleMarker([d.lat, d.lon], {
        radius: 8, weight: 2, color: '#fff', fillColor: colorOf(key), fillOpacity: 0.95
      }).bindTooltip(textEl(''), { direction: 'top' }).addTo(map);
      marker.on('click', function () { select(key); });
      entry = { data: {}, li: li, marker: marker };
      devices.set(key, entry);
      var after = Array.from(list.children).find(function (x) { return x.dataset.key > key; });
      list.insertBefore(li, after || null);
    }
    entry.data = Object.assign({}, entry.data, d);
    renderItem(entry);
    applyFilter();
    return entry;
  }

  function applyFilter() {
    var f = filterEl.value.trim().toLowerCase();
    devices.forEach(function (e, key) {
      e.li.hidden = f !== '' && (key + ' ' + label(e.data)).toLowerCase().indexOf(f) < 0;
    });
  }

  function fit() {
    var points = Array.from(devices.values()).map(function (e) { return [e.data.lat, e.data.lon]; });
    if (points.length === 1) { map.setView(points[0], 14); }
    if (points.length > 1) { map.fitBounds(points, { padding: [40, 40], maxZoom: 15 }); }
  }

  function minutes(s) { return Math.round(s / 60) + ' min'; }
  function clock(t) { return new Date(t * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }); }

  function select(key) {
    selected = key;
    devices.forEach(function (e) { renderItem(e); });
    var entry = devices.get(key);
    if (!entry) { return; }
    entry.li.scrollIntoView({ block: 'nearest' });
    var d = entry.data;
    var midnight = new Date();
    midnight.setHours(0, 0, 0, 0);
    var from = Math.floor(midnight.getTime() / 1000);
    if (shared && shared.since) { from = Math.max(from, shared.since); }
    var scope = { user: d.user, device: d.device, from: from };
    document.getElementById('detail').hidden = false;
    document.getElementById('detail-title').textContent = label(d) + ' — today';
    // The report's day is a UTC day: the one of the viewer's date.
    var now = new Date();
    var day = now.getFullYear() + '-' + String(now.getMonth() + 1).padStart(2, '0') + '-' +
      String(now.getDate()).padStart(2, '0');
    var link = document.getElementById('report-link');
    link.href = '/report?' + query({ user: d.user, device: d.device, day: day });
    // A share link's token is in the page's fragment, not for other pages.
    link.parentElement.hidden = !!share;
    document.getElementById('detail-summary').textContent = 'loading…';
    trackLayer.clearLayers();
    var trips = document.getElementById('trips');
    trips.textContent = '';
    if (shared && shared.last_only) {
      document.getElementById('detail-summary').textContent = 'last position shared';
      return;
    }
    getJSON('/api/v1/positions?' + query(Object.assign({ format: 'linestring' }, scope))).then(function (geo) {
      if (selected !== key) { return; }
      var line = L.geoJSON(geo, { style: { color: colorOf(key), weight: 4, opacity: 0.8 } });
      trackLayer.addLayer(line);
      entry.track = line;
      var bounds = line.getBounds();
      if (bounds.isValid()) { map.fitBounds(bounds.extend(entry.marker.getLatLng()), { padding: [40, 40], maxZoom: 16 }); }
    }).catch(showError);
    getJSON('/api/v1/trips?' + query(scope)).then(function (rows) {
      if (selected !== key) { return; }
      var km = 0;
      rows.forEach(function (t) {
        km += t.distance / 1000;
        var li = document.createElement('li');
        li.textContent = clock(t.start) + '–' + clock(t.end) + ' · ' + (t.distance / 1000).toFixed(1) + ' km · ' + minutes(t.duration);
        trips.appendChild(li);
      });
      document.getElementById('detail-summary').textContent =
        rows.length + (rows.length === 1 ? ' trip' : ' trips') + ', ' + km.toFixed(1) + ' km';
    }).catch(showError);
  }

  function extendTrack(p) {
    var entry = devices.get(keyOf(p));
    if (selected !== keyOf(p) || !entry || !entry.track) { return; }
    entry.track.eachLayer(function (layer) {
      if (layer.addLatLng) { layer.addLatLng([p.lat, p.lon]); }
    });
  }

  // Regions as circles of their radius (a point without one as a dot):
  // the server's fences, and the regions each device defined itself.
  function drawRegions(geo, style, name) {
    var layer = L.geoJSON(geo, {
      style: style,
      pointToLayer: function (feature, latlng) {
        var r = feature.properties && Number(feature.properties.radius);
        return r > 0 ? L.circle(latlng, { radius: r }) : L.circleMarker(latlng, { radius: 4 });
      },
      onEachFeature: function (feature, layer) {
        var text = name(feature.properties || {}, feature);
        if (text) { layer.bindTooltip(textEl(text)); }
      }
    });
    layer.addTo(fenceLayer);
    return layer.getLayers().length;
  }

  function drawFences(geo) {
    drawRegions(geo, { color: '#6b7280', weight: 2, dashArray: '4 4', fillOpacity: 0.08 }, function (p, f) {
      return p.name || p.id || f.id ? String(p.name || p.id || f.id) : '';
    });
  }

  function drawWaypoints(geo) {
    var drawn = drawRegions(geo, function (f) {
      var c = colorOf(f.properties.user + '/' + f.properties.device);
      return { color: c, weight: 1.5, dashArray: '2 6', fillColor: c, fillOpacity: 0.06 };
    }, function (p) {
      return (p.desc || p.rid || 'region') + ' · ' + p.user + '/' + p.device;
    });
    document.body.dataset.waypoints = String(drawn);
  }

  function setStatus(text, cls) {
    statusEl.textContent = text;
    statusEl.className = 'status ' + cls;
  }

  function showError(e) { setStatus(String(e.message || e), 'down'); }

  // A rule that fired: newest first in the alerts, and on its device's
  // marker. The rule's name is the operator's text, the rest the device's:
  // all of it text.
  function showAlert(e) {
    var entry = devices.get(keyOf(e));
    var who = entry ? label(entry.data) : keyOf(e);
    var li = el('li');
    li.dataset.id = e.id;
    li.append(el('span', 'when', clock(e.tst)), ' ', el('span', 'rule', e.rule), ' · ',
      el('span', 'kind', e.kind), ' · ', el('span', 'who', who),
      el('span', 'where', e.fence ? ' · ' + e.fence : ''));
    // Proximity: the other device, and whether they came near or parted.
    if (e.peer) { li.append(el('span', 'peer', ' · ' + (e.near ? 'near ' : 'apart from ') + e.peer)); }
    alertList.prepend(li);
    while (alertList.children.length > MAX_ALERTS) { alertList.lastChild.remove(); }
    alertsEl.hidden = false;
    if (entry) {
      entry.marker.setTooltipContent(textEl(who + ' · ' + e.rule));
      entry.marker.openTooltip();
    }
  }

  function connect() {
    var es = new EventSource('/api/v1/live' + (share ? '?access_token=' + encodeURIComponent(share) : ''));
    es.onopen = function () {
      setStatus(shared ? 'shared until ' + clock(shared.exp) : 'live', 'live');
    };
    es.onerror = function () { setStatus('reconnecting…', 'down'); };
    es.addEventListener('position', function (ev) {
      var p = JSON.parse(ev.data);
      p.seen = p.received_at;
      upsert(p);
      extendTrack(p);
    });
    es.addEventListener('event', function (ev) {
      var e = JSON.parse(ev.data);
      if (e.rule) { showAlert(e); }
    });
    es.addEventListener('transition', function (ev) {
      var t = JSON.parse(ev.data);
      var entry = devices.get(keyOf(t));
      if (entry) {
        entry.marker.setTooltipContent(textEl(label(entry.data) + ' · ' + t.event + ' ' + (t.desc || t.rid || '')));
        entry.marker.openTooltip();
      }
    });
  }

  // The heatmap: the positions of the last week counted per H3 cell by
  // the server, at a resolution for the zoom; off until asked for. Counts
  // and cell ids are numbers and hex; nothing of a device's text.
  var heatLayer = L.layerGroup();
  var heatToggle = document.getElementById('heat');
  var heatRes = 0;
  function resForZoom(z) { return z < 9 ? 5 : (z < 12 ? 7 : 9); }
  function drawHeat(geo) {
    heatLayer.clearLayers();
    var max = 1;
    geo.features.forEach(function (f) { max = Math.max(max, f.properties.count); });
    L.geoJSON(geo, {
      style: function (f) {
        var t = Math.log(1 + f.properties.count) / Math.log(1 + max);
        return { className: 'heat', stroke: false, fillColor: '#dc2626', fillOpacity: 0.1 + 0.45 * t };
      }
    }).addTo(heatLayer);
    document.body.dataset.heat = String(geo.features.length);
  }
  var heatAsked = 0;
  function loadHeat() {
    if (!heatToggle.checked) { return; }
    heatRes = resForZoom(map.getZoom());
    var to = Math.floor(Date.now() / 1000);
    // Only the last answer asked for is drawn: an earlier zoom's may come later.
    var asked = ++heatAsked;
    getJSON('/api/v1/heatmap?' + query({ res: heatRes, from: to - 7 * 86400, to: to, format: 'geojson' }))
      .then(function (geo) { if (asked === heatAsked) { drawHeat(geo); } }).catch(showError);
  }
  heatToggle.addEventListener('change', function () {
    if (heatToggle.checked) { heatLayer.addTo(map); loadHeat(); } else { heatLayer.remove(); }
  });
  map.on('zoomend', function () {
    if (heatToggle.checked && resForZoom(map.getZoom()) !== heatRes) { loadHeat(); }
  });

  filterEl.addEventListener('input', applyFilter);
  setInterval(function () { devices.forEach(renderItem); }, 10000);

  // The feed first, so that nothing stored while the list loads is missed
  // (a fix older than the one shown is ignored).
  connect();
  getJSON('/api/v1/devices').then(function (rows) {
    rows.forEach(upsert);
    fit();
    document.body.dataset.loaded = String(rows.length);
  }).catch(showError);
  // A share link reads no history: no heatmap.
  document.getElementById('heat-toggle').hidden = !!share;
  if (!share) {
    getJSON('/api/v1/fences').then(drawFences).catch(showError);
    getJSON('/api/v1/waypoints?format=geojson').then(drawWaypoints).catch(showError);
  }
})();
