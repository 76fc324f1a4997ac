"""The streams carried across each cut of the block stack (passes/discover.py): the tensors a unit reads from
before the cut and that are live after it, in order of first use."""

from __future__ import annotations

import torch.fx as fx

from .nodes import dtype, is_param_like, is_tensor, shape


def streams_at(nodes, pos, last_use, units, cuts, k) -> list[fx.Node]:
    """Tensors carried across cut k, in order of first use after the cut."""
    c = cuts[k]
    if k == 0:
        # Inputs of unit 0 that the next block of the same list does not also read: what the first block
        # transforms (not temb, rope, text embeddings shared by every block).
        twin = next(u for u in units[1:] if u.list_name == units[0].list_name)
        u0 = set(nodes[units[0].start:units[0].stop])
        u1 = set(nodes[twin.start:twin.stop])
        read0 = external_reads(nodes[units[0].start:units[0].stop], u0)
        read1 = set(external_reads(nodes[twin.start:twin.stop], u1))
        return [n for n in read0
                if n not in read1 and is_tensor(n) and not (n.op == "placeholder" and is_param_like(n))]
    lo = cuts[k - 1]
    live = [n for n in nodes[lo:c] if last_use.get(n, -1) >= c and is_tensor(n)]
    first_use = {n: min(pos[u] for u in n.users if pos[u] >= c) for n in live}
    return sorted(live, key=lambda n: first_use[n])


def close_loop(nodes, pos, last_use, units, cuts, streams, reach: int = 64) -> None:
    """Extend the last unit over the loop's trailing glue (Latte reshapes back to the spatial layout after its
    last temporal block) until the streams leaving it match the ones entering block 0 in shape."""
    want = [(shape(n), dtype(n)) for n in streams[0]]

    def matches(ss):
        have = [(shape(n), dtype(n)) for n in ss]
        return bool(have) and all(h in want for h in have)

    if matches(streams[-1]):
        return
    for p in range(cuts[-1] + 1, min(len(nodes) - 1, cuts[-1] + reach)):
        trial = cuts[:-1] + [p]
        ss = streams_at(nodes, pos, last_use, units, trial, len(trial) - 1)
        if matches(ss):
            units[-1].stop = cuts[-1] = p
            streams[-1] = ss
            return


def external_reads(unit_nodes, inside) -> list[fx.Node]:
    seen, out = set(), []
    for n in unit_nodes:
        for a in n.all_input_nodes:
            if a not in inside and a not in seen:
                seen.add(a)
                out.append(a)
    return out
