"""Train gridwatch's small single-stage object detector on generated scenes and export it.

    python -m gridwatch.models.train_detector [--steps 3000] [--seed 0] [--threads 2]

Architecture: a plain ReLU/BN conv backbone (strides 2..32), a top-down feature pyramid over
strides 8/16/32 and one shared anchor-free head per level (FCOS-style centre sampling with objects
assigned to a level by size; box = distances to the four sides; quality-focal classification whose
target is 0.5 + 0.5 × the predicted box's IoU). The exported graph decodes the boxes itself and emits the
**YOLOv8 layout** ``[B, 4+C, N]`` (cx, cy, w, h in input pixels; sigmoid class scores), so it goes
through the same decoder and NMS as users' YOLOv8/YOLO11 exports. Input: ``images``
``[B, 3, 256, 256]`` RGB 0..1, letterboxed with grey 114 (dynamic batch axis).

Data: :func:`gridwatch.models.scenes.detector_sample` with seeds ``0 .. steps*batch-1``, generated on
the fly in one worker process. Writes ``objects-det.onnx`` (fp32), ``objects-det-int8.onnx``
(static int8 QDQ, calibrated on 64 generated frames with seeds 2_000_000+) and
``objects-det/train_log.json``.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gridwatch.detectors.onnx_decoders import letterbox, to_blob
from gridwatch.models import scenes
from gridwatch.models._train_common import HERE, add_metadata, quantize, set_threads, write_log

NAME = "objects-det"
SIZE = 256
STRIDES = (8, 16, 32)
# an object goes to the level whose range holds its longer side (input pixels); ranges overlap
RANGES = ((0, 56), (40, 128), (96, 10_000))
C = len(scenes.CLASSES)


def cbr(i, o, k=3, s=1):
    return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))


class Res(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a, self.b = cbr(c, c // 2, 1), cbr(c // 2, c, 3)

    def forward(self, x):
        return x + self.b(self.a(x))


class Detector(nn.Module):
    def __init__(self, nc: int = C, width: int = 48):
        super().__init__()
        self.nc = nc
        self.stem = nn.Sequential(cbr(3, 16, 3, 2), cbr(16, 24, 3, 2))                     # /4
        self.s3 = nn.Sequential(cbr(24, 48, 3, 2), Res(48))                                # /8
        self.s4 = nn.Sequential(cbr(48, 80, 3, 2), Res(80))                                # /16
        self.s5 = nn.Sequential(cbr(80, 112, 3, 2), Res(112), Res(112))                    # /32
        self.l3, self.l4, self.l5 = cbr(48, width, 1), cbr(80, width, 1), cbr(112, width, 1)
        self.f3, self.f4 = cbr(width, width), cbr(width, width)
        self.head = nn.Sequential(cbr(width, width))
        self.reg = nn.Conv2d(width, 4, 1)
        self.cls = nn.Conv2d(width, nc, 1)
        nn.init.constant_(self.cls.bias, -4.6)  # prior 0.01
        self.scale = nn.Parameter(torch.ones(3))
        pts, strides = [], []
        for s in STRIDES:
            n = SIZE // s
            ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
            pts.append(torch.stack([xs, ys], -1).reshape(-1, 2).float().add(0.5).mul(s))
            strides.append(torch.full((n * n,), float(s)))
        self.register_buffer("points", torch.cat(pts), persistent=False)
        self.register_buffer("strides", torch.cat(strides), persistent=False)

    def raw(self, x):
        """(xyxy boxes [B, N, 4] in input pixels, class logits [B, N, C])."""
        c3 = self.s3(self.stem(x))
        c4 = self.s4(c3)
        c5 = self.s5(c4)
        p5 = self.l5(c5)
        p4 = self.f4(self.l4(c4) + F.interpolate(p5, scale_factor=2.0, mode="nearest"))
        p3 = self.f3(self.l3(c3) + F.interpolate(p4, scale_factor=2.0, mode="nearest"))
        regs, logits = [], []
        for i, p in enumerate((p3, p4, p5)):
            h = self.head(p)
            regs.append(self.reg(h).flatten(2))
            logits.append(self.cls(h).flatten(2))
        ltrb = torch.cat([F.softplus(r * self.scale[i]) for i, r in enumerate(regs)], 2).transpose(1, 2)
        ltrb = ltrb * self.strides[None, :, None] * 2.0
        pts = self.points[None]
        boxes = torch.cat([pts - ltrb[..., :2], pts + ltrb[..., 2:]], -1)
        return boxes, torch.cat(logits, 2).transpose(1, 2)

    def forward(self, x):
        """Export form: YOLOv8 layout [B, 4+C, N] = cx, cy, w, h, sigmoid scores."""
        boxes, logits = self.raw(x)
        cxcy = (boxes[..., :2] + boxes[..., 2:]) / 2
        wh = boxes[..., 2:] - boxes[..., :2]
        return torch.cat([cxcy, wh, logits.sigmoid()], -1).transpose(1, 2)


def box_iou_giou(a, b):
    lt, rb = torch.max(a[:, :2], b[:, :2]), torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    union = area_a + area_b - inter + 1e-6
    iou = inter / union
    elt, erb = torch.min(a[:, :2], b[:, :2]), torch.max(a[:, 2:], b[:, 2:])
    enc = (erb - elt).clamp(min=0).prod(1) + 1e-6
    return iou, iou - (enc - union) / enc


def assign(points, strides, gt_boxes, radius=1.5):
    """For each point: index of its ground-truth box or -1 (centre sampling, level by size, smallest wins)."""
    n = points.shape[0]
    if gt_boxes.shape[0] == 0:
        return torch.full((n,), -1, dtype=torch.long)
    cx = (gt_boxes[:, 0] + gt_boxes[:, 2]) / 2
    cy = (gt_boxes[:, 1] + gt_boxes[:, 3]) / 2
    side = (gt_boxes[:, 2:] - gt_boxes[:, :2]).max(1).values
    r = strides[:, None] * radius
    near = ((points[:, 0:1] - cx[None]).abs() < r) & ((points[:, 1:2] - cy[None]).abs() < r)
    inside = (points[:, 0:1] > gt_boxes[None, :, 0]) & (points[:, 0:1] < gt_boxes[None, :, 2]) & \
             (points[:, 1:2] > gt_boxes[None, :, 1]) & (points[:, 1:2] < gt_boxes[None, :, 3])
    lo = torch.tensor([RANGES[STRIDES.index(int(s))][0] for s in strides.unique()], dtype=torch.float32)
    level_lo = torch.zeros_like(strides)
    level_hi = torch.zeros_like(strides)
    for s, (a, b) in zip(STRIDES, RANGES):
        level_lo[strides == s], level_hi[strides == s] = a, b
    del lo
    fits = (side[None] >= level_lo[:, None]) & (side[None] < level_hi[:, None])
    # the cell holding the centre always counts (tiny or thin objects)
    centre_cell = ((points[:, 0:1] - cx[None]).abs() <= strides[:, None] / 2) & \
                  ((points[:, 1:2] - cy[None]).abs() <= strides[:, None] / 2)
    ok = fits & ((near & inside) | centre_cell)
    area = (gt_boxes[:, 2:] - gt_boxes[:, :2]).prod(1)
    cost = torch.where(ok, area[None].expand(n, -1), torch.full_like(ok, 1e12, dtype=torch.float32))
    best, idx = cost.min(1)
    return torch.where(best < 1e12, idx, torch.full_like(idx, -1))


def loss_fn(model, images, targets):
    boxes, logits = model.raw(images)
    B, N, _ = boxes.shape
    cls_t = torch.zeros_like(logits)
    reg_loss, npos = boxes.new_zeros(()), 0
    for b in range(B):
        gb, gc = targets[b]
        idx = assign(model.points, model.strides, gb)
        pos = idx >= 0
        if pos.any():
            pb, tb = boxes[b, pos], gb[idx[pos]]
            iou, giou = box_iou_giou(pb, tb)
            reg_loss = reg_loss + (1 - giou).sum()
            cls_t[b, pos, gc[idx[pos]]] = 0.5 + 0.5 * iou.detach().clamp(min=0)  # rank by IoU, confident ≥ 0.5
            npos += int(pos.sum())
    p = logits.sigmoid()
    qfl = F.binary_cross_entropy_with_logits(logits, cls_t, reduction="none") * (p - cls_t).abs().pow(2)
    npos = max(npos, 1)
    return qfl.sum() / npos + 2.0 * reg_loss / npos


class Stream(torch.utils.data.IterableDataset):
    """Letterboxed generated frames with seeds start, start+1, ... (one worker: deterministic order)."""

    def __init__(self, start: int, count: int):
        self.start, self.count = start, count

    def __iter__(self):
        for seed in range(self.start, self.start + self.count):
            yield sample(seed)


def sample(seed: int):
    frame, boxes, classes = scenes.detector_sample(seed)
    img, lb = letterbox(frame, (SIZE, SIZE))
    b = boxes.copy()
    b[:, 0::2] = b[:, 0::2] * lb.scale_x + lb.pad_x
    b[:, 1::2] = b[:, 1::2] * lb.scale_y + lb.pad_y
    return torch.from_numpy(to_blob([img])[0]), torch.from_numpy(b), torch.from_numpy(classes)


def collate(items):
    return torch.stack([i[0] for i in items]), [(i[1], i[2]) for i in items]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=550)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    model = Detector()
    ema = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.998))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=5e-4)
    warm = min(200, args.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    start_seed = args.seed * 10_000_000
    data = torch.utils.data.DataLoader(Stream(start_seed, args.steps * args.batch), batch_size=args.batch,
                                       num_workers=1, collate_fn=collate, prefetch_factor=4)
    t0 = time.time()
    model.train()
    for step, (images, targets) in enumerate(data):
        loss = loss_fn(model, images, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        sched.step()
        ema.update_parameters(model)
        if step % 50 == 0:
            print(f"step {step:5d}  loss {loss.item():.3f}  lr {sched.get_last_lr()[0]:.2e}  {time.time() - t0:.0f}s", flush=True)
    train_s = time.time() - t0
    # BN statistics of the EMA model: re-estimate on a few fresh batches
    net = ema.module
    net.train()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        for i in range(20):
            images, _ = collate([sample(3_000_000 + i * args.batch + j) for j in range(args.batch)])
            net(images)
    net.eval()
    export(net, args.out, dict(seed=args.seed, steps=args.steps, batch=args.batch, lr=args.lr, threads=args.threads,
                               train_seeds=f"{start_seed}..{start_seed + args.steps * args.batch - 1}",
                               generator_version=scenes.GENERATOR_VERSION, train_seconds=round(train_s, 1)))


def export(net, out: Path, record: dict):
    fp32, int8 = out / f"{NAME}.onnx", out / f"{NAME}-int8.onnx"
    dummy = torch.zeros(1, 3, SIZE, SIZE)
    torch.onnx.export(net, (dummy,), str(fp32), input_names=["images"], output_names=["output0"],
                      dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}}, opset_version=17, dynamo=False)
    names = {i: n for i, n in enumerate(scenes.CLASSES)}
    add_metadata(fp32, {"names": repr(names), "imgsz": f"[{SIZE}, {SIZE}]", "layout": "yolov8", "task": "detect",
                        "description": "gridwatch objects-det: synthetic-data detector (see CARD.md)",
                        "generator_version": scenes.GENERATOR_VERSION, "precision": "fp32"})
    calib = [collate([sample(2_000_000 + i * 8 + j) for j in range(8)])[0].numpy() for i in range(8)]
    t0 = time.time()
    quantize(fp32, int8, calib)
    record["quantize_seconds"] = round(time.time() - t0, 1)
    record["calibration_seeds"] = "2000000..2000063"
    print(write_log(NAME, record).read_text())


if __name__ == "__main__":
    main()
