"""What one node of a Dynamo graph says about itself: its example value (shape, dtype), whether it is a
parameter-like input, and which block of a module list it ran in. Shared by every pass and the runtime, so that
each reads node metadata the same way."""

from __future__ import annotations

import re

import torch
import torch.fx as fx


def example(n: fx.Node):
    """The value Dynamo traced `n` with: `example_value` (Dynamo graphs), else `val` (graphs from make_fx / AOT);
    None when neither is recorded."""
    return n.meta.get("example_value", n.meta.get("val"))


def shape(n: fx.Node) -> tuple | None:
    v = example(n)
    return tuple(v.shape) if isinstance(v, torch.Tensor) else None


def dtype(n: fx.Node) -> torch.dtype | None:
    v = example(n)
    return v.dtype if isinstance(v, torch.Tensor) else None


def is_tensor(n: fx.Node) -> bool:
    return isinstance(example(n), torch.Tensor)


def is_param_like(n: fx.Node) -> bool:
    """A graph input that is a parameter or buffer of the model (lifted by Dynamo), not data of the call."""
    td = n.meta.get("tensor_dict", {})
    return bool(td.get("_dynamo_static_input_type")) or "_parameters_" in n.name or "_buffers_" in n.name


def normalise(path: str) -> str:
    """"L['self'].__dict__['_modules']['blocks'].1" -> "blocks.1"; "L['self'].transformer_blocks[0]" -> ..."""
    path = re.sub(r"^[LG]\['[^']*'\]\.?", "", path)
    path = path.replace("forward.__self__.", "")  # a bound forward wrapped by a hook (diffusers' context parallelism)
    path = path.replace("__dict__['_modules']", "").replace("._modules", "")
    path = re.sub(r"\['([^']*)'\]", r".\1", path)
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    return re.sub(r"\.+", ".", path).strip(".")


def block_of(node: fx.Node) -> tuple[str, int, str] | None:
    """(list path, index, module type) of the outermost indexed module around `node`, if any."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    for path, mtype in stack.values():
        norm = normalise(path)
        m = re.match(r"^(.*)\.(\d+)$", norm)
        if m:
            return m.group(1), int(m.group(2)), getattr(mtype, "__qualname__", str(mtype))
    return None
