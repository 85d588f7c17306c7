"""Train gridwatch's smoke-block classifier (the smoke detector's second stage) and export it.

    python -m gridwatch.models.train_smoke [--n 8000] [--epochs 12] [--seed 0] [--threads 1]

Input ``images`` ``[B, 3, 64, 64]`` RGB 0..1 (a candidate region's crop resized with INTER_AREA, as
``OnnxClassifier`` does); output ``probs`` ``[B, 2]`` softmax probabilities for
``{0: 'background', 1: 'smoke'}``. Architecture: four stride-2 3×3 conv/BN/ReLU layers (16-32-48-64
channels), global average pooling, one linear layer. Data: :func:`gridwatch.models.scenes.smoke_sample`
with seeds ``0 .. n-1`` (labels balanced by the generator), horizontal-flip augmentation. Writes
``smoke-cls.onnx``, ``smoke-cls-int8.onnx`` (static int8 QDQ calibrated on 256 crops with seeds
2_000_000+) and ``smoke-cls/train_log.json``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gridwatch.detectors.onnx_decoders import to_blob
from gridwatch.models import scenes
from gridwatch.models._train_common import HERE, add_metadata, quantize, set_threads, write_log

NAME = "smoke-cls"
SIZE = 64


def cbr(i, o, s=2):
    return nn.Sequential(nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))


class SmokeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(cbr(3, 16), cbr(16, 32), cbr(32, 48), cbr(48, 64), cbr(64, 64, 1))
        self.fc = nn.Linear(64, 2)

    def logits(self, x):
        return self.fc(self.body(x).mean((2, 3)))

    def forward(self, x):
        return F.softmax(self.logits(x), dim=1)


def dataset(seeds):
    crops, labels = zip(*(scenes.smoke_sample(int(s), SIZE) for s in seeds))
    return torch.from_numpy(to_blob(list(crops))), torch.tensor(labels)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=8000)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()
    start = args.seed * 10_000_000
    x, y = dataset(range(start, start + args.n))
    gen_s = time.time() - t0
    print(f"generated {args.n} crops in {gen_s:.0f}s, {float(y.float().mean()):.2f} smoke", flush=True)
    model = SmokeNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = args.epochs * (args.n // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    g = torch.Generator().manual_seed(args.seed)
    t1 = time.time()
    for ep in range(args.epochs):
        perm = torch.randperm(args.n, generator=g)
        model.train()
        tot = 0.0
        for i in range(args.n // args.batch):
            idx = perm[i * args.batch:(i + 1) * args.batch]
            xb = x[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = F.cross_entropy(model.logits(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item()
        print(f"epoch {ep}  loss {tot / (args.n // args.batch):.4f}  {time.time() - t1:.0f}s", flush=True)
    train_s = time.time() - t1
    model.eval()
    fp32, int8 = args.out / f"{NAME}.onnx", args.out / f"{NAME}-int8.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, SIZE, SIZE),), str(fp32), input_names=["images"],
                      output_names=["probs"], dynamic_axes={"images": {0: "batch"}, "probs": {0: "batch"}},
                      opset_version=17, dynamo=False)
    add_metadata(fp32, {"names": repr(dict(enumerate(scenes.SMOKE_CLASSES))), "imgsz": f"[{SIZE}, {SIZE}]",
                        "layout": "classifier", "task": "classify", "generator_version": scenes.GENERATOR_VERSION,
                        "description": "gridwatch smoke-cls: synthetic-data smoke block classifier (see CARD.md)",
                        "precision": "fp32"})
    calib_x, _ = dataset(range(2_000_000, 2_000_256))
    quantize(fp32, int8, [calib_x[i:i + 32].numpy() for i in range(0, 256, 32)])
    print(write_log(NAME, dict(seed=args.seed, n=args.n, epochs=args.epochs, batch=args.batch, threads=args.threads,
                               train_seeds=f"{start}..{start + args.n - 1}", calibration_seeds="2000000..2000255",
                               generator_version=scenes.GENERATOR_VERSION, generate_seconds=round(gen_s, 1),
                               train_seconds=round(train_s, 1))).read_text())


if __name__ == "__main__":
    main()
