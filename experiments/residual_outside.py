"""Issue 24's acceptance check: a residual CNN written and trained by plain torch code (not this
package: bias-free convs, BatchNorm inside its blocks, identity and 1x1 projection skips), saved as
a state_dict, approximated by the CLI with the default settings, and checked from the outside.

    python experiments/residual_outside.py train  OUT/user_resnet.pt   # plain torch, Fashion-MNIST
    subsetsum-lth approximate --target OUT/user_resnet.pt --arch c8k3s2p1,rb8,rb16s2,ap7,fc10 \
        --data fashion-mnist --out OUT/ticket
    python experiments/residual_outside.py check  OUT/user_resnet.pt OUT/ticket

``check`` rebuilds the pruned network through the public API (subsetsum_lth.api.export_pruned),
measures its test accuracy and its agreement with the user's model (in eval mode, run by the
user's own class), and runs its own attack (projected gradient ascent on ‖f(x) − ĝ(x)‖ over the
certified ball, from test images and random points) against report.json's certified bound.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """stem conv 8@3x3 stride 2 (28 -> 14), a block of 8, a block of 16 with stride 2 (-> 7), 7x7
    average pool, linear head: SPEC c8k3s2p1,rb8,rb16s2,ap7,fc10."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.layer1 = Block(8, 8, 1)
        self.layer2 = Block(8, 16, 2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(F.avg_pool2d(x, 7).flatten(1))


def _data(split):
    from subsetsum_lth.data.mnist import load_mnist
    x, y = load_mnist(split, dataset="fashion-mnist", as_images=True)
    return torch.from_numpy(x), torch.from_numpy(y)


def train(path, epochs=6, seed=0):
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    x, y = _data("train")
    model = ResNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * (len(x) // 128))
    t = time.time()
    for ep in range(epochs):
        perm = torch.randperm(len(x))
        model.train()
        for i in range(len(x) // 128):
            idx = perm[i * 128:(i + 1) * 128]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {ep + 1}: loss {loss.item():.3f}, {time.time() - t:.0f} s", flush=True)
    model.eval()
    xt, yt = _data("test")
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean().item()
    print(f"test accuracy {acc:.4f}, training {time.time() - t:.0f} s")
    torch.save(model.state_dict(), path)


def check(path, run):
    from subsetsum_lth import api
    torch.set_num_threads(2)
    t0 = time.time()
    model = ResNet()
    model.load_state_dict(torch.load(path, weights_only=True))
    model = model.eval()
    g = api.export_pruned(run, torch.float32).eval()
    rep = json.loads((Path(run) / "report.json").read_text())
    xt, yt = _data("test")
    with torch.no_grad():      # the whole test set through the rebuilt ĝ (float32, as a user runs it)
        f_out = torch.cat([model(xt[i:i + 500]) for i in range(0, len(xt), 500)])
        g_out = torch.cat([g(xt[i:i + 500]) for i in range(0, len(xt), 500)])
    out = {"target_accuracy": (f_out.argmax(1) == yt).double().mean().item(),
           "pruned_accuracy": (g_out.argmax(1) == yt).double().mean().item(),
           "agreement": (f_out.argmax(1) == g_out.argmax(1)).double().mean().item(),
           "report_pruned_accuracy": rep.get("evaluation", {}).get("pruned_accuracy",
                                                                   rep.get("pruned_accuracy")),
           "certified_bound": rep["certified_bound"], "input_radius": rep["input_radius"],
           "evaluation_seconds": round(time.time() - t0, 1)}
    model, g, xt = model.double(), api.export_pruned(run, torch.float64).eval(), xt.double()
    # the attack: projected gradient ascent on ‖f(x) − ĝ(x)‖ over {‖x‖ ≤ r, x ≥ 0}
    r = float(rep["input_radius"])
    gen = torch.Generator().manual_seed(1)
    starts = torch.cat([xt[:12], torch.rand(4, 1, 28, 28, generator=gen, dtype=torch.float64)])

    def project(x):
        x = x.clamp_min(0)
        n = x.flatten(1).norm(dim=1).clamp_min(1e-12)
        return x * torch.clamp(r / n, max=1.0).reshape(-1, 1, 1, 1)

    x = project(starts.clone()).requires_grad_(True)
    for step in range(40):
        err = (model(x) - g(x)).norm(dim=1)
        (grad,) = torch.autograd.grad(err.sum(), x)
        with torch.no_grad():
            gn = grad.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(-1, 1, 1, 1)
            x.copy_(project(x + 0.05 * r * 0.95 ** step * grad / gn))
    with torch.no_grad():
        out["attack_error"] = float((model(x) - g(x)).norm(dim=1).max())
    out["attack_under_bound"] = out["attack_error"] <= out["certified_bound"]
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    if sys.argv[1] == "train":
        train(sys.argv[2])
    else:
        check(sys.argv[2], sys.argv[3])
