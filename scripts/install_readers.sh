#!/usr/bin/env bash
# Installs the programs the tests use as independent readers of our files, beside install.sh:
#   - blender + python3-numpy: tests/test_gltf_blender.py imports NAME.glb with Blender's glTF importer;
#   - chromium: tests/test_viewer_page.py opens the viewer page headless (WebGL through SwiftShader);
#   - nodejs + npm, then `npm ci` in tests/node: the Khronos glTF validator (tests/test_gltf.py).
# Debian / Ubuntu, as root (or with sudo). Each test skips when its program is absent.
#   sudo bash scripts/install_readers.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SUDO=""
if [[ "$(id -u)" != 0 ]]; then SUDO="sudo"; fi
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends blender python3-numpy chromium nodejs npm
(cd tests/node && npm ci --no-audit --no-fund)
