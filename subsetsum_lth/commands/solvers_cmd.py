"""`subsetsum-lth solvers`: list backends, availability and capabilities, and the routing table
of the default portfolio ``auto``."""
from __future__ import annotations

from subsetsum_lth.commands._common import print_json
from subsetsum_lth.request import SolversRequest
from subsetsum_lth.solvers.registry import DEFAULT_SOLVER, backend_info, list_backends
from subsetsum_lth.solvers.portfolio import routing_table

HELP = ("list solver backends, whether they are available here, what they can do, and which "
        "engine the default 'auto' sends each instance to")


#: the request `run` takes (subsetsum_lth.request)
REQUEST = SolversRequest


def add_arguments(p) -> None:
    SolversRequest.add_arguments(p)


def run(req: SolversRequest) -> int:
    infos = [backend_info(n) for n in list_backends()]
    for info in infos:
        info["default"] = info["name"] == DEFAULT_SOLVER
    routes = routing_table()
    for info in infos:
        if info["name"] == "auto":
            info["routing"] = routes
    if req.json:
        print_json(infos)
        return 0
    w = max([len(i["name"]) + 2 for i in infos] + [10])     # the name, its mark, a space
    print(f"{'name':{w}} {'available':10} {'exact':6} {'reach':6} objectives")
    for i in infos:
        mark = "*" if i["default"] else " "
        reach = "-" if i.get("reach") is None else f"n<={i['reach']}"
        line = f"{i['name'] + mark:{w}} {'yes' if i['available'] else 'no':10} {'yes' if i['exact'] else 'no':6} " \
               f"{reach:6} {', '.join(i['objectives'])}"
        if not i["available"]:
            line += f"   ({i.get('reason')})"
        print(line)
    print("* default; reach: the live counts it searches exactly by enumeration")
    print()
    print("auto routes each instance by objective and live count n (gurobi only with --solver gurobi):")
    for r in routes:
        span = f"n >= {r['live_min']}" if r["live_max"] is None else f"n = {r['live_min']}..{r['live_max']}"
        print(f"  {r['objective']:12} {span:12} -> {r['engine']:10} {r['how']}")
    return 0
