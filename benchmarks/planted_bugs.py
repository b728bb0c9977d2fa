"""Plant each of issue 21's four plausible bugs (and issue 20's absolute fit threshold) in a temporary copy of ``src/`` and check a named test kills it.

    python benchmarks/planted_bugs.py [--out benchmarks/results/planted_bugs.json]

For every bug: copy ``src/`` to a temporary folder, apply one textual patch (it must match exactly once, so a
refactor that moves the code makes this script fail loudly instead of passing vacuously), run the named tests against
the copy (``PYTHONPATH=<copy>/src``) and record whether they failed. The working tree is never modified. The result
file is written atomically; the exit code is 1 if any bug survives.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (name, file under src/mmlens, old text, new text, tests that must fail)
BUGS = [
    ("bdhs_mask_not_applied", "align/bdhs.py",
     "block_image_tokens(vlm.decoder_layers, hidden.to(vlm.device), layers=mask_layers)",
     "block_image_tokens(vlm.decoder_layers, torch.zeros_like(hidden).to(vlm.device), layers=mask_layers)",
     ["tests/test_align_claims.py::test_bdhs_rejects_ignore_the_image_when_every_image_token_is_hidden",
      "tests/test_align_claims.py::test_masked_continuations_ignore_the_image_and_unmasked_ones_do_not"]),
    ("dpo_chosen_rejected_swapped", "align/data.py",
     '"chosen": [{"role": "assistant", "content": pair.chosen}],\n'
     '        "rejected": [{"role": "assistant", "content": pair.rejected if rejected is None else rejected}],',
     '"chosen": [{"role": "assistant", "content": pair.rejected if rejected is None else rejected}],\n'
     '        "rejected": [{"role": "assistant", "content": pair.chosen}],',
     ["tests/test_align_claims.py::test_dpo_raises_the_chosen_over_rejected_log_ratio"]),
    ("rjsd_entropies_weighted_by_sample_size", "shift/divergence.py",
     "return s_mix - 0.5 * (s_a + s_b)",
     "return s_mix - (len(a) * s_a + len(b) * s_b) / (len(a) + len(b))",
     ["tests/test_shift_claims.py::test_rjsd_equals_a_direct_eigenvalue_computation_for_unequal_sizes"]),
    ("reciprocal_axes_swapped", "influence/objective.py",
     "neg_recip = ((-log_p).exp() * off).sum(0) + ((-log_q).exp() * off).sum(1)",
     "neg_recip = ((-log_p).exp() * off).sum(1) + ((-log_q).exp() * off).sum(0)",
     ["tests/test_influence_claims.py::test_negative_forms_equal_their_definitions_by_loops"]),
    ("fit_threshold_absolute", "influence/analyzer.py",
     "scale = 1.0 / max(1, n_pairs)",
     "scale = 1.0",
     ["tests/test_influence.py::test_fit_evaluations_do_not_grow_with_the_number_of_pairs"]),
]


def run_bug(name: str, rel: str, old: str, new: str, tests: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"mmlens-bug-{name}-") as tmp:
        shutil.copytree(ROOT / "src", Path(tmp) / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        target = Path(tmp) / "src" / "mmlens" / rel
        text = target.read_text()
        if text.count(old) != 1:
            raise SystemExit(f"planted bug {name}: the patch matches {text.count(old)} times in {rel}; update it")
        target.write_text(text.replace(old, new))
        env = dict(os.environ, PYTHONPATH=str(Path(tmp) / "src"), OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1")
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        failed = [line.split(" ")[1] for line in proc.stdout.splitlines() if line.startswith("FAILED ")]
        return {"file": f"src/mmlens/{rel}", "tests": tests, "killed": proc.returncode == 1 and bool(failed),
                "failed_tests": failed, "pytest_exit_code": proc.returncode, "seconds": round(time.time() - t0, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "planted_bugs.json"))
    args = parser.parse_args()
    results = {name: run_bug(name, rel, old, new, tests) for name, rel, old, new, tests in BUGS}
    for name, r in results.items():
        print(f"{name}: {'killed by ' + ', '.join(r['failed_tests']) if r['killed'] else 'SURVIVED'}")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"command": "python benchmarks/planted_bugs.py", "commit": commit,
               "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "bugs": results}
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(out)
    return 0 if all(r["killed"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
