"""Load time and peak memory: pipeserve against the reference (`transformers`) on the same files.

Each measurement runs in a fresh Python process, so peak RSS is that load's alone (imports are
reported separately). Run from the repository root:

    .venv/bin/python bench/load.py [--model PATH] [--repeat 3]

The default model is the real SmolLM2-135M-Instruct Q4_1 GGUF (see tests/assets.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

# Each snippet prints one JSON line: seconds to load, RSS after imports, peak RSS (MiB).
_PROBE = """
import json, resource, sys, time
from pathlib import Path
def rss(): return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
import torch
{imports}
path = Path(sys.argv[1]); base = rss(); start = time.perf_counter()
{load}
elapsed = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"seconds": elapsed, "imports_mib": base, "peak_mib": peak}}))
"""

LOADERS = {
    "pipeserve": (
        "from pipeserve import load_model",
        "load_model(path, device='cpu', dtype='float32')",
    ),
    "transformers": (
        "import transformers",
        "transformers.AutoModelForCausalLM.from_pretrained("
        "path.parent if path.suffix == '.gguf' else path, "
        "gguf_file=path.name if path.suffix == '.gguf' else None, dtype=torch.float32)",
    ),
}


def measure(name: str, model: Path) -> dict[str, float]:
    imports, load = LOADERS[name]
    code = _PROBE.format(imports=imports, load=load)
    out = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.model is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.assets import smollm2_gguf

        args.model = smollm2_gguf()

    rows = {}
    for name in LOADERS:
        runs = [measure(name, args.model) for _ in range(args.repeat)]
        rows[name] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}

    print(f"model: {args.model}  (median of {args.repeat} fresh processes)")
    print(f"{'loader':<14}{'load s':>9}{'peak MiB':>10}{'imports MiB':>13}{'load MiB':>10}")
    for name, row in rows.items():
        print(
            f"{name:<14}{row['seconds']:>9.2f}{row['peak_mib']:>10.0f}{row['imports_mib']:>13.0f}"
            f"{row['peak_mib'] - row['imports_mib']:>10.0f}"
        )
    ours, ref = rows["pipeserve"], rows["transformers"]
    print(f"load time ratio (transformers / pipeserve): {ref['seconds'] / ours['seconds']:.2f}x")


if __name__ == "__main__":
    main()
