"""scripts/long_functions.py: the developers' guide's function-length limits hold for the product code,
and the scan finds a long function (an oracle written here, not by the scanner)."""
from __future__ import annotations

import subprocess
import sys

from configs.config import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "long_functions.py"


def test_no_product_function_over_its_limit():
    res = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout == ""


def test_a_long_function_is_found_with_its_limit(tmp_path):
    (tmp_path / "micalib" / "tracking").mkdir(parents=True)
    (tmp_path / "tests").mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(80))  # def line + 80 = 81 lines
    (tmp_path / "micalib" / "tracking" / "a.py").write_text("class A:\n    def long(self):\n" +
                                                           body.replace("    x", "        x"))
    (tmp_path / "utils.py").write_text("def ok():\n" + body)  # 81 lines: under the general 100
    (tmp_path / "tests" / "t.py").write_text("def test_x():\n" + body * 2)  # tests are not product code
    res = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stdout.splitlines() == ["micalib/tracking/a.py:2 A.long 81 lines (limit 80)"]
