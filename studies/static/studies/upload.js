// Admin upload page: drag-and-drop onto the drop zone fills the file input.
(function () {
  "use strict";
  const zone = document.getElementById("dropzone");
  const input = document.getElementById("id_files");
  const chosen = document.getElementById("chosen");
  if (!zone || !input) return;
  function describe() {
    const n = input.files.length;
    chosen.textContent = n ? n + " file(s) chosen." : "No files chosen.";
  }
  input.addEventListener("change", describe);
  ["dragenter", "dragover"].forEach(function (type) {
    zone.addEventListener(type, function (event) { event.preventDefault(); zone.classList.add("dragover"); });
  });
  ["dragleave", "drop"].forEach(function (type) {
    zone.addEventListener(type, function () { zone.classList.remove("dragover"); });
  });
  zone.addEventListener("drop", function (event) {
    event.preventDefault();
    if (event.dataTransfer && event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      describe();
    }
  });
})();
