"""``gridwatch bench false-alarms``: false alarms per camera-day of every video rule on real footage.

Real clips that contain no smoke, no dumping and no e-bike — the footage Debian's ``opencv-doc``
ships (``vtest.avi``: people walking on a street; ``tree.avi``: an outdoor tree in the wind;
``Megamind.avi`` and ``Megamind_bugy.avi``: an animated clip, the second with damaged frames) —
are transcoded once to H.264 with a 2 s GOP (what a camera sends), then each clip is played as
one camera, **looped** for a given number of camera-hours, in both decode modes:

* ``all``: every frame decoded (PyAV, the pipeline's decoder), analysed at ``analysis_fps``;
* ``keyframes``: keyframes only (``skip_frame = NONKEY``), one every 2 s.

Every video rule runs with its shipped defaults (``smoke`` with ``smoke-cls``, ``dumping``
without a model, ``ebike`` with ``objects-det`` on the whole picture), through the production
path: ``VideoRuntime.analyse`` (motion gate, models, rules, lifecycle) with the rule cooldown set
to 0, so every warning counts. Each pass of a loop is a new scene epoch, as for a looping file
camera: the loop's wrap is a discontinuity, never evidence. Time is the stream's own clock, so a
run goes much faster than real time; the decoded frames of one pass are kept and replayed for the
next (decoding the same file again gives the same pictures), and so are the detector model's
outputs for them (the model is a pure function of the picture). The rules' state is not replayed:
it carries on as in a live run.

False alarms per camera-day = warnings / camera-days; the 95 % upper bound is the exact Poisson
one (0 warnings in T camera-days: 3.0 / T). Clips named by ``--held-out`` are reported apart:
they were not looked at while choosing any threshold (the defaults held out ``tree`` and
``Megamind_bugy``; ``vtest`` and ``Megamind`` were used for tuning).

    gridwatch bench false-alarms --hours 10               # 10 camera-hours per decode mode
    gridwatch bench false-alarms --hours 0.05 --json out.json
    gridwatch bench false-alarms --plumes 30 --plume-seconds 40   # generated plumes, both decode modes
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DATA_DIRS = [Path("/usr/share/doc/opencv-doc/examples/data"), Path("/usr/share/opencv4/samples/data")]
CLIPS = ["vtest.avi", "tree.avi", "Megamind.avi", "Megamind_bugy.avi"]
HELD_OUT = ["tree", "Megamind_bugy"]
MODES = ["all", "keyframes"]
T0 = 1_700_000_000_000


def find_clips(names: list[str] | None = None) -> dict[str, Path]:
    """The real clips this machine has, by stem ('vtest' -> path)."""
    out = {}
    for name in CLIPS:
        stem = Path(name).stem
        if names and stem not in names:
            continue
        for d in DATA_DIRS:
            if (d / name).is_file():
                out[stem] = d / name
                break
    return out


def transcode(src: Path, cache: Path) -> Path:
    """``src`` as H.264 with a keyframe every 2 s (as a camera sends it), made once into ``cache``."""
    out = cache / f"{src.stem}-gop2s.mp4"
    if out.is_file() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    if shutil.which("ffmpeg") is None:
        raise SystemExit("ffmpeg is needed (Debian package ffmpeg)")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.mp4")
    # -err_detect ignore_err: the damaged clip decodes as far as it can, as a camera's stream would
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-err_detect", "ignore_err", "-i", str(src), "-an",
                    "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p",
                    "-force_key_frames", "expr:gte(t,n_forced*2)", "-sc_threshold", "0", str(tmp)],
                   check=True, timeout=600)
    tmp.replace(out)
    return out


def decode_pass(path: Path, mode: str, analysis_fps: float, width: int) -> tuple[list[tuple[float, np.ndarray]], float]:
    """One pass of the clip as the capture thread keeps it: (pts ms, BGR at ``width``) per kept
    frame (analysis-rate skipping on the stream clock), and the clip's length in ms."""
    from gridwatch.ingest.video import CameraConfig, PyAvSource

    cfg = CameraConfig(name="clip", url=str(path), decode=mode, analysis_fps=analysis_fps, analysis_width=width)
    src = PyAvSource(cfg, keyframes_only=mode == "keyframes")
    kept, last, interval, end = [], -1e18, 1.0 / analysis_fps, 0.0
    try:
        while (pts := src.next()) is not None:
            end = max(end, pts)
            if pts / 1000.0 - last < interval * 0.999:
                continue
            last = pts / 1000.0
            kept.append((pts, src.image(width)))
        duration = src.duration_ms if src.duration_ms == src.duration_ms else end + 1000.0 / max(src.fps, 1.0)
    finally:
        src.close()
    return kept, max(duration, end)


