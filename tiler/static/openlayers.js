/* jeo-tiler WMTS page: every layer of the capabilities document in OpenLayers.
 *
 * The page reads /wmts/1.0.0/WMTSCapabilities.xml with ol.format.WMTSCapabilities, builds the source
 * with ol.source.WMTS.optionsFromCapabilities (REST encoding) and offers the layer's Time values.
 * Tiles are fetched with fetch() so that the detail of a failed tile (JSON `detail` or the OWS
 * ExceptionText) can be shown. The capabilities are read with the page's access token (token.js), so
 * restricted layers are listed and their ResourceURL templates carry it.
 * No external resources: no basemap, only a graticule.
 */
(function () {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const ui = {
    layer: $("layer"), layerInfo: $("layer-info"), time: $("time"), matrixSet: $("matrix-set"),
    format: $("format"), opacity: $("opacity"), tileUrl: $("tile-url"), copy: $("copy-url"),
    error: $("error"), status: $("status"),
  };
  const CAPABILITIES = window.jeoToken.withToken("/wmts/1.0.0/WMTSCapabilities.xml");
  const PREFERRED_MATRIX_SET = "WebMercatorQuad";
  const TILE_ERROR = (ol.TileState && ol.TileState.ERROR) || 3;

  const state = {
    capabilities: null,
    layer: null,          // ol.layer.Tile
    generation: 0,
    tiles: { loading: 0, loaded: 0, failed: 0, outside: 0 },
    outsideTiles: new WeakSet(),  // tiles answered 404 "outside the footprint": no data, not an error
    errorShown: false,
    fitKey: null,
  };

  // ------------------------------------------------------------------ helpers

  function showError(message) {
    ui.error.textContent = message || "";
    ui.error.hidden = !message;
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
    return `${response.status}: ${(detail || "").trim() || "(no detail)"}`;
  }

  function option(value, label, title, disabled) {
    const element = document.createElement("option");
    element.value = value;
    element.textContent = label;
    if (title) element.title = title;
    if (disabled) element.disabled = true;
    return element;
  }

  function setStatus() {
    const t = state.tiles;
    const parts = [];
    if (t.loading) parts.push(`loading ${t.loading} tile${t.loading === 1 ? "" : "s"}…`);
    parts.push(`${t.loaded} tile${t.loaded === 1 ? "" : "s"} loaded`);
    if (t.outside) parts.push(`${t.outside} outside the footprint`);
    if (t.failed) parts.push(`${t.failed} failed`);
    ui.status.textContent = parts.join(" · ");
    document.body.dataset.tilesLoading = String(t.loading);
    document.body.dataset.tilesLoaded = String(t.loaded);
  }

  function readHash() {
    return new URLSearchParams(location.hash.replace(/^#/, ""));
  }

  function writeHash() {
    const h = new URLSearchParams({
      layer: ui.layer.value, time: ui.time.value, matrixSet: ui.matrixSet.value, format: ui.format.value,
    });
    history.replaceState(null, "", `#${h.toString()}`);
  }

  function currentLayer() {
    return state.capabilities.Contents.Layer.find((l) => l.Identifier === ui.layer.value);
  }

  /** The OpenLayers projection of a tile matrix set of the capabilities, or null when unknown to OL. */
  function matrixSetProjection(identifier) {
    const matrixSet = state.capabilities.Contents.TileMatrixSet.find((m) => m.Identifier === identifier);
    if (!matrixSet) return null;
    const code = matrixSet.SupportedCRS
      .replace(/urn:ogc:def:crs:(\w+):(.*)?:(\w+)$/, "$1:$3")
      .replace("OGC:CRS84", "EPSG:4326");
    return ol.proj.get(code) || ol.proj.get(matrixSet.SupportedCRS);
  }

  // ------------------------------------------------------------------ map

  const graticule = new ol.layer.Graticule({
    strokeStyle: new ol.style.Stroke({ color: "rgba(138,155,176,0.45)", width: 1 }),
    showLabels: true,
    lonLabelStyle: new ol.style.Text({
      font: "10px sans-serif", textBaseline: "bottom",
      fill: new ol.style.Fill({ color: "#b7c4d4" }), stroke: new ol.style.Stroke({ color: "#000", width: 2 }),
    }),
    latLabelStyle: new ol.style.Text({
      font: "10px sans-serif", textAlign: "end",
      fill: new ol.style.Fill({ color: "#b7c4d4" }), stroke: new ol.style.Stroke({ color: "#000", width: 2 }),
    }),
    wrapX: false,
    zIndex: 10,
  });

  const map = new ol.Map({
    target: "map",
    layers: [graticule],
    view: new ol.View({ center: [0, 0], zoom: 2 }),
    controls: ol.control.defaults.defaults().extend([
      new ol.control.ScaleLine(),
      new ol.control.MousePosition({
        coordinateFormat: ol.coordinate.createStringXY(5),
        projection: "EPSG:4326",
      }),
    ]),
  });

  // For scripts and tests: "true" once every tile is loaded and drawn (fade-in transitions finished).
  map.on("loadstart", () => { document.body.dataset.renderComplete = "false"; });
  map.on("rendercomplete", () => { document.body.dataset.renderComplete = "true"; });

  // ------------------------------------------------------------------ tiles

  /** Fetch a tile; on failure show the server's message once per layer change and mark the tile failed. */
  function tileLoader(generation) {
    return (imageTile, src) => {
      fetch(src).then(async (response) => {
        if (!response.ok) {
          const message = await errorText(response);
          if (response.status === 404 && /outside/i.test(message)) {
            state.outsideTiles.add(imageTile);
          } else if (generation === state.generation && !state.errorShown) {
            state.errorShown = true;
            showError(`Tile ${src.replace(location.origin, "")}\n${message}`);
          }
          imageTile.setState(TILE_ERROR);
          return;
        }
        const blob = await response.blob();
        const image = imageTile.getImage();
        const url = URL.createObjectURL(blob);
        image.addEventListener("load", () => URL.revokeObjectURL(url), { once: true });
        image.addEventListener("error", () => URL.revokeObjectURL(url), { once: true });
        image.src = url;
      }).catch((error) => {
        if (generation === state.generation && !state.errorShown) {
          state.errorShown = true;
          showError(`Tile ${src}: ${error.message}`);
        }
        imageTile.setState(TILE_ERROR);
      });
    };
  }

  function showLayer() {
    const generation = ++state.generation;
    state.errorShown = false;
    showError("");
    const layerInfo = currentLayer();
    if (!layerInfo) return;
    ui.layerInfo.textContent = `${layerInfo.Identifier}: ${layerInfo.Abstract || layerInfo.Title || ""}`;

    const matrixSet = ui.matrixSet.value;
    const projection = matrixSetProjection(matrixSet);
    const options = ol.source.WMTS.optionsFromCapabilities(state.capabilities, {
      layer: layerInfo.Identifier, matrixSet, format: ui.format.value, projection, requestEncoding: "REST",
    });
    if (!options) {
      showError(`OpenLayers cannot use layer ${layerInfo.Identifier} with ${matrixSet}.`);
      return;
    }
    // OpenLayers takes every tile ResourceURL as an alternative server (one per format here): keep the
    // template of the chosen format only.
    const resource = (layerInfo.ResourceURL || []).find(
      (r) => r.resourceType === "tile" && r.format === ui.format.value);
    if (resource) {
      options.urls = [resource.template];
      options.format = resource.format;
    }
    options.dimensions = { ...(options.dimensions || {}), Time: ui.time.value };
    options.tileLoadFunction = tileLoader(generation);
    options.wrapX = false;
    const source = new ol.source.WMTS(options);
    state.tiles = { loading: 0, loaded: 0, failed: 0, outside: 0 };
    setStatus();
    const count = (change) => () => {
      if (generation !== state.generation) return;
      change(state.tiles);
      setStatus();
    };
    source.on("tileloadstart", count((t) => { t.loading++; }));
    source.on("tileloadend", count((t) => { t.loading--; t.loaded++; }));
    source.on("tileloaderror", (event) => count((t) => {
      t.loading--;
      if (state.outsideTiles.has(event.tile)) t.outside++; else t.failed++;
    })());

    // A new view when the projection changes (e.g. WebMercatorQuad → WorldCRS84Quad).
    let view = map.getView();
    const projectionChanged = view.getProjection() !== options.projection;
    if (projectionChanged) {
      view = new ol.View({ projection: options.projection, center: [0, 0], zoom: 2 });
      map.setView(view);
    }
    const fitKey = `${layerInfo.Identifier.replace(/\.[^.]*$/, "")}|${matrixSet}`;
    if (layerInfo.WGS84BoundingBox && (projectionChanged || state.fitKey !== fitKey)) {
      state.fitKey = fitKey;
      const extent = ol.proj.transformExtent(layerInfo.WGS84BoundingBox, "EPSG:4326", view.getProjection());
      view.fit(extent, { padding: [20, 20, 20, 20] });
    }

    if (state.layer) map.removeLayer(state.layer);
    state.layer = new ol.layer.Tile({ source, opacity: Number(ui.opacity.value), zIndex: 1 });
    map.addLayer(state.layer);

    ui.tileUrl.value = (options.urls && options.urls[0] || "")
      .replace("{Time}", ui.time.value).replace("{TileMatrixSet}", matrixSet)
      .replace("{TileMatrix}", "{z}").replace("{TileRow}", "{y}").replace("{TileCol}", "{x}");
    writeHash();
  }

  /** Fill the time, matrix set and format selects from the chosen layer; keep choices when possible. */
  function onLayerChange(wanted) {
    const layerInfo = currentLayer();
    if (!layerInfo) return;
    const keep = (select, value) => {
      if (value && [...select.options].some((o) => o.value === value && !o.disabled)) select.value = value;
    };

    const previousTime = wanted?.time || ui.time.value;
    const dimension = (layerInfo.Dimension || []).find((d) => d.Identifier.toLowerCase() === "time");
    const times = dimension ? [...dimension.Value].sort().reverse() : [];
    ui.time.replaceChildren(...times.map((t) => option(t, t === dimension.Default ? `${t} (default)` : t)));
    ui.time.disabled = times.length === 0;
    if (dimension) ui.time.value = dimension.Default;
    keep(ui.time, previousTime);

    const previousSet = wanted?.matrixSet || ui.matrixSet.value || PREFERRED_MATRIX_SET;
    const sets = (layerInfo.TileMatrixSetLink || []).map((link) => link.TileMatrixSet);
    ui.matrixSet.replaceChildren(...sets.map((s) => {
      const usable = Boolean(matrixSetProjection(s));
      return option(s, usable ? s : `${s} (projection unknown to OpenLayers)`, "", !usable);
    }));
    ui.matrixSet.disabled = sets.length === 0;
    keep(ui.matrixSet, PREFERRED_MATRIX_SET);
    keep(ui.matrixSet, previousSet);

    const previousFormat = wanted?.format || ui.format.value || "image/png";
    const formats = layerInfo.Format || [];
    ui.format.replaceChildren(...formats.map((f) => option(f, f)));
    ui.format.disabled = formats.length === 0;
    keep(ui.format, "image/png");
    keep(ui.format, previousFormat);

    showLayer();
  }

  // ------------------------------------------------------------------ start

  async function start() {
    window.jeoToken.bindField($("token"));
    let text;
    try {
      const response = await fetch(CAPABILITIES);
      if (!response.ok) throw new Error(await errorText(response));
      text = await response.text();
    } catch (error) {
      showError(`WMTS capabilities: ${error.message}`);
      return;
    }
    state.capabilities = new ol.format.WMTSCapabilities().read(text);
    const layers = state.capabilities?.Contents?.Layer || [];
    if (layers.length === 0) {
      showError("The WMTS capabilities list no layers: ingest some data first.");
      return;
    }
    // One group per collection ("<collection>.<preset>"), the preset title as the option.
    const groups = new Map();
    for (const l of layers) {
      const split = l.Identifier.lastIndexOf(".");
      const collection = split > 0 ? l.Identifier.slice(0, split) : l.Identifier;
      if (!groups.has(collection)) {
        const group = document.createElement("optgroup");
        group.label = collection;
        groups.set(collection, group);
      }
      const title = (l.Title || l.Identifier).includes(": ") ? l.Title.slice(l.Title.lastIndexOf(": ") + 2) : l.Title;
      groups.get(collection).append(option(l.Identifier, title || l.Identifier, `${l.Identifier}: ${l.Abstract || ""}`));
    }
    ui.layer.replaceChildren(...groups.values());
    ui.layer.disabled = false;
    const hash = readHash();
    if (layers.some((l) => l.Identifier === hash.get("layer"))) ui.layer.value = hash.get("layer");
    onLayerChange({ time: hash.get("time"), matrixSet: hash.get("matrixSet"), format: hash.get("format") });
    document.body.dataset.ready = "true";
  }

  ui.layer.addEventListener("change", () => onLayerChange());
  ui.matrixSet.addEventListener("change", showLayer);
  ui.format.addEventListener("change", showLayer);
  ui.time.addEventListener("change", () => {
    // Same layer, other date: only the dimension changes.
    if (!state.layer) return showLayer();
    state.errorShown = false;
    showError("");
    state.layer.getSource().updateDimensions({ Time: ui.time.value });
    ui.tileUrl.value = ui.tileUrl.value.replace(/\/\d{4}-\d\d-\d\d\//, `/${ui.time.value}/`);
    writeHash();
  });
  ui.opacity.addEventListener("input", () => { if (state.layer) state.layer.setOpacity(Number(ui.opacity.value)); });
  ui.copy.addEventListener("click", async () => {
    if (!ui.tileUrl.value) return;
    try {
      await navigator.clipboard.writeText(ui.tileUrl.value);
    } catch (_) {
      ui.tileUrl.select();
      document.execCommand("copy");
    }
    ui.copy.textContent = "Copied";
    setTimeout(() => { ui.copy.textContent = "Copy"; }, 1200);
  });
  ui.tileUrl.addEventListener("focus", () => ui.tileUrl.select());

  start();
})();
