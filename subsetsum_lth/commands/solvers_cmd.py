"""`subsetsum-lth solvers`: list backends, availability and capabilities."""
from __future__ import annotations

from subsetsum_lth.commands._common import print_json
from subsetsum_lth.request import SolversRequest

HELP = "list solver backends, whether they are available here, and what they can do"


#: the request `run` takes (subsetsum_lth.request)
REQUEST = SolversRequest


def add_arguments(p) -> None:
    SolversRequest.add_arguments(p)


def run(req: SolversRequest) -> int:
    from subsetsum_lth.solvers.registry import DEFAULT_SOLVER, backend_info, list_backends
    infos = [backend_info(n) for n in list_backends()]
    for info in infos:
        info["default"] = info["name"] == DEFAULT_SOLVER
    if req.json:
        print_json(infos)
        return 0
    w = max([len(i["name"]) + 2 for i in infos] + [10])     # the name, its mark, a space
    print(f"{'name':{w}} {'available':10} {'exact':6} objectives")
    for i in infos:
        mark = "*" if i["default"] else " "
        line = f"{i['name'] + mark:{w}} {'yes' if i['available'] else 'no':10} {'yes' if i['exact'] else 'no':6} " \
               f"{', '.join(i['objectives'])}"
        if not i["available"]:
            line += f"   ({i.get('reason')})"
        print(line)
    print("* default")
    return 0
