"""Peer checkpoints: small MLPs saved exactly the way their source code saves them.

Each builder writes one file into a folder and returns ``(path, model)`` where ``model`` is the
original ``nn.Module`` (in eval mode) whose outputs the loaded target must reproduce; the
refusal cases return ``(path, None)``. Sizes are tiny (8 inputs, 3 outputs) so that every test,
including an end-to-end ``approximate``, runs in seconds.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

SIZES = (8, 6, 5, 3)


class LeNet(nn.Module):
    """The lottery-ticket LeNet-300-100 shape (fc1/fc2/fc3), scaled down."""

    def __init__(self, sizes=SIZES):
        super().__init__()
        self.fc1 = nn.Linear(sizes[0], sizes[1])
        self.fc2 = nn.Linear(sizes[1], sizes[2])
        self.fc3 = nn.Linear(sizes[2], sizes[3])

    def forward(self, x):
        x = x.view(x.size(0), -1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class OpenLthLeNet(nn.Module):
    """open_lth's mnist_lenet: ``fc_layers`` (a ModuleList) then ``fc``."""

    def __init__(self, sizes=SIZES):
        super().__init__()
        self.fc_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-2], sizes[1:-1]))
        self.fc = nn.Linear(sizes[-2], sizes[-1])

    def forward(self, x):
        x = x.view(x.size(0), -1)
        for layer in self.fc_layers:
            x = torch.relu(layer(x))
        return self.fc(x)


class LayersClassifier(nn.Module):
    """``layers`` (Sequential with ReLUs) then ``classifier`` (Dropout, Linear, ReLU, Linear):
    keys ``layers.0``, ``classifier.1``, ``classifier.3``."""

    def __init__(self, sizes=SIZES):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(sizes[0], sizes[1]), nn.ReLU())
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(sizes[1], sizes[2]), nn.ReLU(),
                                        nn.Linear(sizes[2], sizes[3]))

    def forward(self, x):
        return self.classifier(self.layers(x))


class LightningMLP(nn.Module):
    """A LightningModule's shape: the network in ``self.model`` (keys ``model.0.weight``...)."""

    def __init__(self, sizes=SIZES):
        super().__init__()
        self.model = nn.Sequential(nn.Linear(sizes[0], sizes[1]), nn.ReLU(), nn.Linear(sizes[1], sizes[2]),
                                   nn.ReLU(), nn.Linear(sizes[2], sizes[3]))

    def forward(self, x):
        return self.model(x)


class SquareNet(nn.Module):
    """Several square hidden layers: their order cannot be read from the shapes."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 6)
        self.hid_a = nn.Linear(6, 6)
        self.hid_b = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        return self.out(torch.relu(self.hid_b(torch.relu(self.hid_a(torch.relu(self.inp(x)))))))


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 6)
        self.bn1 = nn.BatchNorm1d(6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn1(self.fc1(x))))


def _seeded(cls, seed=0, *args):
    torch.manual_seed(seed)
    return cls(*args)


def _trained_a_little(model: nn.Module) -> torch.optim.Optimizer:
    """One SGD step, so that the optimizer state (momentum buffers) is real, as in a checkpoint."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(4, SIZES[0])
    model(x).sum().backward()
    opt.step()
    return opt


def lenet_state_dict(d: Path):
    m = _seeded(LeNet)
    torch.save(m.state_dict(), d / "lenet.pt")                  # lottery-ticket style
    return d / "lenet.pt", m.eval()


def checkpoint_dict(d: Path):
    """pytorch/examples imagenet + lottery-ticket code: {'epoch','state_dict','optimizer',...}."""
    m = _seeded(LeNet)
    opt = _trained_a_little(m)
    torch.save({"epoch": 3, "arch": "lenet", "state_dict": m.state_dict(), "best_acc1": 97.5,
                "optimizer": opt.state_dict()}, d / "checkpoint.pth")
    return d / "checkpoint.pth", m.eval()


def imagenet_example(d: Path):
    """pytorch/examples imagenet/main.py: save_checkpoint(state, is_best, filename='checkpoint.pth.tar')."""
    m = _seeded(LeNet)
    opt = _trained_a_little(m)
    state = {"epoch": 1, "arch": "lenet", "state_dict": m.state_dict(), "best_acc1": torch.tensor(91.5),
             "optimizer": opt.state_dict(), "scheduler": {"last_epoch": 1}}
    torch.save(state, d / "checkpoint.pth.tar")
    return d / "checkpoint.pth.tar", m.eval()


def open_lth(d: Path):
    """open_lth's checkpoint.pth: {'ep','it','model_state_dict','optimizer_state_dict','running_loss'}."""
    m = _seeded(OpenLthLeNet)
    opt = _trained_a_little(m)
    torch.save({"ep": 1, "it": 10, "model_state_dict": m.state_dict(),
                "optimizer_state_dict": opt.state_dict(), "running_loss": 0.5}, d / "checkpoint.pth")
    return d / "checkpoint.pth", m.eval()


