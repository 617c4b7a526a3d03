/* Access token of the map pages: `?access_token=` in the page URL, or typed into the token field
 * (which reloads the page with it). Every URL the page requests carries it, so restricted collections
 * show; tile URL templates handed out by the server (TileJSON, WMTS) carry it already.
 */
window.jeoToken = (function () {
  "use strict";

  const token = new URLSearchParams(location.search).get("access_token") || "";

  /** `url` with `access_token=` appended when the page has a token. */
  function withToken(url) {
    if (!token) return url;
    return `${url}${url.includes("?") ? "&" : "?"}access_token=${encodeURIComponent(token)}`;
  }

  /** Show the token in `input`; a new value reloads the page with it (the hash, the page state, stays). */
  function bindField(input) {
    input.value = token;
    input.addEventListener("change", () => {
      const search = new URLSearchParams(location.search);
      const value = input.value.trim();
      if (value) search.set("access_token", value); else search.delete("access_token");
      location.search = search.toString();
    });
  }

  /** Links to the other map page keep the token. */
  for (const link of document.querySelectorAll("a[data-keep-token]")) link.href = withToken(link.getAttribute("href"));

  return { token, withToken, bindField };
})();
