"""Mutation testing of the methods' core modules with mutmut; writes ``benchmarks/results/mutation.json``.

    python benchmarks/mutation.py [--modules influence/objective.py ...] [--max-children 1]

One mutmut run per module, in its own scratch folder ``build/mutation/<module>/`` (a copy of ``src/`` and
``tests/`` plus a generated ``pyproject.toml`` holding mutmut's settings), so each module's mutants are run against
only the fast test files that exercise it (``MODULES`` below). mutmut keeps its results there and resumes an
interrupted run. Then, per module: mutants, killed (a test failed or the mutant timed out), survived (the tests pass,
or no selected test reaches the code), equivalent (survivors explained in ``benchmarks/mutation_equivalent.toml``,
keyed by mutmut's mutant name, each with the reason the mutant cannot change behaviour), and
score = killed / (mutants - equivalent). Every unexplained survivor is listed with its diff. The result file is
merged per module (modules not run this time keep their last result, with the commit it was measured at) and written
atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "mutation.json"
EQUIVALENT = ROOT / "benchmarks" / "mutation_equivalent.toml"
SCRATCH = ROOT / "build" / "mutation"
TARGET = 0.85

# module (under src/mmlens) -> the fast tests that exercise it (pytest node ids or files; tests parametrised over
# every tiny architecture are run on two of them to keep one mutant's run short)
MODULES: dict[str, list[str]] = {
    "influence/objective.py": [
        "tests/test_influence_claims.py::test_negative_forms_equal_their_definitions_by_loops",
        "tests/test_influence_claims.py::test_sigmoid_terms_equal_their_definitions_by_loops",
        "tests/test_influence_claims.py::test_similarity_and_max_negative_probability_by_hand",
        "tests/test_influence_claims.py::test_removal_masks_delete_exactly_the_chosen_roles",
        "tests/test_influence_claims.py::test_a_stack_of_batches_is_the_sum_of_its_batches",
        "tests/test_influence.py::test_neg_prob_is_the_zeta_derivative",
        "tests/test_influence.py::test_pos_plus_neg_exact_is_the_batch_loss_difference",
        "tests/test_influence.py::test_reciprocal_is_not_a_rescaling_of_prob",
    ],
    "shift/divergence.py": [
        "tests/test_shift_claims.py",
        "tests/test_shift.py::test_rjsd_zero_symmetric_bounded_monotone",
        "tests/test_shift.py::test_rjsd_same_distribution_is_within_permutation_null_and_shift_is_not",
        "tests/test_shift.py::test_rjsd_input_errors",
    ],
    "align/masking.py": [
        "tests/test_align_claims.py::test_masked_continuations_ignore_the_image_and_unmasked_ones_do_not",
        "tests/test_align_claims.py::test_hidden_token_draws_follow_eq_6_and_share_groups_across_calls",
        "tests/test_align_claims.py::test_masking_only_the_chosen_layers_and_clear_errors",
        "tests/test_align_claims.py::test_the_layer_mask_hides_exactly_the_hidden_keys_from_every_other_query",
        "tests/test_align.py::test_blocking_nothing_reproduces_the_unmasked_model_exactly[llava]",
        "tests/test_align.py::test_blocking_nothing_reproduces_the_unmasked_model_exactly[qwen2-vl]",
        "tests/test_align.py::test_blocking_every_image_token_makes_text_blind_to_the_image[llava]",
        "tests/test_align.py::test_blocking_every_image_token_makes_text_blind_to_the_image[qwen2-vl]",
        "tests/test_align.py::test_masked_logits_equal_the_decoder_without_the_hidden_tokens",
        "tests/test_align.py::test_blocking_works_when_sdpa_gets_no_mask",
        "tests/test_align.py::test_mask_keeps_native_positions",
        "tests/test_align.py::test_draw_hidden_tokens_shares_one_mask_per_group_and_counts_visible",
    ],
    "steer/vectors.py": [
        "tests/test_steer_claims.py",
        "tests/test_steer.py::test_coarse_concept_shift_and_control_vectors",
        "tests/test_steer.py::test_vectors_round_trip_through_safetensors_with_metadata",
        "tests/test_steer.py::test_concept_vectors_from_a_saved_concepts_dictionary",
    ],
    "steer/apply.py": [
        "tests/test_steer_claims.py",
        "tests/test_steer.py::test_alpha_zero_is_plain_generation_and_steering_changes_logits[llava]",
        "tests/test_steer.py::test_alpha_zero_is_plain_generation_and_steering_changes_logits[llama]",
        "tests/test_steer.py::test_batched_equals_unbatched_and_cached_equals_uncached[llava]",
        "tests/test_steer.py::test_batched_equals_unbatched_and_cached_equals_uncached[llama]",
        "tests/test_steer.py::test_position_rules_hit_the_right_positions_across_decoding_steps[llava]",
        "tests/test_steer.py::test_position_rules_hit_the_right_positions_across_decoding_steps[llama]",
        "tests/test_steer.py::test_hook_adds_alpha_times_vector_exactly_where_the_rule_says",
        "tests/test_steer.py::test_uncached_generation_tracks_positions_of_generated_tokens",
        "tests/test_steer.py::test_generated_only_never_changes_the_first_answer_token",
        "tests/test_steer.py::test_hooks_are_removed_on_error_and_vectors_on_one_layer_add_up",
        "tests/test_steer.py::test_steering_errors_are_clear",
        "tests/test_steer.py::test_logit_bias_adds_the_unembedded_vector_to_every_logit",
        "tests/test_steer.py::test_source_concept_condition_steers_only_the_samples_nearest_the_source[llava]",
        "tests/test_steer.py::test_source_concept_condition_steers_only_the_samples_nearest_the_source[llama]",
    ],
    "concepts/compare.py": [
        "tests/test_concepts_claims.py",
        "tests/test_concepts.py::test_kmeans_shifted_concept_is_the_mean_of_b_over_the_cluster",
        "tests/test_concepts.py::test_matching_recovers_a_permutation",
        "tests/test_concepts.py::test_per_concept_shifts_beat_the_baselines_when_shifts_differ",
        "tests/test_concepts.py::test_one_global_shift_gives_no_per_concept_advantage",
        "tests/test_concepts.py::test_shift_statistics_and_input_errors",
        "tests/test_concepts.py::test_drift_falls_as_features_move",
    ],
    "align/train.py": [
        "tests/test_align_claims.py::test_dpo_raises_the_chosen_over_rejected_log_ratio",
        "tests/test_align_claims.py::test_online_dpo_trains_the_judges_preferred_sample_as_chosen",
        "tests/test_align.py::test_trl_dpo_trains_the_tiny_model",
        "tests/test_align.py::test_length_bias_remedies_reach_trl",
        "tests/test_align.py::test_online_and_mixed_dpo_through_trl",
        "tests/test_align.py::test_mixed_dpo_takes_the_offline_pair_of_the_drawn_example",
        "tests/test_align.py::test_online_bdhs_regenerates_rejects",
    ],
    "align/bdhs.py": [
        "tests/test_align_claims.py::test_bdhs_rejects_ignore_the_image_when_every_image_token_is_hidden",
        "tests/test_align_claims.py::test_masked_continuations_ignore_the_image_and_unmasked_ones_do_not",
        "tests/test_align.py::test_sentences_yes_no_and_stops",
        "tests/test_align.py::test_bdhs_runs_on_every_architecture",
        "tests/test_align.py::test_continuation_batch_appends_the_partial_answer",
        "tests/test_align.py::test_bdhs_with_the_full_image_visible_and_no_flip_copies_then_retries",
        "tests/test_align.py::test_bdhs_input_errors",
    ],
    "shift/estimators.py": [f"tests/test_shift.py::test_{name}" for name in (
        "club_with_true_conditional_equals_closed_form_and_exceeds_mi", "trained_club_is_above_true_mi_and_increasing",
        "infonce_and_nwj_recover_gaussian_mi", "estimator_save_load_round_trip", "estimator_input_errors",
        "fit_leaves_the_global_rng_alone", "training_is_seeded", "emi_decreases_with_response_noise",
        "frozen_club_is_blind_to_additive_response_noise_but_infonce_is_not")],
    "influence/analyzer.py": [
        "tests/test_influence_claims.py::test_self_and_relative_influence_against_a_dense_hessian",
        "tests/test_influence_claims.py::test_exported_edited_model_carries_the_edited_parameters",
        "tests/test_influence.py::test_fit_converges_and_records_its_partition",
        "tests/test_influence.py::test_closed_form_removal_matches_retraining_on_a_convex_head",
        "tests/test_influence.py::test_trace_and_self_influence",
    ],
}

# mutmut exit codes -> verdict (mutmut.stats.status_by_exit_code); a timeout or crash is a detected mutant
KILLED_STATUSES = {"killed", "timeout", "segfault", "caught by type check"}


def _slug(module: str) -> str:
    return module.replace("/", "__").removesuffix(".py")


def _mutmut_settings(module: str) -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pytest_opts = project.get("tool", {}).get("pytest", {}).get("ini_options", {})
    lines = ["[tool.mutmut]", 'source_paths = ["src"]', f'only_mutate = ["src/mmlens/{module}"]',
             f"pytest_add_cli_args_test_selection = {json.dumps(MODULES[module])}",
             'pytest_add_cli_args = ["-p", "no:cacheprovider"]',
             'process_isolation = "forkserver"', "use_git_change_detection = false", "",
             "[tool.pytest.ini_options]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in pytest_opts.items()]
    return "\n".join(lines) + "\n"


def _prepare(module: str) -> Path:
    work = SCRATCH / _slug(module)
    work.mkdir(parents=True, exist_ok=True)
    for name in ("src", "tests"):
        # fresh copies (a renamed or deleted test file must not linger); mutmut keeps its results in mutants/ and
        # re-tests only functions whose source changed since its last run
        shutil.rmtree(work / name, ignore_errors=True)
        shutil.copytree(ROOT / name, work / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache"))
    (work / "pyproject.toml").write_text(_mutmut_settings(module))
    meta = work / "mutants" / "src" / "mmlens" / f"{module}.meta"
    if meta.is_file():  # a rerun re-checks every mutant that was not killed, against the current tests
        data = json.loads(meta.read_text())
        status_of = _status_by_exit_code()
        data["exit_code_by_key"] = {k: (v if status_of[v] in KILLED_STATUSES else None)
                                    for k, v in data["exit_code_by_key"].items()}
        meta.write_text(json.dumps(data))
    return work


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    # the mutated copy must be the one imported: drop any path to a project's src/ (mutmut adds mutants/src)
    keep = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and not p.rstrip("/").endswith("/src")]
    env["PYTHONPATH"] = os.pathsep.join(keep)
    return env


def _status_by_exit_code() -> dict:
    from mutmut.stats import status_by_exit_code

    return status_by_exit_code


def _diff(work: Path, name: str) -> list[str]:
    proc = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=work, env=_env(), capture_output=True,
                          text=True)
    return [line for line in proc.stdout.splitlines()
            if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))]


def run_module(module: str, max_children: int, equivalent: dict[str, str], run: bool = True) -> dict:
    """Run mutmut on ``module`` (or, with ``run=False``, re-read its last results, e.g. after explaining survivors)
    and classify the mutants."""
    work = SCRATCH / _slug(module)
    seconds = None
    if run:
        work = _prepare(module)
        t0 = time.time()
        # mutmut's progress goes to the log as it runs (poll it with `tail`)
        with open(work / "mutmut-run.log", "w") as log:
            proc = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children)],
                                  cwd=work, env=_env(), stdout=log, stderr=subprocess.STDOUT, text=True)
        seconds = round(time.time() - t0, 1)
        returncode = proc.returncode
    else:
        returncode = "not run"
    meta = work / "mutants" / "src" / "mmlens" / f"{module}.meta"
    if not meta.is_file():
        raise SystemExit(f"mutmut produced no results for {module} (exit {returncode}); see "
                         f"{work / 'mutmut-run.log'}")
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    status_of = _status_by_exit_code()
    statuses = {name: status_of[code] for name, code in codes.items()}
    unchecked = sorted(n for n, s in statuses.items() if s == "not checked")
    if unchecked:
        raise SystemExit(f"{module}: {len(unchecked)} mutants were not checked (exit {returncode}); see "
                         f"{work / 'mutmut-run.log'}")
    killed = sorted(n for n, s in statuses.items() if s in KILLED_STATUSES)
    alive = sorted(n for n, s in statuses.items() if s not in KILLED_STATUSES)
    explained = {n: equivalent[n] for n in alive if n in equivalent}
    survivors = {n: {"status": statuses[n], "diff": _diff(work, n)} for n in alive if n not in explained}
    mutants = len(statuses)
    denominator = mutants - len(explained)
    return {"mutants": mutants, "killed": len(killed), "survived": len(alive), "equivalent": len(explained),
            "score": round(len(killed) / denominator, 4) if denominator else None,
            "meets_target": bool(denominator) and len(killed) / denominator >= TARGET,
            "timeouts": sum(statuses[n] == "timeout" for n in killed),
            "tests": MODULES[module], "seconds": seconds,
            "equivalent_mutants": explained, "unexplained_survivors": survivors}


def _commit() -> str:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "src", "tests"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return head + ("+uncommitted" if dirty else "")


def _total(modules: dict[str, dict]) -> dict:
    mutants = sum(m["mutants"] for m in modules.values())
    killed = sum(m["killed"] for m in modules.values())
    equivalent = sum(m["equivalent"] for m in modules.values())
    return {"mutants": mutants, "killed": killed, "survived": sum(m["survived"] for m in modules.values()),
            "equivalent": equivalent,
            "score": round(killed / (mutants - equivalent), 4) if mutants > equivalent else None,
            "modules_measured": sorted(modules), "modules_not_measured": sorted(set(MODULES) - set(modules))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", nargs="*", default=list(MODULES), help="modules under src/mmlens (default: all)")
    parser.add_argument("--max-children", type=int, default=1, help="mutants run in parallel (the cores are shared)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--no-run", action="store_true",
                        help="do not run mutmut: re-read the last results in build/mutation/ (after editing the "
                             "equivalent-mutant list); the measurement's commit and time are kept")
    args = parser.parse_args()
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        raise SystemExit(f"unknown module(s) {unknown}; choose from {sorted(MODULES)}")
    equivalent = tomllib.loads(EQUIVALENT.read_text()) if EQUIVALENT.is_file() else {}
    for module in args.modules:
        print(f"mutating src/mmlens/{module} ...", flush=True)
        commit = _commit()  # the source and tests copied for this run
        result = run_module(module, args.max_children, equivalent.get(module, {}), run=not args.no_run)
        # re-read the file now: another module's run may have written it meanwhile
        previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
        modules = {m: r for m, r in previous.items() if m in MODULES}
        if args.no_run and module in modules:
            result |= {k: modules[module][k] for k in ("commit", "written", "seconds") if k in modules[module]}
        else:
            result |= {"commit": commit, "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        modules[module] = result
        print(f"  {result['mutants']} mutants, {result['killed']} killed, {result['equivalent']} equivalent, "
              f"{len(result['unexplained_survivors'])} unexplained survivors: score {result['score']}", flush=True)
        # the layout: {module: {mutants, killed, survived, equivalent, score, ...}} and total
        payload = {"command": "make mutation  (= python benchmarks/mutation.py)", "tool": _tool_version(),
                   "target": TARGET, **dict(sorted(modules.items())), "total": _total(modules)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        tmp.replace(args.out)
    return 0


def _tool_version() -> str:
    from importlib.metadata import version

    return f"mutmut {version('mutmut')}"


if __name__ == "__main__":
    sys.exit(main())
