// Admin instance page: window presets, custom center/width and a frame slider drive the
// image URL of the rendering API; a filter box narrows the tag browser.
(function () {
  "use strict";
  const viewer = document.getElementById("dicom-viewer");
  if (viewer) {
    const image = document.getElementById("viewer-image");
    const status = document.getElementById("viewer-status");
    const slider = document.getElementById("frame-slider");
    const frameLabel = document.getElementById("frame-label");
    const frames = parseInt(viewer.dataset.frames, 10) || 1;
    const state = { frame: 1, preset: "default", window: null };

    function render() {
      const params = new URLSearchParams({ frame: String(state.frame) });
      if (state.window) params.set("window", state.window);
      else params.set("preset", state.preset);
      status.textContent = "";
      viewer.dataset.loading = "1";
      image.src = viewer.dataset.imageUrl + "?" + params.toString();
    }

    image.addEventListener("load", function () { delete viewer.dataset.loading; });
    image.addEventListener("error", function () {
      delete viewer.dataset.loading;
      // The API answers errors as JSON: show its sentence instead of a broken image.
      fetch(image.src, { credentials: "same-origin" })
        .then(function (response) { return response.json(); })
        .then(function (body) { status.textContent = body.error || "The image cannot be shown."; })
        .catch(function () { status.textContent = "The image cannot be shown."; });
    });

    viewer.querySelectorAll("button.preset").forEach(function (button) {
      button.addEventListener("click", function () {
        viewer.querySelectorAll("button.preset").forEach(function (b) { b.classList.remove("active"); });
        button.classList.add("active");
        state.preset = button.dataset.preset;
        state.window = null;
        render();
      });
    });

    document.getElementById("window-apply").addEventListener("click", function () {
      const center = parseFloat(document.getElementById("window-center").value);
      const width = parseFloat(document.getElementById("window-width").value);
      if (!Number.isFinite(center) || !Number.isFinite(width) || width < 1) {
        status.textContent = "Enter a center and a width of at least 1.";
        return;
      }
      viewer.querySelectorAll("button.preset").forEach(function (b) { b.classList.remove("active"); });
      state.window = center + "," + width;
      render();
    });

    if (slider) {
      slider.addEventListener("input", function () {
        state.frame = parseInt(slider.value, 10);
        frameLabel.textContent = state.frame + " / " + frames;
        render();
      });
    }
  }

  const filter = document.getElementById("tag-filter");
  const table = document.getElementById("tag-browser");
  if (filter && table) {
    // A row stays visible when it or anything nested in it matches; matching sequences open.
    function apply(tbody, query) {
      let any = false;
      Array.from(tbody.children).forEach(function (row) {
        let match = !query || row.dataset.search.indexOf(query) !== -1;
        const details = row.querySelector(":scope > td.value > details");
        if (details) {
          let nestedMatch = false;
          details.querySelectorAll(":scope > .sequence-item").forEach(function (item) {
            const shown = apply(item.querySelector(":scope > table > tbody"), match ? "" : query);
            // An item with nothing matching inside is hidden too, not left as a bare "Item n" label.
            item.hidden = Boolean(query) && !match && !shown;
            if (shown) nestedMatch = true;
          });
          if (query && nestedMatch && !match) details.open = true;
          match = match || nestedMatch;
        }
        row.hidden = !match;
        any = any || match;
      });
      return any;
    }
    filter.addEventListener("input", function () {
      apply(table.querySelector(":scope > tbody"), filter.value.trim().toLowerCase());
    });
  }
})();