class Memo:
    """The detector model, its outputs remembered per picture: a replayed pass shows the same
    pictures (the same arrays), so the model would give the same detections again."""

    def __init__(self, model) -> None:
        self.model = model
        self.names = model.names
        self.rule_params = getattr(model, "rule_params", None)
        self.kind = getattr(model, "kind", None)
        self._seen: dict[int, object] = {}
        self._keep: list = []
        self.runs = 0

    def __getattr__(self, name):  # anything else (classify, input size, ...) is the model's own
        return getattr(self.model, name)

    def detect(self, images):
        todo = [im for im in images if id(im) not in self._seen]
        if todo:
            self.runs += len(todo)
            for im, d in zip(todo, self.model.detect(todo)):
                self._seen[id(im)] = d
                self._keep.append(im)  # the id stays this picture's while it is remembered
        return [self._seen[id(im)] for im in images]


@dataclass
class Result:
    clip: str
    mode: str
    held_out: bool
    seconds: float = 0.0  # camera-time played
    passes: int = 0
    frames: int = 0  # frames handed to analysis
    warnings: Counter = field(default_factory=Counter)  # rule -> warnings raised
    examples: dict = field(default_factory=lambda: defaultdict(list))  # rule -> [(pass, t in clip s, snapshot)]
    resets: int = 0
    cpu_s: float = 0.0


def poisson_upper(k: int, t: float, conf: float = 0.95) -> float:
    """Exact upper confidence bound on a Poisson rate after ``k`` events in exposure ``t``
    (0 events: -ln(0.05) = 3.0 / t)."""
    if t <= 0:
        return float("inf")
    if k == 0:
        return -math.log(1 - conf) / t

    def cdf(lam: float) -> float:  # P(X <= k) for a Poisson mean lam
        term = total = math.exp(-lam)
        for i in range(1, k + 1):
            term *= lam / i
            total += term
        return total

    lo, hi = float(k), float(k) + 10.0 * math.sqrt(k + 1) + 10.0
    for _ in range(100):  # the mean at which k or fewer events would happen only 5 % of the time
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) > 1 - conf else (lo, mid)
    return hi / t


def rules_config() -> list[dict]:
    """Every video rule with its shipped defaults; cooldown 0 so that every warning counts."""
    return [{"name": "smoke", "kind": "smoke", "cooldown_s": 0},
            {"name": "dumping", "kind": "dumping", "cooldown_s": 0},
            {"name": "ebike", "kind": "ebike", "cooldown_s": 0}]


def run_clip(stem: str, path: Path, mode: str, seconds: float, work: Path, analysis_fps: float, width: int,
             held_out: bool, models: dict, progress=None, loop_epochs: bool = True) -> Result:
    from gridwatch.config import parse
    from gridwatch.ingest.video import Frame
    from gridwatch.streams.video import VideoRuntime

    res = Result(stem, mode, held_out)
    kept, duration = decode_pass(path, mode, analysis_fps, width)
    if not kept:
        return res
    name = f"{stem}-{mode}"
    cfg = parse({"site": {"name": "fa", "data_dir": str(work / name)},
                 "video": {"rules": rules_config()},
                 "cameras": [{"name": name, "url": str(path), "decode": mode, "analysis_fps": analysis_fps,
                              "analysis_width": width, "loop": True}]}, base_dir=work)
    rt = VideoRuntime(cfg, models=models)
    cpu0 = time.process_time()
    offset, seq, p = 0.0, 0, 0
    while offset < seconds * 1000:
        for pts, img in kept:
            if offset + pts >= seconds * 1000:
                break
            fr = Frame(name, seq, int(T0 + offset + pts), offset + pts, img, img.shape[1] / width)
            try:
                fr.epoch = p if loop_epochs else 0  # each pass a new scene epoch, as for a looping file camera
            except AttributeError:  # code from before scene epochs (for the 'before' figures)
                pass
            seq += 1
            for ev, w in rt.analyse([fr]):
                if ev == "raised":
                    res.warnings[w.rule] += 1
                    ex = res.examples[w.rule]
                    if len(ex) < 5:
                        ex.append((p, round(pts / 1000.0, 1), (w.evidence or {}).get("snapshot")))
        res.frames = seq
        offset += duration
        p += 1
        if progress:
            progress(stem, mode, min(offset, seconds * 1000) / 1000.0, res)
    res.passes = p
    res.seconds = min(offset, seconds * 1000) / 1000.0
    res.cpu_s = time.process_time() - cpu0
    res.resets = sum(c.resets for c in rt.cameras) if hasattr(rt.cameras[0], "resets") else 0
    return res


