"""The web page of ``effnet app``: upload or drop a photo, see the top-5 as bars and the CAM overlay.

One static HTML page with a little plain JavaScript, served at ``/`` by
:func:`effnet.serve.server.create_app` (``app=True``). It posts the photo to ``/explain`` as
a multipart form and draws the answer: ``#top1`` holds the top-1 label, ``#bars`` one bar
per class (width = probability), ``#cam`` the class activation map overlay, ``#error`` the
server's error message for a bad upload.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>effnet: try a model</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 860px; color: #222; }
  #drop { border: 2px dashed #888; border-radius: 8px; padding: 1.5em; text-align: center; cursor: pointer; }
  #drop.over { background: #eef; }
  .row { display: flex; gap: 2em; margin-top: 1.5em; align-items: flex-start; }
  .col { flex: 1; }
  img { max-width: 100%; border-radius: 4px; }
  .bar { margin: 0.4em 0; }
  .bar .name { font-size: 0.9em; }
  .bar .track { background: #eee; height: 14px; border-radius: 3px; }
  .bar .fill { background: #3a6ea5; height: 14px; border-radius: 3px; }
  #error { color: #b00; white-space: pre-wrap; }
  #top1 { font-size: 1.4em; font-weight: 600; }
  .meta { color: #666; font-size: 0.85em; }
</style>
</head>
<body>
<h1>effnet</h1>
<p class="meta" id="meta"></p>
<div id="drop">Drop a photo here, or <label><u>choose a file</u>
  <input id="file" type="file" accept="image/*" style="display:none"></label></div>
<p id="error"></p>
<div class="row">
  <div class="col"><p>Photo</p><img id="photo" alt=""></div>
  <div class="col"><p>Class activation map (top-1)</p><img id="cam" alt=""></div>
</div>
<p>Top-1: <span id="top1"></span> <span class="meta" id="timing"></span></p>
<div id="bars"></div>
<script>
const $ = (id) => document.getElementById(id);
fetch("metadata").then(r => r.json()).then(m => {
  $("meta").textContent = `${m.model} (${m.engine}), ${m.num_classes} classes, ${m.preprocessing.input_size} px`;
});
function show(result) {
  $("top1").textContent = result.topk[0].label;
  $("timing").textContent = `(${result.ms.toFixed(1)} ms in the server)`;
  $("cam").src = result.cam_png;
  const bars = $("bars");
  bars.replaceChildren();
  for (const t of result.topk) {
    const row = document.createElement("div"); row.className = "bar";
    const pct = (100 * t.probability).toFixed(1);
    const name = document.createElement("div"); name.className = "name";
    name.textContent = `${t.label}: ${pct}%`;
    const track = document.createElement("div"); track.className = "track";
    const fill = document.createElement("div"); fill.className = "fill"; fill.style.width = pct + "%";
    track.appendChild(fill); row.append(name, track); bars.appendChild(row);
  }
}
async function classify(file) {
  $("error").textContent = ""; $("top1").textContent = "…"; $("bars").replaceChildren(); $("cam").removeAttribute("src");
  $("photo").src = URL.createObjectURL(file);
  const form = new FormData(); form.append("file", file, file.name);
  try {
    const r = await fetch("explain?topk=5", {method: "POST", body: form});
    const body = await r.json();
    if (!r.ok) { $("top1").textContent = ""; $("error").textContent = body.error; return; }
    show(body);
  } catch (e) { $("top1").textContent = ""; $("error").textContent = String(e); }
}
$("file").addEventListener("change", (e) => { if (e.target.files.length) classify(e.target.files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files.length) classify(e.dataTransfer.files[0]);
});
</script>
</body>
</html>
"""
