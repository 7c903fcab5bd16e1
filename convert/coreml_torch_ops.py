"""Fixes to coremltools 9.0's torch frontend that our exported graphs need. Imported for its effect
(registering op converters) by `convert.coreml` only.

`aten.gelu` takes `approximate` as a keyword-only argument. A `torch.export` graph keeps it as a
node keyword, but coremltools 9.0's converter reads positional inputs only, so GPT-2's tanh GELU
silently becomes the exact (erf) GELU. This override reads the keyword as well."""

from __future__ import annotations

from coremltools.converters.mil import Builder as mb
from coremltools.converters.mil.frontend.torch.ops import _get_inputs
from coremltools.converters.mil.frontend.torch.torch_op_registry import register_torch_op

_MODES = {"none": "EXACT", "tanh": "TANH_APPROXIMATION"}


@register_torch_op(override=True)
def gelu(context, node):
    inputs = _get_inputs(context, node, min_expected=1)
    if len(inputs) > 1:
        name = inputs[1].val
    else:  # a plain string keyword, as torch.export records it
        raw = (node.kwinputs or {}).get("approximate", ["none"])
        name = raw[0] if isinstance(raw, list | tuple) else raw
    if name not in _MODES:
        raise NotImplementedError(f"gelu with approximate={name!r}")
    context.add(mb.gelu(x=inputs[0], mode=_MODES[name], name=node.name))
