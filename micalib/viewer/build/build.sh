#!/usr/bin/env bash
# Rebuilds micalib/viewer/static/three.bundle.js: three.js (npm, MIT) + GLTFLoader + OrbitControls as
# one classic script (window.THREE), because a page opened from file:// cannot import ES modules.
# Needs node + npm; only for maintainers (the bundle is committed). Usage: bash micalib/viewer/build/build.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
npm ci --no-audit --no-fund
npx esbuild entry.js --bundle --format=iife --minify --legal-comments=none --target=es2020 \
  --banner:js="/* three.js $(node -p 'require("three/package.json").version') (MIT licence: THREE_LICENSE.txt) + GLTFLoader + OrbitControls, bundled by micalib/viewer/build/build.sh */" \
  --outfile=../static/three.bundle.js
cp node_modules/three/LICENSE ../static/THREE_LICENSE.txt
