"""Benchmark result files: read and validate, write JSON/CSV, Markdown tables, compare, merge.

A result document (schema_version 1) is what `benchmark_models` returns and
`onnxship bench --json` writes. `compare(a, b)` pairs rows by (model name, batch size, provider,
io mode) and reports B/A ratios, calling a difference noise when it is no larger than the
spread of the measurements (the larger interquartile range of the two). `merge(docs)` makes
one table across machines, each row labelled with the machine it was measured on.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from onnxship.core.artifact import atomic_write_json, atomic_write_text, utc_now
from onnxship.core.env import fingerprint_diff
from onnxship.runtime_bench.errors import BenchError
from onnxship.runtime_bench.providers import short_name

SCHEMA_VERSION = 1
TOOLS = ("onnxship bench", "onnxship bench merge")
REQUIRED_ROW_KEYS = (
    "model", "model_name", "model_sha256", "provider", "provider_options", "batch_size",
    "threads", "spinning", "warmup", "iterations", "session_create_ms", "first_run_ms",
    "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "throughput_per_s",
    "nodes_per_provider",
)  # fmt: skip
CSV_COLUMNS = (
    "model_name", "provider", "io", "batch_size", "threads", "spinning", "warmup", "iterations",
    "session_create_ms", "first_run_ms", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms",
    "min_ms", "max_ms", "p25_ms", "p75_ms", "throughput_per_s", "threads_exceed_cores",
    "nodes_per_provider", "provider_options", "model", "model_sha256",
    "p50_ci_ms", "p90_ci_ms", "p99_ci_ms", "n", "ci_level",
)  # fmt: skip
MACHINE_COLUMNS = (
    "machine",
    "hostname",
    "cpu",
    "isa",
    "usable_cores",
    "onnxruntime",
    "os",
    "source",
)
# Fewer timed runs than this on either side: the comparison says so instead of judging.
MIN_COMPARE_ITERATIONS = 5
# Differences below this fraction of A's p50 are called noise whatever the IQRs say.
DEFAULT_NOISE_FLOOR = 0.05


# --------------------------------------------------------------------------------------------
# Reading and validating


def validate_result(doc: Any, *, source: str = "result") -> dict[str, Any]:
    """Check a result document's shape; BenchError (exit 2) naming what is wrong."""
    if not isinstance(doc, dict):
        raise BenchError(f"{source} is not a bench result: expected a JSON object")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BenchError(
            f"{source}: schema_version {version!r}, expected {SCHEMA_VERSION}; is it a file "
            "written by `onnxship bench --json`? (rerun it with this onnxship to convert)"
        )
    if doc.get("tool") not in TOOLS:
        raise BenchError(
            f"{source}: tool {doc.get('tool')!r}, expected one of {list(TOOLS)}; pass a file "
            "written by `onnxship bench --json`"
        )
    rows = doc.get("results")
    if not isinstance(rows, list):
        raise BenchError(f"{source}: 'results' is missing or not a list")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise BenchError(f"{source}: results[{i}] is not an object")
        missing = [k for k in REQUIRED_ROW_KEYS if k not in row]
        if missing:
            raise BenchError(f"{source}: results[{i}] lacks keys {missing}")
    if not isinstance(doc.get("environment"), dict):
        raise BenchError(f"{source}: 'environment' is missing or not an object")
    return doc


