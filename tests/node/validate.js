// Validate a .glb with the Khronos glTF validator; prints its JSON report (tests/test_gltf.py reads it).
const fs = require("fs");
const validator = require("gltf-validator");
const data = new Uint8Array(fs.readFileSync(process.argv[2]));
validator.validateBytes(data, { maxIssues: 100 }).then(
  (report) => { process.stdout.write(JSON.stringify(report)); },
  (err) => { console.error(err); process.exit(1); });