def table(results: list[Result], rules: list[str]) -> list[str]:
    lines = []
    hdr = f"{'rule':8} {'mode':10} {'clips':28} {'cam-h':>7} {'alarms':>6} {'per cam-day':>11} {'95% upper':>9}"
    for group, sel in (("all clips", lambda r: True), ("held out", lambda r: r.held_out),
                       ("tuning", lambda r: not r.held_out)):
        lines.append(f"-- {group}")
        lines.append(hdr)
        for rule in rules:
            for mode in MODES:
                rs = [r for r in results if r.mode == mode and sel(r)]
                if not rs:
                    continue
                days = sum(r.seconds for r in rs) / 86400.0
                k = sum(r.warnings[rule] for r in rs)
                rate = k / days if days else float("nan")
                clips = ",".join(r.clip for r in rs)
                lines.append(f"{rule:8} {mode:10} {clips[:28]:28} {days * 24:7.2f} {k:6d} {rate:11.2f} "
                             f"{poisson_upper(k, days):9.2f}")
    return lines


def calibrate_smoke_cls(clips: dict[str, Path], held_out: list[str], cache: Path, boxes_per_frame: int = 6,
                        max_fp: float = 0.01, n_plumes: int = 60) -> dict:
    """Choose ``smoke-cls``'s threshold on real negatives: the crops the smoke rule would hand it
    (boxes of 8-40 % of the frame's width, any aspect 0.5-2) from the tuning clips' frames; the
    threshold lets through at most ``max_fp`` of them. Reported on the held-out clips' crops
    and, for recall, on generated plumes (crops of the plume's box, held-out seeds 1000100 on,
    not the seeds the smoke rule is reported on)."""
    from gridwatch.detectors.models import shipped
    from gridwatch.models import scenes

    cls = shipped("smoke-cls")
    smoke_id = next(i for i, n in cls.names.items() if n.lower() == "smoke")
    rng = np.random.default_rng(0)

    def crops_of(frames) -> list[np.ndarray]:
        out = []
        for img in frames:
            h, w = img.shape[:2]
            for _ in range(boxes_per_frame):
                bw = int(w * rng.uniform(0.08, 0.4))
                bh = int(min(h - 1, bw * rng.uniform(0.5, 2.0)))
                x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                out.append(img[y:y + bh, x:x + bw])
        return out

    def probs(crops) -> np.ndarray:
        return np.concatenate([cls.classify(crops[i:i + 32])[:, smoke_id] for i in range(0, len(crops), 32)]) \
            if crops else np.zeros(0)

    neg = {}
    for stem, src in clips.items():
        kept, _ = decode_pass(transcode(src, cache), "all", 1.0, 640)  # one frame a second
        neg[stem] = probs(crops_of([im for _, im in kept]))
    tune = np.concatenate([v for k, v in neg.items() if k not in held_out] or [np.zeros(1)])
    held = np.concatenate([v for k, v in neg.items() if k in held_out] or [np.zeros(0)])
    threshold = float(max(0.5, np.quantile(tune, 1.0 - max_fp)))
    pos = []
    for i in range(n_plumes):
        frames = list(scenes.smoke_video(60, seed=scenes.HELDOUT_SEED_BASE + 100 + i))
        img, a = frames[-1]
        ys, xs = np.nonzero(a > 0.1)
        if len(xs) < 50:
            continue
        pos.append(img[ys.min():ys.max() + 1, xs.min():xs.max() + 1])
    pp = probs(pos)
    return {"threshold": round(threshold, 3), "tuning_negatives": int(len(tune)),
            "tuning_fp_at_0.5": round(float((tune >= 0.5).mean()), 4),
            "tuning_fp": round(float((tune >= threshold).mean()), 4),
            "held_out_negatives": int(len(held)),
            "held_out_fp_at_0.5": round(float((held >= 0.5).mean()), 4) if len(held) else None,
            "held_out_fp": round(float((held >= threshold).mean()), 4) if len(held) else None,
            "plumes": int(len(pp)), "plume_recall_at_0.5": round(float((pp >= 0.5).mean()), 3),
            "plume_recall": round(float((pp >= threshold).mean()), 3),
            "per_clip_p99": {k: round(float(np.quantile(v, 0.99)), 3) for k, v in neg.items() if len(v)}}


