"""Edge-popup (Ramanujan et al. 2020, "What's hidden in a randomly weighted neural network?")
on the random network g: learn one score per weight, keep the top-k fraction, never touch a
weight.

* **Scores.** Every prunable entry of g gets a score; the mask is the top-k of |score|
  (``GetSubnet``: forward = 0/1 top-k mask, backward = identity, the straight-through
  estimator of allenai/hidden-networks). Scores start kaiming-uniform as in hidden-networks
  (``kaiming_uniform_(a=sqrt(5))`` = U[-1/sqrt(fan_in), 1/sqrt(fan_in)], the same bound for
  bias scores) from a CPU generator seeded by ``seed``, so runs are reproducible on any device.
* **What is prunable (eligible).** ``structure='free'``: every entry of every weight tensor,
  and of every bias tensor that is not all zeros (all-zero biases are left out and masked 0).
  ``structure='structured'``: only the entries that the construction's block-diagonal
  pre-pruning allows (``mask_rules.prepruning_masks``; Pensia et al.'s Figure 1c), which
  needs the construction's block plan (rebuilt from the run's report.json or from shapes).
* **Kept fraction.** ``keep`` = k is the fraction KEPT. With ``scope='layer'`` every scored
  tensor (a Linear layer's weight and its bias are ranked separately) keeps exactly
  ``ceil(k * n_eligible)`` entries, k read as the decimal number given (so k=0.1 of 10 keeps
  1); with ``scope='global'`` one top-k over all eligible entries keeps exactly
  ``ceil(k * total_eligible)``. Ties in |score| (rare with float scores) are broken towards
  the lower flat index on CPU; on CUDA ``torch.topk`` picks among tied entries.
* **Training.** SGD on the scores only (momentum 0.9, weight decay 5e-4 on the scores, lr
  0.02, batch 128), a per-step cosine schedule, cross-entropy on MNIST pixels / 255. The
  default budget is one epoch of ``CPU_TRAIN_SUBSET`` images on CPU (all of them on CUDA).
  hidden-networks' lr 0.1 is too large here: g's hidden widths are in the tens of thousands,
  so the kaiming-uniform scores of its wide layers start tiny (1/sqrt(fan_in)) while their
  gradients do not shrink with the width; one step at 0.1 with momentum moves them by about
  their own size, the top-k reshuffles and the network ends switched off (loss ln 10).
* **No rescaling of the weights.** hidden-networks draws its weights with std
  sqrt(2/fan_in) (÷ sqrt(k) with ``scale_fan``); here the masks must be masks of g's stored
  weights, used as they are (``weight_scaling`` in the report). A ReLU network is positively
  homogeneous: per-layer scales c_j (biases scaled along) multiply the logits by prod c_j,
  which the temperature below absorbs. The
  weights are plain tensors outside the optimiser (``requires_grad=False``) and stay
  bit-for-bit what was loaded. The loss is taken on logits / T with T (``temperature='auto'``)
  the standard deviation of the initial masked network's logits: g's U[-1, 1] weights give
  logits in the hundreds, where the saturated loss drives the scores to switch the network
  off; dividing by T > 0 changes no prediction (T = 1 is plain edge-popup).
* **Without the inner ReLU** (``inner_relu=False``, ``--no-inner-relu``): the construction's
  layers 2i-1 (Linear layers 0, 2, 4, ... of the Sequential) are used linearly, as in the
  variant of Pensia et al.'s Figure 1c without ReLU; with ``structure='structured'`` the sign
  pruning (which only removes units a ReLU would switch off) is then dropped. The report records
  ``inner_relu``, ``relu_after`` and ``modules`` (``Identity`` where no ReLU is applied), and
  ``compare`` rebuilds ĝ accordingly; such a run folder is *not* the plain
  Sequential(Linear, ReLU, ..., Linear) of DESIGN §5.
* **Temperature.** ``temperature='batch'`` divides each batch's logits by their own (detached)
  standard deviation instead of a constant fixed at the start.
* **Devices.** ``device='auto'`` takes CUDA when present. The CUDA path never leaves the
  device inside the training loop (top-k by ``torch.topk``; loss and accuracy accumulate on
  the device and are read once every ``sync_every`` steps). On CPU the exact top-k threshold
  comes from numpy's introselect (``np.partition``), much faster there than ``torch.topk``,
  and layers whose eligible entries are sparse (the structured block-diagonal layers) are
  computed by a gather/scatter instead of a dense product, layers whose eligible entries are
  whole columns (the structured second layers) by a dense product over those columns.

* **Image networks (CNN targets).** For a run or target with convolutions, g is the
  construction's network of :class:`subsetsum_lth.gnet.GLayout` (k×k Conv2d and 1×1 Conv2d
  pairs, the target's pooling/flatten copied); every conv kernel and linear weight is a scored
  tensor (per-layer top-k per tensor, or one global top-k), ``structure='structured'`` uses
  ``mask_rules.prepruning_masks`` on that layout, ``inner_relu=False`` drops the ReLU after
  the first layer of every pair. The flat MNIST images are reshaped to N×C×H×W by the layout's
  ``input_shape``; a kernel with few eligible entries (the structured k×k layers: one per hidden
  channel) is computed over the unfolded patches. report.json then also records
  ``target_arch``, ``input_shape`` and ``g_arch`` (checked by ``read_run`` against the
  construction rebuilt from ``construction_plan``) and, from a run, its ``input_radius``.

The run folder has the same format as ``approximate``'s (DESIGN §5): ``random_net.safetensors``
(the same random weights; a byte-identical copy for ``from_run``), ``masks.safetensors``,
``report.json``, ``metrics.csv``, ``training_curve.png`` and, when the target is known,
``target.safetensors``.

Modules: ``config`` (EdgePopupConfig), ``scores`` (top-k and the straight-through functions),
``network`` (EdgePopupNet), ``sources`` (where g comes from, eligibility), ``train`` (devices,
data, the loop), ``evaluate``, ``folder`` (the run folder), ``plots``, ``run`` (run_edge_popup).
"""
from __future__ import annotations

