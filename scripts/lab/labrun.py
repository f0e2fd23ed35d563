"""Running the VFIO lab from a benchmark script and reading back its serial log."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def run_lab(name, lab_args, env=None):
    """Runs scripts/vfio-lab with LAB_ARGS; returns L1's serial log text, or exits
    with the lab's report when it failed. NAME prefixes messages."""
    lab = subprocess.run(
        [str(REPO / "scripts" / "vfio-lab"), *lab_args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    sys.stderr.write(lab.stderr)
    if lab.returncode != 0:
        sys.exit(f"{name}: the lab failed (status {lab.returncode}):\n{lab.stdout}")
    found = [line.split("log: ", 1)[1].strip() for line in lab.stderr.splitlines()
             if "log: " in line and line.rstrip().endswith(".log")]
    if not found:
        sys.exit(f"{name}: the lab did not say where its serial log is")
    return Path(found[-1]).read_text(errors="replace").replace("\r", "")