def plume_detection(n: int = 30, seed_base: int | None = None, params: dict | None = None, seconds: float = 10.0,
                    mode: str = "all") -> dict:
    """The smoke rule with ``smoke-cls`` on ``n`` generated plumes (``scenes.smoke_video``, seeds
    from ``HELDOUT_SEED_BASE`` unless ``seed_base`` is given, 15 fps, 320x240; the set ``python -m
    gridwatch.models.evaluate --smoke-rule`` reports on): which visible plumes raise, and how long
    after the plume starts (detection delay).

    ``seconds``: the clip's length (10 s by default, 150 frames; the plume grows over 60 % of it, so
    a longer clip is a slower plume of the same shape). ``mode``: ``all`` analyses every third
    frame (5 fps, as full decode does); ``keyframes`` one frame every 2 s (a camera's keyframes).
    Whether a plume is *visible* is decided on its 10 s clip (``evaluate.plume_visible``), so every
    length and mode counts over the same plumes. Each missed visible plume is put down to the stage
    that dropped it: ``candidates`` (its largest region never reached ``min_blocks`` tiles),
    ``temporal`` (it did, but the duration / frames / growth rules were never met while it was that
    big) or ``classifier`` (the rule was met and ``smoke-cls`` said no)."""
    from gridwatch.detectors.base import FrameInput
    from gridwatch.detectors.models import shipped
    from gridwatch.detectors.motion import MotionDetector
    from gridwatch.detectors.registry import create
    from gridwatch.models import scenes
    from gridwatch.models.evaluate import plume_visible

    base = scenes.HELDOUT_SEED_BASE if seed_base is None else seed_base
    every = {"all": 3, "keyframes": 30}[mode]
    frames_n = max(30, round(seconds * 15))
    cls = shipped("smoke-cls", intra_op_threads=1)
    delays, missed, faint_raised = [], {}, 0
    visible = 0
    for s in range(base, base + n):
        det, md = create("smoke", "smoke", {"duration_s": 3.0, **(params or {})}, model=cls), MotionDetector()
        at, largest = None, 0
        for i, (f, _) in enumerate(scenes.smoke_video(frames_n, seed=s)):
            if i % every:
                continue
            hits = det.update(FrameInput("p", f, i * 200 // 3, md.detect(f)))
            largest = max(largest, int(det.region.sum()) if det.region is not None else 0)
            if any(h.kind == "raise" for h in hits):
                at = i / 15.0
                break
        if plume_visible(s):
            visible += 1
            if at is not None:
                delays.append(at)
            else:
                stage = ("classifier" if det.classifier_runs else
                         "candidates" if largest < det.p.min_blocks else "temporal")
                missed[s] = {"stage": stage, "largest_region": largest,
                             "classifier_probs": [round(x, 2) for x in det.classifier_probs]}
        elif at is not None:
            faint_raised += 1
    return {"seeds": f"{base}..{base + n - 1}", "plume_seconds": seconds, "mode": mode, "visible": visible,
            "raised": len(delays), "recall": round(len(delays) / max(visible, 1), 3),
            "delay_s_median": round(float(np.median(delays)), 2) if delays else None,
            "delay_s_range": [round(min(delays), 2), round(max(delays), 2)] if delays else None,
            "missed_seeds": list(missed), "missed_by_stage": dict(Counter(m["stage"] for m in missed.values())),
            "missed": missed, "faint_raised": faint_raised}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gridwatch bench false-alarms", description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=float, default=10.0, help="camera-hours per decode mode, shared evenly by the "
                    "clips (default 10)")
    ap.add_argument("--clips", nargs="*", help="clip stems to use (default: every one found: "
                    + ", ".join(Path(c).stem for c in CLIPS) + ")")
    ap.add_argument("--held-out", nargs="*", default=HELD_OUT, help="clips reported apart as held out of tuning")
    ap.add_argument("--modes", nargs="*", default=MODES, choices=MODES)
    ap.add_argument("--analysis-fps", type=float, default=5.0)
    ap.add_argument("--analysis-width", type=int, default=640)
    ap.add_argument("--cache", default=os.environ.get("GRIDWATCH_CLIP_CACHE",
                                                      str(Path.home() / ".cache" / "gridwatch" / "clips")),
                    help="where the transcoded clips are kept")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--no-loop-epochs", action="store_true", help="ablation: the loop's wrap is not a new scene epoch "
                    "(the rules see the clip's end joined to its start, as they did before scene epochs)")
    ap.add_argument("--calibrate-smoke-cls", action="store_true", help="instead: choose smoke-cls's threshold on "
                    "the tuning clips' crops (at most 1 %% let through), report it on the held-out clips and plumes")
    ap.add_argument("--plumes", type=int, metavar="N", help="instead: the smoke rule (with smoke-cls) on N held-out "
                    "generated plumes: detection rate and delay, and the stage that dropped each missed one")
    ap.add_argument("--plume-seconds", type=float, default=10.0, help="with --plumes: length of each plume's clip "
                    "(the plume grows over 60 %% of it; default 10)")
    ap.add_argument("--plume-seed-base", type=int, help="with --plumes: first seed (default: the held-out "
                    "1000000; the tuning plumes are 0..)")
    ap.add_argument("--plume-smoke-params", type=json.loads, default={}, help="with --plumes: JSON object of smoke "
                    "rule params over the defaults")
    a = ap.parse_args(argv)
    if a.plumes:
        out = [plume_detection(a.plumes, a.plume_seed_base, a.plume_smoke_params, a.plume_seconds, m) for m in a.modes]
        print(json.dumps(out if len(out) > 1 else out[0], indent=1))
        return 0

    clips = find_clips(a.clips)
    if not clips:
        print("no real clips found (Debian package opencv-doc: examples/data/vtest.avi, tree.avi, Megamind.avi)",
              file=sys.stderr)
        return 2
    if a.calibrate_smoke_cls:
        print(json.dumps(calibrate_smoke_cls(clips, a.held_out, Path(a.cache)), indent=1))
        return 0
    from gridwatch.detectors.models import shipped

    models = {"objects-det": Memo(shipped("objects-det")), "smoke-cls": shipped("smoke-cls")}
    per_clip = a.hours * 3600.0 / len(clips)
    t_start = time.monotonic()
    last_print = [0.0]

    def progress(stem, mode, done_s, res):
        if a.quiet or time.monotonic() - last_print[0] < 10:
            return
        last_print[0] = time.monotonic()
        print(f"  {stem} {mode}: {done_s / 3600:.2f} of {per_clip / 3600:.2f} camera-h, warnings {dict(res.warnings)}, "
              f"{time.monotonic() - t_start:.0f} s", flush=True)

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="gridwatch-fa-") as tmp:
        work = Path(tmp)
        for stem, src in clips.items():
            path = transcode(src, Path(a.cache))
            for mode in a.modes:
                r = run_clip(stem, path, mode, per_clip, work, a.analysis_fps, a.analysis_width,
                             stem in a.held_out, models, progress, loop_epochs=not a.no_loop_epochs)
                results.append(r)
                if not a.quiet:
                    print(f"{stem:14} {mode:9} {r.seconds / 3600:6.2f} camera-h in {r.passes} passes, {r.frames} frames "
                          f"analysed, {r.cpu_s:.0f} s CPU ({r.seconds / max(r.cpu_s, 1e-9):.0f}x real time), "
                          f"warnings {dict(r.warnings) or 0}, evidence resets {r.resets}", flush=True)
                    for rule, ex in r.examples.items():
                        print(f"    {rule}: first ones (pass, s into the clip): {[e[:2] for e in ex]}")
    rules = [r["name"] for r in rules_config()]
    print(f"False alarms per camera-day on real footage without smoke, dumping or e-bikes "
          f"(clips {', '.join(clips)}; held out of tuning: {', '.join(c for c in clips if c in a.held_out) or 'none'}; "
          f"looped, each pass a new scene epoch; {a.analysis_fps:g} fps analysis at {a.analysis_width} px; "
          f"95 % upper bound: exact Poisson)")
    for line in table(results, rules):
        print(line)
    if a.json:
        Path(a.json).write_text(json.dumps([{"clip": r.clip, "mode": r.mode, "held_out": r.held_out,
                                             "seconds": r.seconds, "passes": r.passes, "frames": r.frames,
                                             "warnings": dict(r.warnings), "examples": dict(r.examples),
                                             "resets": r.resets, "cpu_s": r.cpu_s} for r in results], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
