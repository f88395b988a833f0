"""`subsetsum-lth export-dense RUN`: write the dense files of a compact run folder."""
from __future__ import annotations

from subsetsum_lth.commands._common import print_json
from subsetsum_lth.request import ExportDenseRequest
from subsetsum_lth.runwriter import export_dense

HELP = "write random_net.safetensors and masks.safetensors of a run stored with --store compact"
DESCRIPTION = (
    "A run stored compact (approximate --store compact, or auto above 2e8 entries of g) holds the "
    "block support of g, its masks and the generator specification. This command checks them "
    "(every stored value must be what the specification regenerates) and writes the dense "
    "random_net.safetensors and masks.safetensors into the run folder, byte-identical to what "
    "approximate --store dense writes for the same run. Needs about 5 bytes of disk per entry of g.")


#: the request `run` takes (subsetsum_lth.request)
REQUEST = ExportDenseRequest


def add_arguments(p) -> None:
    ExportDenseRequest.add_arguments(p)


def run(req: ExportDenseRequest) -> int:
    paths = export_dense(req.run)
    if req.json:
        print_json({"run": str(req.run), "files": [str(p) for p in paths]})
        return 0
    for p in paths:
        print(f"wrote {p} ({p.stat().st_size:,} bytes)")
    return 0