def data_parallel(d: Path):
    m = _seeded(LeNet)
    dp = nn.DataParallel(m)                                      # works on CPU (no GPUs needed)
    torch.save(dp.state_dict(), d / "dp.pth")                    # keys module.fc1.weight, ...
    return d / "dp.pth", m.eval()


def lightning_ckpt(d: Path):
    """The dict Lightning's checkpoint connector writes (state_dict keys prefixed 'model.')."""
    m = _seeded(LightningMLP)
    opt = _trained_a_little(m)
    ckpt = {"epoch": 4, "global_step": 40, "pytorch-lightning_version": "2.4.0",
            "state_dict": {"model." + k: v for k, v in m.model.state_dict().items()},
            "loops": {"fit_loop": {"epoch_progress": {"total": {"completed": 4}}}},
            "callbacks": {}, "optimizer_states": [opt.state_dict()], "lr_schedulers": [],
            "hparams_name": "kwargs", "hyper_parameters": {"lr": 0.01, "hidden": 6}}
    torch.save(ckpt, d / "epoch=4-step=40.ckpt")
    return d / "epoch=4-step=40.ckpt", m.eval()


def hf_bin(d: Path):
    """transformers' legacy save_pretrained: torch.save(state_dict, 'pytorch_model.bin')."""
    m = _seeded(LayersClassifier)
    torch.save(m.state_dict(), d / "pytorch_model.bin")
    return d / "pytorch_model.bin", m.eval()


def flatten_dropout_sequential(d: Path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(8, 6), nn.ReLU(), nn.Dropout(0.2), nn.Linear(6, 3))
    torch.save(m.state_dict(), d / "seq.pt")                     # keys 1.weight, 4.weight
    return d / "seq.pt", m.eval()


def safetensors_named(d: Path):
    from safetensors.torch import save_file
    m = _seeded(OpenLthLeNet)                                    # keys sort as fc.*, fc_layers.*
    save_file(m.state_dict(), str(d / "model.safetensors"), metadata={"format": "pt"})
    return d / "model.safetensors", m.eval()


def layers_classifier(d: Path):
    m = _seeded(LayersClassifier)
    torch.save({"model": m.state_dict(), "test_accuracy": 0.9}, d / "model.pt")
    return d / "model.pt", m.eval()


def net_key(d: Path):
    m = _seeded(LightningMLP)
    torch.save({"net": m.model.state_dict(), "epoch": 2}, d / "net.pt")   # keys 0., 2., 4.
    return d / "net.pt", m.eval()


def torch_pruned(d: Path):
    """torch.nn.utils.prune leaves weight_orig + weight_mask in the state_dict."""
    import torch.nn.utils.prune as prune
    m = _seeded(LeNet)
    for lin in (m.fc1, m.fc2, m.fc3):
        prune.l1_unstructured(lin, "weight", amount=0.5)
    torch.save(m.state_dict(), d / "pruned.pt")
    return d / "pruned.pt", m.eval()


def ambiguous_square(d: Path):
    m = _seeded(SquareNet)
    torch.save(m.state_dict(), d / "square.pt")
    return d / "square.pt", m.eval()


def pickled_module(d: Path):
    m = _seeded(LeNet)
    torch.save(m, d / "whole.pt")                                # the whole module, pickled
    return d / "whole.pt", None


def batchnorm(d: Path):
    m = _seeded(BNNet)
    torch.save(m.state_dict(), d / "bn.pt")
    return d / "bn.pt", None


def optimizer_only(d: Path):
    m = _seeded(LeNet)
    opt = _trained_a_little(m)
    torch.save({"epoch": 1, "optimizer": opt.state_dict()}, d / "opt.pt")
    return d / "opt.pt", None


LOADS = {
    "lenet-state_dict": lenet_state_dict,
    "checkpoint-dict": checkpoint_dict,
    "imagenet-example-pth-tar": imagenet_example,
    "open_lth": open_lth,
    "dataparallel": data_parallel,
    "lightning-ckpt": lightning_ckpt,
    "hf-bin": hf_bin,
    "flatten-dropout-sequential": flatten_dropout_sequential,
    "safetensors-named": safetensors_named,
    "layers-classifier": layers_classifier,
    "net-key": net_key,
    "torch-prune": torch_pruned,
}

REFUSED = {                 # ("batchnorm" is folded since issue 20; kept here for its file)
    "ambiguous-square": ambiguous_square,
    "pickled-module": pickled_module,
    "batchnorm": batchnorm,
    "optimizer-only": optimizer_only,
}
