"""``gridwatch bench ebike``: does the e-bike rule still tell generated e-bikes from bicycles?

The card of ``objects-det`` (models/README.md, docs/video.md) says that with the shipped rule
thresholds the e-bike rule raises on 11 of 12 generated e-bike scenes and on none of 12 generated
ordinary-bicycle scenes (test seeds 0-11 of ``models.scenes.ebike_video``; thresholds chosen on
seeds 100-123). Later changes to the video path (scene epochs, observation counts, the motion
gate) could move that, so this re-measures it two ways, in one run:

* ``rule``: the rule alone on the generated frames, every 3rd frame of 15 fps (5 fps), as the
  card's figures were taken;
* ``all`` / ``keyframes``: the production path. Each scene is encoded to H.264 (15 fps, one
  keyframe a second by default), decoded as a camera decodes it (PyAV, every frame or keyframes
  only), and analysed by ``VideoRuntime.analyse`` (motion gate, model, rule, lifecycle) with the
  shipped ``ebike`` rule on the whole picture, cooldown 0.

It prints, per way, how many e-bike scenes raised and how many bicycle scenes raised, the
e-bike delay from the bike's appearance, and the card's figures beside them. Nothing here is a
statement about real e-bikes: the scenes are generated.

    gridwatch bench ebike                 # test seeds 0-11
    gridwatch bench ebike --seeds 100 124 # the validation seeds the thresholds were chosen on
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

T0 = 1_700_000_000_000
FPS = 15
CARD = {"seeds": "0..11", "ebikes_raised": 11, "bicycles_raised": 0, "of": 12}


def _scene(seed: int, bicycle: bool, frames: int, appear_at: int):
    from gridwatch.models import scenes

    return (f for f, _ in scenes.ebike_video(frames, appear_at=appear_at, seed=seed, bicycle=bicycle))


def rule_alone(seed: int, bicycle: bool, frames: int, appear_at: int, model) -> float | None:
    """Seconds from the bike's appearance to the rule's warning (None: no warning)."""
    from gridwatch.detectors.base import FrameInput, Zone, ZoneConfig
    from gridwatch.detectors.motion import MotionDetector
    from gridwatch.detectors.registry import create

    whole = [Zone(ZoneConfig(name="picture", kind="elevator", polygon=[(0, 0), (1, 0), (1, 1), (0, 1)]), 0)]
    det, md = create("ebike", "ebike", {"k": 3, "n": 5}, whole, model), MotionDetector()
    for i, f in enumerate(_scene(seed, bicycle, frames, appear_at)):
        if i % 3:
            continue
        ts = T0 + i * 1000 // FPS
        m = md.detect(f)
        dets = model.detect([f])[0] if det.wants_model(ts, m) else None
        if any(h.kind == "raise" for h in det.update(FrameInput("cam", f, ts, m, dets, model.names))):
            return (i - appear_at) / FPS
    return None


def production(seed: int, bicycle: bool, frames: int, appear_at: int, mode: str, work: Path, models: dict,
               keyint: int) -> float | None:
    """The same scene encoded, decoded as a camera in ``mode`` and analysed by the runtime."""
    from gridwatch.benchmarks.false_alarms import decode_pass
    from gridwatch.config import parse
    from gridwatch.ingest.video import Frame
    from gridwatch.servers.rtsp import encode_h264
    from gridwatch.streams.video import VideoRuntime

    name = f"{'bicycle' if bicycle else 'ebike'}-{seed}"
    path = work / f"{name}-k{keyint}.mp4"
    if not path.exists():
        encode_h264(_scene(seed, bicycle, frames, appear_at), path, fps=FPS, keyint=keyint)
    kept, _ = decode_pass(path, mode, 5.0, 320)
    cam = f"{name}-{mode}"
    cfg = parse({"site": {"name": "eb", "data_dir": str(work / cam)},
                 "video": {"rules": [{"name": "ebike", "kind": "ebike", "cooldown_s": 0}]},
                 "cameras": [{"name": cam, "url": str(path), "decode": mode, "analysis_fps": 5.0,
                              "analysis_width": 320}]}, base_dir=work)
    rt = VideoRuntime(cfg, models=models)
    for seq, (pts, img) in enumerate(kept):
        fr = Frame(cam, seq, int(T0 + pts), pts, img, img.shape[1] / 320)
        for ev, w in rt.analyse([fr]):
            if ev == "raised" and w.rule == "ebike":
                return pts / 1000.0 - appear_at / FPS
    return None


def summarise(delays: dict[bool, list[float | None]]) -> dict:
    e, b = delays[False], delays[True]
    got = sorted(d for d in e if d is not None)
    return {"ebikes_raised": len(got), "bicycles_raised": sum(d is not None for d in b), "of": len(e),
            "ebike_delay_s_median": round(got[len(got) // 2], 2) if got else None,
            "ebike_delay_s_range": [round(got[0], 2), round(got[-1], 2)] if got else None,
            "ebike_seeds_missed": [s for s, d in zip(SEEDS, e) if d is None],
            "bicycle_seeds_raised": [s for s, d in zip(SEEDS, b) if d is not None]}


SEEDS: list[int] = []


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gridwatch bench ebike", description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", nargs=2, type=int, default=[0, 12], metavar=("FIRST", "END"),
                    help="scene seeds [FIRST, END) (default 0 12: the card's test seeds)")
    ap.add_argument("--ways", nargs="*", default=["rule", "all", "keyframes"], choices=["rule", "all", "keyframes"])
    ap.add_argument("--frames", type=int, default=195, help="frames per scene at 15 fps (default 195: 13 s)")
    ap.add_argument("--appear-at", type=int, default=10, help="frame the bike appears at")
    ap.add_argument("--keyint", type=int, default=FPS, help="frames between keyframes of the encoded scenes")
    ap.add_argument("--model", default="objects-det", help="shipped detector (objects-det or objects-det-int8)")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args(argv)
    from gridwatch.detectors.models import shipped

    SEEDS[:] = range(*a.seeds)
    model = shipped(a.model, intra_op_threads=1)
    out: dict = {"model": a.model, "seeds": f"{a.seeds[0]}..{a.seeds[1] - 1}", "card": CARD}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gridwatch-ebike-") as tmp:
        work = Path(tmp)
        for way in a.ways:
            delays: dict[bool, list[float | None]] = {False: [], True: []}
            for bicycle in (False, True):
                for s in SEEDS:
                    if way == "rule":
                        d = rule_alone(s, bicycle, a.frames, a.appear_at, model)
                    else:
                        d = production(s, bicycle, a.frames, a.appear_at, way, work, {a.model: model}, a.keyint)
                    delays[bicycle].append(d)
            out[way] = summarise(delays)
            r = out[way]
            print(f"{way:9}: e-bikes raised {r['ebikes_raised']} of {r['of']} (missed seeds {r['ebike_seeds_missed']}), "
                  f"bicycles raised {r['bicycles_raised']} of {r['of']} (seeds {r['bicycle_seeds_raised']}), "
                  f"delay median {r['ebike_delay_s_median']} s range {r['ebike_delay_s_range']}  "
                  f"[{time.monotonic() - t0:.0f} s]", flush=True)
    print(f"card ({CARD['seeds']}): e-bikes {CARD['ebikes_raised']} of {CARD['of']}, bicycles {CARD['bicycles_raised']} "
          f"of {CARD['of']}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
