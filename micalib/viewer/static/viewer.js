// MICA viewer page (classic script: the page must open from file:// without a server).
// Reads window.MICA_VIEW (data.js) and window.THREE (three.bundle.js: three.js + GLTFLoader +
// OrbitControls). Modes: "clip" (a tracked clip: frames under the animated mesh seen through the
// tracked camera) and "demo" (a list of meshes, each loaded from its own script when shown).
// Query string: ?frame=K starts at frame K (&wireframe=1, &landmarks=1 preset the toggles); &silhouette=1 renders that frame's silhouette (white on
// black, the frame's pixel size) and writes the PNG data URL into #result (the tests read it).
(function () {
  "use strict";
  var app = document.getElementById("app");
  var params = new URLSearchParams(window.location.search);

  function hasWebGL2() {
    try {
      var c = document.createElement("canvas");
      return !!(window.WebGL2RenderingContext && c.getContext("webgl2"));
    } catch (e) {
      return false;
    }
  }

  function el(tag, attrs, parent) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") e.textContent = attrs[k];
      else e.setAttribute(k, attrs[k]);
    });
    if (parent) parent.appendChild(e);
    return e;
  }

  function bytesOf(b64) {
    var s = atob(b64);
    var out = new Uint8Array(s.length);
    for (var i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out.buffer;
  }

  function parseGlb(b64, done) {
    new THREE.GLTFLoader().parse(bytesOf(b64), "", done, function (err) {
      console.error("cannot read the glTF data: " + err);
    });
  }

  function meshOf(root) {
    var found = null;
    root.traverse(function (o) {
      if (o.isMesh && !found) found = o;
    });
    return found;
  }

  // Projection from the camera's extras: pixels where pixel i spans [i, i+1] (see micalib/export/gltf.py).
  function projection(intr, size, near, far) {
    var w = size[0], h = size[1], fx = intr.focal[0], fy = intr.focal[1];
    var cx = intr.principalPoint[0], cy = intr.principalPoint[1];
    var m = new THREE.Matrix4();
    m.set(2 * fx / w, 0, 1 - 2 * cx / w, 0,
          0, 2 * fy / h, 2 * cy / h - 1, 0,
          0, 0, -(far + near) / (far - near), -2 * far * near / (far - near),
          0, 0, -1, 0);
    return m;
  }

  // ---------------------------------------------------------------- tracked clip
  function clipMode(data) {
    var silhouette = params.get("silhouette") === "1";
    var frame = Math.max(0, Math.min(data.frames.length - 1, parseInt(params.get("frame") || "0", 10) || 0));
    var loaded = function (gltf) {
      var cam = gltf.cameras[0];
      var extras = cam.userData || {};
      var size = extras.imageSize;
      var near = cam.near, far = cam.far;
      var scene = gltf.scene;
      var mesh = meshOf(scene);
      mesh.frustumCulled = false;
      var mixer = new THREE.AnimationMixer(scene);
      var action = mixer.clipAction(gltf.animations[0]);
      action.setLoop(THREE.LoopOnce, 1);
      action.clampWhenFinished = true;
      action.play();
      var n = data.frames.length;
      var stage = el("div", { class: "stage" }, app);
      var img = silhouette ? null : el("img", { alt: "frame" }, stage);
      var canvas = el("canvas", {}, stage);
      var overlay = silhouette ? null : el("canvas", {}, stage);
      var renderer = new THREE.WebGLRenderer({ canvas: canvas, alpha: true, antialias: !silhouette,
                                               preserveDrawingBuffer: silhouette });
      var solid, wire;
      if (silhouette) {
        mesh.material = new THREE.MeshBasicMaterial({ color: 0xffffff, side: THREE.DoubleSide });
        renderer.setPixelRatio(1);
        renderer.setClearColor(0x000000, 1);
        stage.style.width = size[0] + "px";
        stage.style.height = size[1] + "px";
        renderer.setSize(size[0], size[1], false);
      } else {
        solid = new THREE.MeshStandardMaterial({ color: 0xd9c2b0, roughness: 0.6, metalness: 0.0,
                                                 flatShading: true, transparent: true, opacity: 0.85 });
        wire = new THREE.MeshBasicMaterial({ color: 0x66ddff, wireframe: true });
        mesh.material = solid;
        renderer.setClearColor(0x000000, 0);
        scene.add(new THREE.HemisphereLight(0xffffff, 0x404040, 1.5));
        var light = new THREE.DirectionalLight(0xffffff, 1.5);
        light.position.set(0, 0, 1);
        cam.add(light);
      }
      var playing = false, last = null, time = frame / data.fps, ahead = {};  // frames loaded ahead
      var controls = silhouette ? null : clipControls(n, function () { return frame; }, {
        seek: function (k) { frame = k; time = k / data.fps; show(); },
        play: function (on) { playing = on; last = null; if (on) requestAnimationFrame(tick); },
        wire: function (on) { mesh.material = on ? wire : solid; show(); },
        marks: function () { show(); }
      });

      function layout() {
        if (silhouette) return;
        var scale = Math.min((window.innerWidth - 24) / size[0], (window.innerHeight - 90) / size[1], 2);
        var w = Math.max(64, Math.floor(size[0] * scale)), h = Math.max(64, Math.floor(size[1] * scale));
        stage.style.width = w + "px";
        stage.style.height = h + "px";
        renderer.setPixelRatio(window.devicePixelRatio || 1);
        renderer.setSize(w, h, false);
        overlay.width = w;
        overlay.height = h;
      }

      function show() {
        var intr = extras.perFrame ? extras.perFrame[frame] : extras;
        action.paused = false;
        action.enabled = true;
        action.time = Math.min(time, gltf.animations[0].duration);
        mixer.update(0);
        cam.projectionMatrix.copy(projection(intr, size, near, far));
        cam.projectionMatrixInverse.copy(cam.projectionMatrix).invert();
        renderer.render(scene, cam);
        if (!silhouette) {
          img.src = data.frames[frame];
          for (var a = 1; a <= 3 && frame + a < n; a++) {
            if (!ahead[frame + a]) { ahead[frame + a] = new Image(); ahead[frame + a].src = data.frames[frame + a]; }
          }
          drawMarks(overlay, data.landmarks, frame, size, controls.marks());
          controls.update(frame);
        }
      }

      function tick(now) {
        if (!playing) return;
        if (last !== null) time += (now - last) / 1000;
        last = now;
        if (time > (n - 1) / data.fps) time = 0;
        frame = Math.min(n - 1, Math.round(time * data.fps));
        show();
        requestAnimationFrame(tick);
      }

      if (!silhouette && params.get("wireframe") === "1") mesh.material = wire;
      layout();
      window.addEventListener("resize", function () { layout(); show(); });
      show();
      if (silhouette) {
        document.getElementById("result").textContent = canvas.toDataURL("image/png");
        document.title = "silhouette ready";
      }
    };
    if (data.glb instanceof ArrayBuffer) new THREE.GLTFLoader().parse(data.glb, "", loaded, function (err) {
      console.error("cannot read the glTF data: " + err);
    });
    else parseGlb(data.glb, loaded);
  }

  function clipControls(n, current, on) {
    var bar = el("div", { class: "controls" }, app);
    var play = el("button", { text: "play" }, bar);
    var slider = el("input", { type: "range", min: "0", max: String(n - 1), value: "0" }, bar);
    var label = el("span", { text: "" }, bar);
    var wireLabel = el("label", {}, bar);
    var wire = el("input", { type: "checkbox" }, wireLabel);
    wireLabel.appendChild(document.createTextNode(" wireframe"));
    var markLabel = el("label", {}, bar);
    var marks = el("input", { type: "checkbox" }, markLabel);
    markLabel.appendChild(document.createTextNode(" landmarks"));
    wire.checked = params.get("wireframe") === "1";
    marks.checked = params.get("landmarks") === "1" && !!window.MICA_VIEW.landmarks;
    if (!window.MICA_VIEW.landmarks) {
      marks.disabled = true;
      markLabel.title = "no detected landmarks in this folder (landmarks.npz)";
    }
    var playing = false;
    play.onclick = function () {
      playing = !playing;
      play.textContent = playing ? "pause" : "play";
      on.play(playing);
    };
    slider.oninput = function () { on.seek(parseInt(slider.value, 10)); };
    wire.onchange = function () { on.wire(wire.checked); };
    marks.onchange = function () { on.marks(); };
    document.addEventListener("keydown", function (ev) {
      if (ev.key === " ") { ev.preventDefault(); play.onclick(); }
      if (ev.key === "ArrowRight") on.seek(Math.min(n - 1, current() + 1));
      if (ev.key === "ArrowLeft") on.seek(Math.max(0, current() - 1));
    });
    return {
      marks: function () { return marks.checked; },
      update: function (k) { slider.value = String(k); label.textContent = "frame " + k + " / " + (n - 1); }
    };
  }

  var markCache = null;
  function drawMarks(canvas, lm, frame, size, on) {
    var ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!on || !lm) return;
    if (!markCache) markCache = new Int16Array(bytesOf(lm.data));
    var s = canvas.width / size[0], p = lm.points, base = frame * p * 2;
    ctx.fillStyle = "#7CFC00";
    for (var i = 0; i < p; i++) {
      var x = markCache[base + 2 * i], y = markCache[base + 2 * i + 1];
      if (x === -32768) continue;
      // quarter pixels with pixel centres at integers (OpenCV) -> canvas pixels
      ctx.fillRect((x / 4 + 0.5) * s - 1, (y / 4 + 0.5) * s - 1, 2, 2);
    }
  }

  // ---------------------------------------------------------------- demo folder
  function demoMode(data) {
    window.MICA_MESH = window.MICA_MESH || {};
    app.className = "demo";
    var list = el("div", { class: "list" }, app);
    var panel = el("div", { class: "panel" }, app);
    var title = el("div", { text: "" }, panel);
    var canvas = el("canvas", { width: "560", height: "560" }, panel);
    var renderer = new THREE.WebGLRenderer({ canvas: canvas, antialias: true });
    renderer.setPixelRatio(window.devicePixelRatio || 1);
    renderer.setSize(560, 560, false);
    var scene = new THREE.Scene();
    scene.background = new THREE.Color(0x2a2b30);
    scene.add(new THREE.HemisphereLight(0xffffff, 0x303030, 1.5));
    var camera = new THREE.PerspectiveCamera(30, 1, 0.01, 10);
    var light = new THREE.DirectionalLight(0xffffff, 1.5);
    light.position.set(0, 0, 1);
    camera.add(light);
    scene.add(camera);
    var controls = new THREE.OrbitControls(camera, canvas);
    controls.addEventListener("change", function () { renderer.render(scene, camera); });
    var shown = null, rows = [];
    if (!data.items.length) el("div", { text: "no meshes in this folder" }, list);
    data.items.forEach(function (item, i) {
      var row = el("div", { class: "row" }, list);
      if (item.crop) el("img", { src: item.crop, alt: item.name, loading: "lazy" }, row);
      var t = el("table", {}, row);
      var tr = el("tr", {}, t);
      el("td", { text: "name" }, tr);
      el("td", { text: item.name }, tr);
      Object.keys(item.summary).forEach(function (k) {
        var r = el("tr", {}, t);
        el("td", { text: k }, r);
        el("td", { text: item.summary[k] }, r);
      });
      row.onclick = function () { select(i); };
      rows.push(row);
    });

    function select(i) {
      var item = data.items[i];
      rows.forEach(function (r, j) { r.className = j === i ? "row sel" : "row"; });
      title.textContent = item.name + " (drag to orbit, wheel to zoom)";
      if (window.MICA_MESH[item.name]) return display(item);
      var s = document.createElement("script");
      s.src = item.script;
      s.onload = function () { display(item); };
      s.onerror = function () { console.error("cannot load " + item.script); };
      document.body.appendChild(s);
    }

    function display(item) {
      parseGlb(window.MICA_MESH[item.name], function (gltf) {
        if (shown) scene.remove(shown);
        shown = gltf.scene;
        var mesh = meshOf(shown);
        mesh.material = new THREE.MeshStandardMaterial({ color: 0xd9c2b0, roughness: 0.6, flatShading: true });
        scene.add(shown);
        var box = new THREE.Box3().setFromObject(shown);
        var c = box.getCenter(new THREE.Vector3()), r = box.getSize(new THREE.Vector3()).length();
        controls.target.copy(c);
        camera.position.set(c.x, c.y, c.z + 2.2 * r);
        camera.near = r / 100;
        camera.far = r * 100;
        camera.updateProjectionMatrix();
        controls.update();
        renderer.render(scene, camera);
      });
    }
    if (data.items.length) select(0);
  }

  // for other scripts (e.g. a live mode): clipMode(data) with data.glb base64 or an ArrayBuffer
  window.MICA_VIEWER = { clipMode: clipMode, demoMode: demoMode, hasWebGL2: hasWebGL2 };
  var data = window.MICA_VIEW;
  if (!hasWebGL2() || !window.THREE) {
    document.getElementById("nowebgl").style.display = "block";
    document.title = "no WebGL";
    return;
  }
  if (!data) {
    console.error("data.js is missing: run python -m micalib.viewer on the folder again");
    return;
  }
  if (data.mode === "clip") clipMode(data);
  else if (data.mode === "demo") demoMode(data);
})();
