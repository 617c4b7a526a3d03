/* jeo-tiler Leaflet viewer.
 *
 * Data flow: /collections → collection select; /collections/{cid}/items → scene select (newest first);
 * the WMTS capabilities → preset list per collection (layers are "<collection>.<preset>");
 * item TileJSON (WebMercatorQuad, png) → tile URL template, zoom range and bounds.
 * The composite source builds /collections/{cid}/tiles/WebMercatorQuad/{z}/{x}/{y}.png itself.
 * After every layer change the tile at the centre of the data is fetched once so that a 4xx/5xx
 * answer's JSON `detail` can be shown (an <img> cannot read it).
 * Every request carries the page's access token (token.js), TileJSON tile URLs come with it.
 * No external resources: there is no basemap, only a graticule.
 */
(function () {
  "use strict";

  const TMS = "WebMercatorQuad";
  const { withToken } = window.jeoToken;
  const $ = (id) => document.getElementById(id);
  const ui = {
    collection: $("collection"), collectionInfo: $("collection-info"), item: $("item"),
    itemControls: $("item-controls"), compositeControls: $("composite-controls"),
    dateStart: $("date-start"), dateEnd: $("date-end"), method: $("method"), cloudMask: $("cloud-mask"),
    preset: $("preset"), presetInfo: $("preset-info"),
    bands: [$("band-r"), $("band-g"), $("band-b")], expression: $("expression"), index: $("index"),
    rescale: $("rescale"), colormap: $("colormap"), colorFormula: $("color-formula"), opacity: $("opacity"),
    tileUrl: $("tile-url"), copy: $("copy-url"), error: $("error"), status: $("status"),
  };

  const state = {
    collections: [],        // STAC collections
    items: [],              // STAC items of the chosen collection, newest first
    presets: {},            // collection id -> [{id, title, abstract}]
    layer: null,            // current L.TileLayer
    footprint: null,        // current footprint outline
    generation: 0,          // increments on every layer change; stale async answers are dropped
    tiles: { loading: 0, loaded: 0, failed: 0 },
    userEdited: { rescale: false, colormap: false },
    fitKey: null,           // what the map was last fitted to
  };

  // Suggested rendering when the user switches mode and has not typed their own.
  const MODE_DEFAULTS = {
    preset: { rescale: "", colormap: "" },
    bands: { rescale: "0,0.3", colormap: "" },
    expression: { rescale: "-1,1", colormap: "rdylgn" },
    index: { rescale: "-1,1", colormap: "rdylgn" },
  };

  // ------------------------------------------------------------------ helpers

  async function getJSON(url) {
    const response = await fetch(withToken(url), { headers: { Accept: "application/json" } });
    if (!response.ok) throw new Error(await errorText(response));
    return response.json();
  }

  async function errorText(response) {
    const text = await response.text();
    let detail = text;
    try {
      const body = JSON.parse(text);
      detail = typeof body.detail === "string" ? body.detail
        : Array.isArray(body.detail) ? body.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ")
        : JSON.stringify(body.detail ?? body);
    } catch (_) {
      const xml = /<ExceptionText>([\s\S]*?)<\/ExceptionText>/.exec(text);
      if (xml) detail = xml[1];
    }
    return `${response.status} ${response.statusText || ""}: ${(detail || "").trim() || "(no detail)"}`.replace(/ +:/, ":");
  }

  function showError(message) {
    ui.error.textContent = message || "";
    ui.error.hidden = !message;
  }

  function radio(name) {
    return document.querySelector(`input[name="${name}"]:checked`).value;
  }

  function setRadio(name, value) {
    const input = document.querySelector(`input[name="${name}"][value="${value}"]`);
    if (input) input.checked = true;
  }

  function option(value, label, title) {
    const element = document.createElement("option");
    element.value = value;
    element.textContent = label;
    if (title) element.title = title;
    return element;
  }

  function fillSelect(select, options, keep) {
    const previous = keep ? select.value : null;
    select.replaceChildren(...options);
    if (previous && [...select.options].some((o) => o.value === previous)) select.value = previous;
    select.disabled = options.length === 0;
  }

  function bboxToBounds(bbox) {
    return L.latLngBounds([bbox[1], bbox[0]], [bbox[3], bbox[2]]);
  }

  function lonLatToTile(lon, lat, z) {
    const n = 2 ** z;
    const clampedLat = Math.max(Math.min(lat, 85.0511), -85.0511) * Math.PI / 180;
    const x = Math.floor((lon + 180) / 360 * n);
    const y = Math.floor((1 - Math.log(Math.tan(clampedLat) + 1 / Math.cos(clampedLat)) / Math.PI) / 2 * n);
    return { x: Math.min(Math.max(x, 0), n - 1), y: Math.min(Math.max(y, 0), n - 1) };
  }

  function fillTemplate(template, z, x, y) {
    return template.replace("{z}", z).replace("{x}", x).replace("{y}", y);
  }

  function formatDate(iso) {
    return iso ? iso.replace("T", " ").replace(/(:\d\d)(\.\d+)?Z?$/, "$1").slice(0, 16) + " UTC" : "no date";
  }

  function currentCollection() {
    return state.collections.find((c) => c.id === ui.collection.value);
  }

  function currentItem() {
    return state.items.find((i) => i.id === ui.item.value);
  }

  // ------------------------------------------------------------------ map

  const map = L.map("map", { zoomControl: true, worldCopyJump: true, minZoom: 1, maxZoom: 20 });
  map.setView([20, 0], 2);
  map.attributionControl.setPrefix('<a href="https://leafletjs.com">Leaflet</a>');

  const Graticule = L.LayerGroup.extend({
    onAdd(m) {
      L.LayerGroup.prototype.onAdd.call(this, m);
      m.on("moveend", this.redraw, this);
      this.redraw();
    },
    onRemove(m) {
      m.off("moveend", this.redraw, this);
      L.LayerGroup.prototype.onRemove.call(this, m);
    },
    redraw() {
      this.clearLayers();
      const b = this._map.getBounds();
      const span = Math.max(b.getEast() - b.getWest(), b.getNorth() - b.getSouth());
      const steps = [30, 10, 5, 2, 1, 0.5, 0.25, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001];
      const step = steps.find((s) => span / s >= 4) || steps[steps.length - 1];
      const style = { color: "#8a9bb0", weight: 1, opacity: 0.45, interactive: false };
      const west = Math.floor(b.getWest() / step) * step, east = Math.ceil(b.getEast() / step) * step;
      const south = Math.max(Math.floor(b.getSouth() / step) * step, -85);
      const north = Math.min(Math.ceil(b.getNorth() / step) * step, 85);
      const decimals = Math.max(0, -Math.floor(Math.log10(step)));
      for (let lon = west; lon <= east + step / 2; lon += step) {
        this.addLayer(L.polyline([[south, lon], [north, lon]], style));
        this.addLayer(L.marker([b.getNorth(), lon], { icon: label(lon, "E", "W", decimals, "lon"), interactive: false }));
      }
      for (let lat = south; lat <= north + step / 2; lat += step) {
        this.addLayer(L.polyline([[lat, west], [lat, east]], style));
        this.addLayer(L.marker([lat, b.getWest()], { icon: label(lat, "N", "S", decimals, "lat"), interactive: false }));
      }
    },
  });

  function label(value, positive, negative, decimals, kind) {
    const text = `${Math.abs(value).toFixed(decimals)}°${value > 0 ? positive : value < 0 ? negative : ""}`;
    // Longitude labels hang below the top edge, latitude labels sit above their line at the left edge.
    const anchor = kind === "lon" ? [-3, -3] : [-4, 13];
    return L.divIcon({ className: `graticule-label ${kind}`, html: text, iconSize: [64, 12], iconAnchor: anchor });
  }

  new Graticule().addTo(map);

  const Coordinates = L.Control.extend({
    options: { position: "bottomleft" },
    onAdd(m) {
      const element = L.DomUtil.create("div", "coordinates");
      m.on("mousemove", (e) => {
        element.textContent = `${e.latlng.lat.toFixed(5)}, ${e.latlng.lng.toFixed(5)} · z${m.getZoom()}`;
      });
      m.on("zoomend", () => { element.textContent = `z${m.getZoom()}`; });
      element.textContent = `z${m.getZoom()}`;
      return element;
    },
  });
  new Coordinates().addTo(map);

  // ------------------------------------------------------------------ query parameters

  function rescaleValues() {
    return ui.rescale.value.split(/[\s;]+/).map((s) => s.trim()).filter(Boolean);
  }

  /** The recipe and rendering query parameters of the current form, as [name, value] pairs. */
  function renderParams() {
    const params = [];
    const mode = radio("mode");
    if (mode === "preset") {
      if (ui.preset.value) params.push(["preset", ui.preset.value]);
    } else if (mode === "bands") {
      params.push(["assets", ui.bands.map((s) => s.value).join(",")]);
    } else if (mode === "expression") {
      params.push(["expression", ui.expression.value.trim()]);
    } else if (mode === "index") {
      params.push(["index", ui.index.value]);
    }
    for (const value of rescaleValues()) params.push(["rescale", value]);
    // a colormap colours one band: three bands (an RGB combination) are sent without it
    if (ui.colormap.value && mode !== "bands") params.push(["colormap_name", ui.colormap.value]);
    if (ui.colorFormula.value.trim()) params.push(["color_formula", ui.colorFormula.value.trim()]);
    return params;
  }

  function query(params) {
    const search = new URLSearchParams();
    for (const [k, v] of params) search.append(k, v);
    return search.toString();
  }

  // ------------------------------------------------------------------ URL hash (shareable state)

  function readHash() {
    return new URLSearchParams(location.hash.replace(/^#/, ""));
  }

  function writeHash() {
    const h = new URLSearchParams();
    h.set("collection", ui.collection.value);
    const source = radio("source");
    if (source === "composite") {
      h.set("source", "composite");
      h.set("datetime", `${ui.dateStart.value}/${ui.dateEnd.value}`);
      h.set("method", ui.method.value);
      h.set("cloud_mask", ui.cloudMask.value);
    } else if (ui.item.value) {
      h.set("item", ui.item.value);
    }
    for (const [k, v] of renderParams()) h.append(k, v);
    history.replaceState(null, "", `#${h.toString()}`);
  }

  function applyHash(hash) {
    // Render settings only: collection and item are applied while loading them.
    if (hash.get("source") === "composite") {
      setRadio("source", "composite");
      const [start, end] = (hash.get("datetime") || "").split("/");
      if (start) ui.dateStart.value = start;
      if (end) ui.dateEnd.value = end;
      if (hash.get("method")) ui.method.value = hash.get("method");
      if (hash.get("cloud_mask")) ui.cloudMask.value = hash.get("cloud_mask");
    }
    if (hash.has("assets")) {
      setRadio("mode", "bands");
    } else if (hash.has("expression")) {
      setRadio("mode", "expression");
      ui.expression.value = hash.get("expression");
    } else if (hash.has("index")) {
      setRadio("mode", "index");
      ui.index.value = hash.get("index");
    }
    if (hash.has("rescale")) {
      ui.rescale.value = hash.getAll("rescale").join(" ");
      state.userEdited.rescale = true;
    }
    if (hash.has("colormap_name")) {
      ui.colormap.value = hash.get("colormap_name");
      state.userEdited.colormap = true;
    }
    if (hash.has("color_formula")) ui.colorFormula.value = hash.get("color_formula");
  }

  // ------------------------------------------------------------------ catalog loading

  async function loadPresets() {
    // The WMTS capabilities list one layer per (collection, preset): "<collection>.<preset>".
    try {
      const response = await fetch(withToken("/wmts/1.0.0/WMTSCapabilities.xml"));
      if (!response.ok) throw new Error(await errorText(response));
      const xml = new DOMParser().parseFromString(await response.text(), "application/xml");
      const presets = {};
      for (const layer of xml.getElementsByTagNameNS("http://www.opengis.net/wmts/1.0", "Layer")) {
        const child = (name) => [...layer.children].find((e) => e.localName === name);
        const identifier = child("Identifier")?.textContent || "";
        const collection = state.collections.find((c) => identifier.startsWith(`${c.id}.`));
        if (!collection) continue;
        const title = child("Title")?.textContent || identifier;
        (presets[collection.id] ||= []).push({
          id: identifier.slice(collection.id.length + 1),
          title: title.includes(": ") ? title.slice(title.lastIndexOf(": ") + 2) : title,
          abstract: child("Abstract")?.textContent || "",
        });
      }
      state.presets = presets;
    } catch (error) {
      state.presets = {};
      showError(`Could not read the presets from the WMTS capabilities: ${error.message}`);
    }
  }

  async function loadCollections() {
    const body = await getJSON("/collections");
    state.collections = body.collections || [];
    const hash = readHash();
    fillSelect(ui.collection, state.collections.map((c) => option(c.id, c.id, c.title)));
    if (state.collections.length === 0) {
      showError("The catalog has no collections: ingest some data first (jeo-tiler ingest <path>).");
      return false;
    }
    const wanted = hash.get("collection");
    if (wanted && state.collections.some((c) => c.id === wanted)) ui.collection.value = wanted;
    return true;
  }

  async function onCollectionChange(initial) {
    const collection = currentCollection();
    if (!collection) return;
    ui.collectionInfo.textContent = collection.title || "";
    ui.collectionInfo.title = collection.description || "";
    ui.item.disabled = true;
    ui.item.replaceChildren(option("", "loading…"));
    const hash = initial ? readHash() : new URLSearchParams();

    // Presets of this collection.
    const presets = state.presets[collection.id] || [];
    const previousPreset = hash.get("preset") || ui.preset.value;
    fillSelect(ui.preset, presets.map((p) => option(p.id, p.title, p.abstract)));
    if (presets.some((p) => p.id === previousPreset)) ui.preset.value = previousPreset;
    if (presets.length === 0 && radio("mode") === "preset") setRadio("mode", "bands");

    // Items, newest first.
    let body;
    try {
      body = await getJSON(`/collections/${encodeURIComponent(collection.id)}/items?limit=500`);
    } catch (error) {
      showError(`Items of ${collection.id}: ${error.message}`);
      return;
    }
    if (ui.collection.value !== collection.id) return; // changed meanwhile
    state.items = (body.features || []).slice().sort((a, b) =>
      (b.properties.datetime || "").localeCompare(a.properties.datetime || ""));
    fillSelect(ui.item, state.items.map((item) => {
      const cloud = item.properties["eo:cloud_cover"];
      const cloudText = cloud === undefined || cloud === null ? "cloud n/a" : `${Number(cloud).toFixed(1)} % cloud`;
      return option(item.id, `${formatDate(item.properties.datetime)} · ${cloudText}`, item.id);
    }));
    if (hash.get("item") && state.items.some((i) => i.id === hash.get("item"))) ui.item.value = hash.get("item");

    // Date range of the composite: the items' dates.
    const dates = state.items.map((i) => (i.properties.datetime || "").slice(0, 10)).filter(Boolean).sort();
    if (dates.length && !(initial && hash.get("source") === "composite")) {
      ui.dateStart.value = dates[0];
      ui.dateEnd.value = dates[dates.length - 1];
    }

    fillBands(initial ? hash.get("assets") : null);
    updatePresetInfo();
    await updateLayer();
  }

  /** Band selects: the data assets of the chosen item (or the newest one); each band of a multi-band asset
   *  (an export's result) by its eo:bands name. */
  function fillBands(wanted) {
    const item = currentItem() || state.items[0];
    const assets = (item ? Object.entries(item.assets).filter(([, a]) => {
      const roles = a.roles || [];
      return (roles.includes("data") || roles.length === 0) && /tiff|geotiff|jp2/i.test(a.type || "tiff");
    }) : []).flatMap(([key, a]) => {
      const bands = a["eo:bands"] || [];
      return bands.length > 1 ? bands.map((band) => [band.name, { ...a, "eo:bands": [band] }]) : [[key, a]];
    });
    const options = () => assets.map(([key, a]) => {
      const band = (a["eo:bands"] || [])[0];
      const label = band && band.name && band.name !== key ? `${key} (${band.name})` : key;
      return option(key, label, band?.description || a.title || "");
    });
    const wantedKeys = wanted ? wanted.split(",") : null;
    const defaults = ["red", "green", "blue"];
    ui.bands.forEach((select, i) => {
      const previous = select.value;
      fillSelect(select, options());
      const keys = assets.map(([k]) => k);
      const choice = [wantedKeys && wantedKeys[i], previous, defaults[i], keys[Math.min(i, keys.length - 1)]]
        .find((k) => k && keys.includes(k));
      if (choice) select.value = choice;
    });
  }

  function updatePresetInfo() {
    const preset = (state.presets[ui.collection.value] || []).find((p) => p.id === ui.preset.value);
    ui.presetInfo.textContent = preset ? preset.abstract : "";
  }

  function updateModeVisibility() {
    const mode = radio("mode");
    for (const element of document.querySelectorAll(".mode-controls")) {
      element.hidden = element.dataset.mode !== mode;
    }
    ui.rescale.placeholder = mode === "preset" ? "preset default" : "e.g. 0,0.3";
    ui.colormap.disabled = mode === "bands";
    const composite = radio("source") === "composite";
    ui.itemControls.hidden = composite;
    ui.compositeControls.hidden = !composite;
  }

  function applyModeDefaults() {
    const defaults = MODE_DEFAULTS[radio("mode")];
    if (!state.userEdited.rescale) ui.rescale.value = defaults.rescale;
    if (!state.userEdited.colormap) ui.colormap.value = defaults.colormap;
  }

  // ------------------------------------------------------------------ the tile layer

  function setStatus() {
    const t = state.tiles;
    const parts = [];
    if (t.loading) parts.push(`loading ${t.loading} tile${t.loading === 1 ? "" : "s"}…`);
    parts.push(`${t.loaded} tile${t.loaded === 1 ? "" : "s"} loaded`);
    if (t.failed) parts.push(`${t.failed} not loaded (outside the footprint or failed)`);
    ui.status.textContent = parts.join(" · ");
    document.body.dataset.tilesLoading = String(t.loading);
    document.body.dataset.tilesLoaded = String(t.loaded);
  }

  function removeLayer() {
    if (state.layer) map.removeLayer(state.layer);
    if (state.footprint) map.removeLayer(state.footprint);
    state.layer = state.footprint = null;
    state.tiles = { loading: 0, loaded: 0, failed: 0 };
    setStatus();
  }

  /** Source description: tile URL template, bounds, zoom range, footprint. */
  async function describeSource(params) {
    const collection = currentCollection();
    const cid = encodeURIComponent(collection.id);
    if (radio("source") === "composite") {
      const start = ui.dateStart.value || "..", end = ui.dateEnd.value || "..";
      const composite = [
        ["datetime", `${start}/${end}`], ["method", ui.method.value], ["cloud_mask", ui.cloudMask.value], ...params,
      ];
      const spatial = collection.extent?.spatial?.bbox?.[0];
      const bbox = spatial || state.items[0]?.bbox;
      // Zoom range: the newest item's (all items of a collection share a grid here).
      let minzoom = 0, maxzoom = 18, attribution = "";
      if (state.items[0]) {
        try {
          const tj = await getJSON(`/collections/${cid}/items/${encodeURIComponent(state.items[0].id)}/${TMS}/tilejson.json?tile_format=png`);
          minzoom = tj.minzoom; maxzoom = tj.maxzoom; attribution = tj.attribution || "";
        } catch (_) { /* keep the defaults */ }
      }
      return {
        template: withToken(`${location.origin}/collections/${cid}/tiles/${TMS}/{z}/{x}/{y}.png?${query(composite)}`),
        bbox, minzoom, maxzoom, attribution, footprint: null, fitKey: `composite:${collection.id}`,
      };
    }
    const item = currentItem();
    if (!item) throw new Error(`${collection.id} has no items`);
    const url = `/collections/${cid}/items/${encodeURIComponent(item.id)}/${TMS}/tilejson.json?${query([["tile_format", "png"], ...params])}`;
    const tj = await getJSON(url);
    return {
      // Not `new URL()`: it would percent-encode the {z}/{x}/{y} placeholders.
      template: /^https?:\/\//.test(tj.tiles[0]) ? tj.tiles[0] : location.origin + tj.tiles[0],
      bbox: tj.bounds || item.bbox, minzoom: tj.minzoom, maxzoom: tj.maxzoom,
      attribution: tj.attribution || "", footprint: item.geometry, fitKey: `item:${item.id}`,
    };
  }

  async function updateLayer() {
    const generation = ++state.generation;
    updateModeVisibility();
    updatePresetInfo();
    writeHash();
    showError("");
    if (!currentCollection()) return;
    const params = renderParams();
    if (radio("mode") === "expression" && !ui.expression.value.trim()) {
      removeLayer();
      showError("Type an expression, e.g. (B08-B04)/(B08+B04).");
      return;
    }
    let source;
    try {
      source = await describeSource(params);
    } catch (error) {
      if (generation !== state.generation) return;
      removeLayer();
      ui.tileUrl.value = "";
      showError(`TileJSON: ${error.message}`);
      return;
    }
    if (generation !== state.generation) return;

    removeLayer();
    ui.tileUrl.value = source.template;
    const bounds = source.bbox ? bboxToBounds(source.bbox) : null;
    const layer = L.tileLayer(source.template, {
      tileSize: 256,
      minNativeZoom: source.minzoom,
      maxNativeZoom: source.maxzoom,
      maxZoom: 20,
      bounds: bounds ? bounds.pad(0.001) : undefined,
      opacity: Number(ui.opacity.value),
      attribution: source.attribution,
      crossOrigin: false,
    });
    layer.on("tileloadstart", () => { state.tiles.loading++; setStatus(); });
    layer.on("tileload", () => { state.tiles.loading--; state.tiles.loaded++; setStatus(); });
    layer.on("tileerror", () => { state.tiles.loading--; state.tiles.failed++; setStatus(); });
    state.layer = layer;
    if (source.footprint) {
      state.footprint = L.geoJSON(source.footprint, {
        style: { color: "#f5d142", weight: 1.5, dashArray: "4 4", fill: false }, interactive: false,
      }).addTo(map);
    }
    if (bounds && state.fitKey !== source.fitKey) {
      state.fitKey = source.fitKey;
      map.fitBounds(bounds, { animate: false, padding: [16, 16] });
    }
    layer.addTo(map);
    probe(source, generation);
  }

  /** Fetch the tile at the data's centre once, to show the JSON detail of an error. */
  async function probe(source, generation) {
    if (!source.bbox) return;
    const [w, s, e, n] = source.bbox;
    const z = Math.min(Math.max(map.getZoom(), source.minzoom), source.maxzoom);
    const { x, y } = lonLatToTile((w + e) / 2, (s + n) / 2, z);
    const url = fillTemplate(source.template, z, x, y);
    try {
      const response = await fetch(url);
      if (generation !== state.generation) return;
      if (!response.ok) {
        const message = await errorText(response);
        const routeMissing = response.status === 404 && /"?Not Found"?$/.test(message);
        showError(`Tile ${z}/${x}/${y}: ${message}${routeMissing && radio("source") === "composite"
          ? " (this server has no composite tile endpoint)" : ""}`);
      }
    } catch (error) {
      if (generation === state.generation) showError(`Tile ${z}/${x}/${y}: ${error.message}`);
    }
  }

  // ------------------------------------------------------------------ events

  let debounce = null;
  function updateSoon(delay = 350) {
    clearTimeout(debounce);
    debounce = setTimeout(updateLayer, delay);
  }

  ui.collection.addEventListener("change", () => onCollectionChange(false));
  ui.item.addEventListener("change", () => { fillBands(); updateLayer(); });
  for (const input of document.querySelectorAll('input[name="mode"]')) {
    input.addEventListener("change", () => { applyModeDefaults(); updateLayer(); });
  }
  for (const input of document.querySelectorAll('input[name="source"]')) {
    input.addEventListener("change", updateLayer);
  }
  for (const select of [ui.preset, ui.index, ui.method, ui.cloudMask, ...ui.bands]) {
    select.addEventListener("change", () => updateLayer());
  }
  for (const input of [ui.dateStart, ui.dateEnd]) input.addEventListener("change", () => updateLayer());
  ui.colormap.addEventListener("change", () => { state.userEdited.colormap = true; updateLayer(); });
  ui.rescale.addEventListener("input", () => { state.userEdited.rescale = true; updateSoon(); });
  ui.expression.addEventListener("input", () => updateSoon(600));
  ui.colorFormula.addEventListener("input", () => updateSoon(600));
  for (const input of [ui.rescale, ui.expression, ui.colorFormula]) {
    input.addEventListener("keydown", (e) => { if (e.key === "Enter") { clearTimeout(debounce); updateLayer(); } });
  }
  ui.opacity.addEventListener("input", () => { if (state.layer) state.layer.setOpacity(Number(ui.opacity.value)); });

  ui.copy.addEventListener("click", async () => {
    const text = ui.tileUrl.value;
    if (!text) return;
    try {
      await navigator.clipboard.writeText(text);
    } catch (_) {
      ui.tileUrl.select();
      document.execCommand("copy");
    }
    ui.copy.textContent = "Copied";
    setTimeout(() => { ui.copy.textContent = "Copy"; }, 1200);
  });
  ui.tileUrl.addEventListener("focus", () => ui.tileUrl.select());

  // ------------------------------------------------------------------ start

  async function start() {
    window.jeoToken.bindField($("token"));
    applyHash(readHash());
    updateModeVisibility();
    try {
      if (!(await loadCollections())) return;
    } catch (error) {
      showError(`Collections: ${error.message}`);
      return;
    }
    await loadPresets();
    ui.collection.disabled = false;
    await onCollectionChange(true);
    document.body.dataset.ready = "true";
  }

  start();
})();
