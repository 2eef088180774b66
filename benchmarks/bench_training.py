"""Training throughput (slices/s) of the papers' networks on this machine.

One training step = forward + BCE/CCE loss + backward + optimiser step on random input
``[B, C, S, S]`` float32; warm-up steps are not timed. Never asserted in tests.

    python -m covidct.benchmarks.bench_training                       # cnn6 224 + resnet50v2_fpn 512
    python -m covidct.benchmarks.bench_training --model unet --size 256 --batch 4 --steps 5
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from covidct.benchmarks.common import machine_info
from covidct.training.losses import make_loss
from covidct.training.registry import create_model
from covidct.training.trainer import default_loss, make_optimizer

DEFAULT_CASES = (("cnn6", 224, 16, 10), ("resnet50v2_fpn", 512, 2, 3))


def bench(name: str, size: int, batch: int, steps: int, warmup: int = 1, device: str = "cpu") -> dict:
    """Median-free simple timing: slices/s over ``steps`` timed training steps."""
    torch.manual_seed(0)
    model = create_model(name, input_size=size).to(device).train()
    cfg = model.model_config
    loss_fn = make_loss(default_loss(cfg.task, cfg.num_outputs), cfg.num_outputs)
    opt = make_optimizer("nadam" if cfg.num_outputs == 2 else "adam", model.parameters(), 1e-4)
    x = torch.rand(batch, cfg.in_channels, size, size, device=device)
    if cfg.task == "segmentation":
        y = (torch.rand(batch, 1, size, size, device=device) > 0.9).float()
    else:
        y = torch.randint(0, 2, (batch,), device=device).float()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    total = sum(times)
    return {"model": name, "input_size": size, "batch": batch, "steps": steps,
            "seconds_per_step": total / steps, "slices_per_s": batch * steps / total,
            "threads": torch.get_num_threads(), "device": device}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model")
    parser.add_argument("--size", type=int)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = [(args.model, args.size, args.batch, args.steps)] if args.model else DEFAULT_CASES
    print(json.dumps({"machine": machine_info(), "torch": torch.__version__}))
    for name, size, batch, steps in cases:
        print(json.dumps(bench(name, size, batch, steps, device=args.device)))


if __name__ == "__main__":
    main()