# the public names of the former single module, re-exported (flake8: F401 on purpose)
from subsetsum_lth.edge_popup.config import (  # noqa: F401
    CPU_TRAIN_SUBSET, DEVICES, METHOD, SCOPES, SELECTIONS, STRUCTURES, TEMPERATURES, WIDE_INITS,
    EdgePopupConfig)
from subsetsum_lth.edge_popup.evaluate import evaluate_on_device  # noqa: F401
from subsetsum_lth.edge_popup.network import (  # noqa: F401
    SPARSE_DENSITY, EdgePopupNet, module_names, relu_layout)
from subsetsum_lth.edge_popup.plots import CURVE_PNG, plot_curve  # noqa: F401
from subsetsum_lth.edge_popup.run import run_edge_popup
from subsetsum_lth.edge_popup.scores import GetSubnet, MaskedValues, kept_count, topk_mask
from subsetsum_lth.edge_popup.sources import (  # noqa: F401
    RandomNet, _plan_entries, eligibility, load_random_net, mlp_parameters, parse_sizes,
    plans_from_report, wide_network, wide_sizes)
from subsetsum_lth.edge_popup.train import (  # noqa: F401
    Progress, device_description, logit_temperature, resolve_device, resolve_train_subset,
    train_scores, train_step)

__all__ = ["EdgePopupConfig", "EdgePopupNet", "GetSubnet", "MaskedValues", "topk_mask", "kept_count",
           "run_edge_popup", "load_random_net", "plans_from_report", "eligibility", "wide_sizes",
           "wide_network", "train_scores", "train_step", "resolve_device", "RandomNet", "SCOPES",
           "STRUCTURES", "relu_layout", "module_names"]
