"""Where the time of `ulixes-onnx cloak` goes, by pipeline stage, from cProfile files.

usage: python -m cProfile -o run.prof -m ulixes_onnx cloak PHOTOS... --output-dir OUT
       python benchmarks/profile_cloak.py run.prof [other.prof ...] [--labels before after]

Several profiles (e.g. of two versions of the code on the same photos) are printed side by side. A
stage's time is the cumulative time of the functions that implement it, so a stage that calls another
includes it (verification includes re-detection).
"""

from __future__ import annotations

import argparse
import pstats

# Stage -> (file suffix, function name) pairs; the first pair found in a profile counts.
STAGES = {
    "whole run": [("cli/cloak.py", "cloak")],
    "read photo": [("photos/decoding.py", "read_photo")],
    "detect faces (all passes)": [("mtcnn.py", "detect")],
    "load landmark model": [("shape_predictor.py", "five_point_predictor")],
    "align chips": [("align.py", "extract_chips")],
    "face canvases": [("canvas.py", "make_canvas")],
    "cloak loop (onnxruntime + NumPy)": [("cloaking/polish.py", "cloak_canvases")],
    "DSSIM": [("cloaking/dssim.py", "plane_ssim"), ("_structural_similarity.py", "structural_similarity")],
    "canvas to photo": [("cloaking/pipeline.py", "photo_delta")],
    "encode output": [("photos/encoding.py", "encode_photo")],
    "decode for verification": [("photos/decoding.py", "decode_photo")],
    "verify (re-detect, re-embed)": [("cloaking/pipeline.py", "verify")],
    "onnxruntime runs (all)": [("~", "<built-in method onnxruntime.capi.onnxruntime_pybind11_state.run>")],
}


def stage_seconds(path: str) -> dict[str, float | None]:
    """Cumulative seconds of each stage in one cProfile file (None: the stage's functions never ran)."""
    stats = pstats.Stats(path).stats  # type: ignore[attr-defined]
    by_name: dict[tuple[str, str], float] = {}
    for (filename, _line, function), (_calls, _primitive, _total, cumulative, _callers) in stats.items():
        for stage_functions in STAGES.values():
            for suffix, name in stage_functions:
                if function == name and filename.endswith(suffix):
                    by_name[(suffix, name)] = by_name.get((suffix, name), 0.0) + cumulative
    seconds: dict[str, float | None] = {}
    for stage, candidates in STAGES.items():
        found = [by_name[candidate] for candidate in candidates if candidate in by_name]
        seconds[stage] = found[0] if found else None
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("profiles", nargs="+")
    parser.add_argument("--labels", nargs="+", help="column titles (default: the file names)")
    args = parser.parse_args()
    labels = args.labels or args.profiles
    if len(labels) != len(args.profiles):
        raise SystemExit("give one label per profile")
    columns = [stage_seconds(path) for path in args.profiles]
    print(f"| stage (cumulative s) | {' | '.join(labels)} |")
    print(f"|---|{'---|' * len(labels)}")
    for stage in STAGES:
        cells = [f"{column[stage]:.2f}" if column[stage] is not None else "-" for column in columns]
        print(f"| {stage} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