def load_result(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise BenchError(f"bench result {p} does not exist; write one with `onnxship bench --json`")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BenchError(
            f"{p} is not JSON ({exc}); pass a file from `onnxship bench --json`"
        ) from None
    return validate_result(doc, source=str(p))


# --------------------------------------------------------------------------------------------
# Writing


def write_json(doc: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    return atomic_write_json(path, doc)


def _cell(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    if value is None:
        return ""
    return value


def rows_to_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return buf.getvalue()


def write_csv(doc: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """One line per result row; a merged document adds the machine columns first."""
    rows = doc["results"]
    merged = doc.get("tool") == "onnxship bench merge"
    columns = (MACHINE_COLUMNS if merged else ()) + CSV_COLUMNS
    return atomic_write_text(path, rows_to_csv(rows, columns))


def _ms(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{float(value):.4g}"


def _rate(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{float(value):,.0f}"


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


# The first columns of every table of result rows: what names a row.
ROW_COLUMNS = ("model", "EP", "io", "batch")


def markdown_table(doc: Mapping[str, Any]) -> str:
    """The result rows as a Markdown table (the stdout of `onnxship bench`)."""
    header = [
        *ROW_COLUMNS, "threads", "create ms", "first ms", "p50 ms", "p50 CI ms",
        "p90 ms", "p99 ms", "mean ms", "std ms", "min ms", "samples/s", "runs",
    ]  # fmt: skip
    lines = []
    for r in doc["results"]:
        lines.append(
            [
                str(r["model_name"]), short_name(str(r["provider"])), str(r.get("io", "host")),
                str(r["batch_size"]),
                f"{r['threads']}{'!' if r.get('threads_exceed_cores') else ''}",
                _ms(r["session_create_ms"]), _ms(r["first_run_ms"]), _ms(r["p50_ms"]),
                _ci_cell(r.get("p50_ci_ms")),
                _ms(r["p90_ms"]), _ms(r["p99_ms"]), _ms(r["mean_ms"]), _ms(r["std_ms"]),
                _ms(r["min_ms"]), _rate(r["throughput_per_s"]), str(r["iterations"]),
            ]
        )  # fmt: skip
    env = doc.get("environment", {})
    note = (
        f"\n\n{env.get('cpu', '?')}, {env.get('usable_cores', '?')} cores, "
        f"onnxruntime {env.get('onnxruntime', '?')}, ISA {' '.join(env.get('isa', []) or ['?'])}"
    )
    if any(r.get("threads_exceed_cores") for r in doc["results"]):
        note += "\n`!` threads exceed the usable cores: those numbers time-share cores."
    for skip in doc.get("skipped_measurements", []):
        note += f"\nnot measured: {skip['model']} {skip['io']}: {skip['reason']}"
    if any(r.get("p99_why") or r.get("p90_why") for r in doc["results"]):
        note += (
            "\np90 / p99 `-`: fewer timed runs than a percentile needs (MLPerf LoadGen: 64 for "
            "a p90, 662 for a p99); raise --iterations (or the time budget)."
        )
    return _table(header, lines) + note + ratios_markdown(doc)


def _ci_cell(ci: Any) -> str:
    if not ci:
        return "-"
    return f"{_ms(ci[0])}–{_ms(ci[1])}"


def ratios_markdown(doc: Mapping[str, Any]) -> str:
    """The document's speed-ups over its reference with their paired bootstrap CIs (interleaved
    runs with a reference), as a Markdown table; empty when there are none."""
    ratios = doc.get("ratios") or []
    if not ratios:
        return ""
    header = ["model", "vs", "EP", "batch", "speed-up", "CI", "statistic", "rounds"]
    lines = [
        [str(r["name"]), str(r["reference"]), short_name(str(r.get("provider", ""))),
         str(r.get("batch_size", "")), f"{float(r['ratio']):.3f}x",
         f"{float(r['ci'][0]):.3f}–{float(r['ci'][1]):.3f}x ({round(100 * r['ci_level'])} %)",
         str(r.get("statistic", "")), str(r.get("n_rounds", ""))]
        for r in ratios
    ]  # fmt: skip
    return "\n\n" + _table(header, lines)


# --------------------------------------------------------------------------------------------
# Compare


def row_key(row: Mapping[str, Any]) -> tuple[str, int, str, str]:
    return (
        str(row["model_name"]),
        int(row["batch_size"]),
        str(row["provider"]),
        str(row.get("io", "host")),
    )


def _spread(row: Mapping[str, Any]) -> float:
    """Interquartile range in ms; files without quartiles fall back to p90 - p50."""
    p25, p75 = row.get("p25_ms"), row.get("p75_ms")
    if (
        isinstance(p25, (int, float))
        and isinstance(p75, (int, float))
        and not (math.isnan(p25) or math.isnan(p75))
    ):
        return float(p75) - float(p25)
    return float(row["p90_ms"]) - float(row["p50_ms"])


def _index(
    doc: Mapping[str, Any], source: str
) -> dict[tuple[str, int, str, str], Mapping[str, Any]]:
    index: dict[tuple[str, int, str, str], Mapping[str, Any]] = {}
    for row in doc["results"]:
        key = row_key(row)
        if key in index:
            raise BenchError(
                f"{source} has two rows for model '{key[0]}', batch {key[1]}, {key[2]}, io "
                f"{key[3]} (two models with the same file name?); rename one and rerun"
            )
        index[key] = row
    return index


ENV_KEYS_COMPARED = ("hostname", "cpu", "isa", "usable_cores", "onnxruntime", "os", "python")
# Per-round statistics a row may carry (the timing engine's rounds): the rank test's input.
ROUND_KEYS = ("round_stats_ms", "rounds_ms")
# Fewer rounds than this on either side: no rank test (its normal approximation needs them).
MIN_RANK_TEST_ROUNDS = 8
DEFAULT_ALPHA = 0.05


def mann_whitney_u(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Two-sided Mann-Whitney U test (normal approximation, tie-corrected, continuity
    corrected): (U of `a`, p-value). No assumption on the shape of the latency distribution."""
    import numpy as np

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n1, n2 = len(x), len(y)
    both = np.concatenate([x, y])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(len(both))
    sorted_vals = both[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_vals, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u1 = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2)
    n = n1 + n2
    tie_term = float(np.sum(counts.astype(np.float64) ** 3 - counts)) / (n * (n - 1))
    sigma = math.sqrt(n1 * n2 / 12.0 * ((n + 1) - tie_term))
    if sigma == 0:
        return u1, 1.0
    mean = n1 * n2 / 2.0
    z = (abs(u1 - mean) - 0.5) / sigma
    return u1, float(min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2))))


def _rounds(row: Mapping[str, Any]) -> list[float] | None:
    for key in ROUND_KEYS:
        value = row.get(key)
        if isinstance(value, list) and value:
            return [float(v) for v in value]
    return None


def _ci(row: Mapping[str, Any]) -> tuple[float, float] | None:
    value = row.get("p50_ci_ms")
    if isinstance(value, (list, tuple)) and len(value) == 2 and None not in value:
        return float(value[0]), float(value[1])
    return None


def _significance(ra: Mapping[str, Any], rb: Mapping[str, Any], alpha: float) -> dict[str, Any]:
    """Is B's latency different from A's? A rank test over the rounds when both rows carry
    them; else whether the two p50 CIs are disjoint; else the interquartile-range rule."""
    rounds_a, rounds_b = _rounds(ra), _rounds(rb)
    if rounds_a is not None and rounds_b is not None:
        if min(len(rounds_a), len(rounds_b)) < MIN_RANK_TEST_ROUNDS:
            return {"method": "mann-whitney-u", "significant": None,
                    "why": f"fewer than {MIN_RANK_TEST_ROUNDS} rounds on a side"}  # fmt: skip
        u, p_value = mann_whitney_u(rounds_a, rounds_b)
        return {"method": "mann-whitney-u", "significant": p_value < alpha, "p_value": p_value,
                "u": u, "rounds": [len(rounds_a), len(rounds_b)]}  # fmt: skip
    ci_a, ci_b = _ci(ra), _ci(rb)
    if ci_a is not None and ci_b is not None:
        disjoint = ci_a[1] < ci_b[0] or ci_b[1] < ci_a[0]
        return {"method": "p50-ci-overlap", "significant": disjoint, "ci_a": ci_a, "ci_b": ci_b}
    return {"method": "iqr", "significant": None}


def row_fingerprint(doc: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The machine fingerprint of `doc` completed with the row's EP, threads and spinning."""
    fp = row.get("fingerprint") or doc.get("environment", {}).get("fingerprint")
    if not isinstance(fp, Mapping):
        return None
    out = dict(fp)
    out.update(provider=row.get("provider"), intra_op_threads=row.get("threads"),
               allow_spinning=row.get("spinning"))  # fmt: skip
    return out


def compare(
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    *,
    a_name: str = "A",
    b_name: str = "B",
    noise_floor: float = DEFAULT_NOISE_FLOOR,
    alpha: float = DEFAULT_ALPHA,
) -> dict[str, Any]:
    """Pair rows of `a` and `b`; per pair the B/A ratio of p50 (and of throughput) and a verdict:
    'faster'/'slower' (B relative to A), 'noise', or 'too few runs'.

    Significance, never from two means: a Mann-Whitney U rank test over the rounds (at
    `alpha`) when both rows carry per-round statistics; else disjoint p50 CIs; else (files
    without either) the spread rule: noise when |p50 difference| <= max(IQR of A, IQR of B).
    A significant difference under noise_floor * A's p50 is still called noise: the relative
    floor covers drift between runs (other tenants, frequency), which no single run can see.
    Rows measured under different fingerprints (machine, EP, threads, spinning) are marked."""
    _check_compare_inputs(a, b, a_name, b_name, noise_floor, alpha)
    ia, ib = _index(a, a_name), _index(b, b_name)
    rows = [
        _compared_row(a, b, key, ia[key], ib[key], noise_floor=noise_floor, alpha=alpha)
        for key in [k for k in ia if k in ib]
    ]
    env_a, env_b = a.get("environment", {}), b.get("environment", {})
    env_diff = {
        k: [env_a.get(k), env_b.get(k)] for k in ENV_KEYS_COMPARED if env_a.get(k) != env_b.get(k)
    }
    return {
        "a": a_name,
        "b": b_name,
        "rows": rows,
        "only_in_a": [list(k) for k in ia if k not in ib],
        "only_in_b": [list(k) for k in ib if k not in ia],
        "environment_diff": env_diff,
        "across_fingerprints": any(r["across_fingerprints"] for r in rows),
        "noise_floor": noise_floor,
        "alpha": alpha,
    }


def _check_compare_inputs(
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    a_name: str,
    b_name: str,
    noise_floor: float,
    alpha: float,
) -> None:
    if not 0 <= noise_floor < 1:
        raise BenchError(f"noise floor must be a fraction in [0, 1), got {noise_floor}")
    if not 0 < alpha < 1:
        raise BenchError(f"significance level must be in (0, 1), got {alpha}")
    for doc, name in ((a, a_name), (b, b_name)):
        if doc.get("tool") == "onnxship bench merge":
            raise BenchError(
                f"{name} is a merged table (onnxship bench merge); compare takes two results "
                "of `onnxship bench --json`"
            )


def _compared_row(
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    key: tuple[Any, ...],
    ra: Mapping[str, Any],
    rb: Mapping[str, Any],
    *,
    noise_floor: float,
    alpha: float,
) -> dict[str, Any]:
    """One pair of rows (`key`: model, batch, EP, io): B/A ratios, significance, verdict."""
    pa, pb = float(ra["p50_ms"]), float(rb["p50_ms"])
    sig = _significance(ra, rb, alpha)
    spread = max(_spread(ra), _spread(rb)) if sig["method"] == "iqr" else 0.0
    noise_ms = max(spread, noise_floor * pa)
    delta = pb - pa
    few_rounds = sig["method"] == "mann-whitney-u" and sig["significant"] is None
    if few_rounds or min(int(ra["iterations"]), int(rb["iterations"])) < MIN_COMPARE_ITERATIONS:
        verdict = "too few runs"
    elif sig["significant"] is False or abs(delta) <= noise_ms:
        verdict = "noise"
    else:
        verdict = "faster" if delta < 0 else "slower"
    fp_a, fp_b = row_fingerprint(a, ra), row_fingerprint(b, rb)
    fp_diff = fingerprint_diff(fp_a, fp_b) if fp_a and fp_b else None
    ta, tb = float(ra["throughput_per_s"]), float(rb["throughput_per_s"])
    return {
        "model_name": key[0],
        "batch_size": key[1],
        "provider": key[2],
        "io": key[3],
        "a_p50_ms": pa,
        "b_p50_ms": pb,
        "ratio_p50": pb / pa if pa > 0 else math.inf,
        "ratio_throughput": tb / ta if ta > 0 else math.inf,
        "delta_ms": delta,
        "noise_ms": noise_ms,
        "verdict": verdict,
        "significance": sig,
        "same_model": ra.get("model_sha256") == rb.get("model_sha256"),
        # None: a file without fingerprints (older onnxship); {}: same conditions
        "fingerprint_diff": fp_diff,
        "across_fingerprints": bool(fp_diff),
    }


def compare_markdown(cmp: Mapping[str, Any]) -> str:
    header = [*ROW_COLUMNS, "A p50 ms", "B p50 ms", "B/A p50", "±noise ms", "verdict"]
    lines = [
        [
            r["model_name"] + ("" if r["same_model"] else " (*)")
            + (" (≠)" if r.get("across_fingerprints") else ""),
            short_name(r["provider"]), r["io"], str(r["batch_size"]),
            _ms(r["a_p50_ms"]), _ms(r["b_p50_ms"]), f"{r['ratio_p50']:.3f}",
            _ms(r["noise_ms"]), r["verdict"],
        ]
        for r in cmp["rows"]
    ]  # fmt: skip
    parts = [f"A = {cmp['a']}\nB = {cmp['b']}", _table(header, lines)]
    if any(not r["same_model"] for r in cmp["rows"]):
        parts.append("(*) different model files (sha256) under the same name.")
    crossed = [r for r in cmp["rows"] if r.get("across_fingerprints")]
    if crossed:
        keys = sorted({k for r in crossed for k in r["fingerprint_diff"]})
        parts.append(
            f"(≠) ACROSS FINGERPRINTS: {len(crossed)} row(s) were measured under different "
            f"conditions ({', '.join(keys)}); the ratio mixes the change with the machine."
        )
    methods = sorted({r["significance"]["method"] for r in cmp["rows"] if "significance" in r})
    if methods:
        parts.append(
            f"Significance: {', '.join(methods)} (mann-whitney-u: rank test over the rounds at "
            f"alpha {cmp.get('alpha', DEFAULT_ALPHA):g}; p50-ci-overlap: disjoint CIs; iqr: "
            "files without rounds or CIs)."
        )
    if not cmp["rows"]:
        parts.append("No (model, batch, EP, io) appears in both files.")
    for side in ("a", "b"):
        missing = cmp[f"only_in_{side}"]
        if missing:
            items = ", ".join(f"{m}/b{bs}/{short_name(p)}/{io_}" for m, bs, p, io_ in missing)
            parts.append(f"Only in {side.upper()}: {items}")
    if cmp["environment_diff"]:
        diffs = "; ".join(
            f"{k}: {va!r} vs {vb!r}" for k, (va, vb) in cmp["environment_diff"].items()
        )
        parts.append(f"Measured on different environments: {diffs}")
    parts.append(
        "B/A < 1: B is faster. 'noise': the difference is within the larger interquartile "
        f"range of the two measurements or under {cmp.get('noise_floor', DEFAULT_NOISE_FLOOR):.0%} "
        "of A's p50; rerun both with more --iterations (on a quiet machine) to resolve it."
    )
    return "\n\n".join(parts)


# --------------------------------------------------------------------------------------------
# Merge


def machine_label(env: Mapping[str, Any]) -> str:
    host = env.get("hostname") or "?"
    cpu = env.get("cpu") or "?"
    return f"{host} / {cpu}"


def merge(
    docs: Sequence[Mapping[str, Any]], sources: Sequence[str] | None = None
) -> dict[str, Any]:
    """One document whose rows carry the machine they were measured on (environment columns)."""
    if not docs:
        raise BenchError("nothing to merge; pass at least one bench result file")
    names = list(sources) if sources is not None else [f"#{i}" for i in range(len(docs))]
    labels = [machine_label(d.get("environment", {})) for d in docs]
    # Two files from the same machine stay distinguishable.
    counts = {label: labels.count(label) for label in labels}
    labels = [
        f"{label} [{name}]" if counts[label] > 1 else label
        for label, name in zip(labels, names, strict=True)
    ]
    results: list[dict[str, Any]] = []
    source_meta = []
    for doc, name, label in zip(docs, names, labels, strict=True):
        env = doc.get("environment", {})
        source_meta.append(
            {"source": name, "machine": label, "created": doc.get("created"),
             "environment": env, "config": doc.get("config", {})}
        )  # fmt: skip
        for row in doc["results"]:
            merged = dict(row)
            merged.update(
                {
                    "machine": label,
                    "hostname": env.get("hostname"),
                    "cpu": env.get("cpu"),
                    "isa": " ".join(env.get("isa") or []),
                    "usable_cores": env.get("usable_cores"),
                    "onnxruntime": env.get("onnxruntime"),
                    "os": env.get("os"),
                    "source": name,
                }
            )
            results.append(merged)
    results.sort(key=lambda r: (*row_key(r), str(r["machine"])))
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "onnxship bench merge",
        "created": utc_now(),
        "environment": {"machines": labels},
        "sources": source_meta,
        "results": results,
    }


def merge_markdown(merged: Mapping[str, Any]) -> str:
    header = [
        *ROW_COLUMNS, "machine", "threads", "p50 ms", "p90 ms", "p99 ms", "samples/s", "ORT",
    ]  # fmt: skip
    lines = [
        [
            str(r["model_name"]), short_name(str(r["provider"])), str(r.get("io", "host")),
            str(r["batch_size"]), str(r["machine"]), str(r["threads"]), _ms(r["p50_ms"]),
            _ms(r["p90_ms"]), _ms(r["p99_ms"]), _rate(r["throughput_per_s"]),
            str(r.get("onnxruntime") or "?"),
        ]
        for r in merged["results"]
    ]  # fmt: skip
    isa_lines = [
        f"- {s['machine']}: {' '.join(s['environment'].get('isa') or ['?'])} "
        f"({s['environment'].get('usable_cores', '?')} cores, from {s['source']})"
        for s in merged["sources"]
    ]
    return _table(header, lines) + "\n\nMachines:\n" + "\n".join(isa_lines)
