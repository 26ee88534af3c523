"""The vision tower's patch embedding as a matrix product instead of a 3-D convolution.

Qwen-VL towers embed each flattened ``channels × frames × patch × patch`` patch with a ``Conv3d`` whose
kernel equals its stride: every output is one patch's dot product with one filter, i.e. a linear layer
over the rows ``pixel_values`` already holds. PyTorch runs that convolution as a general 3-D one,
3.5× slower forward and 6× slower forward + backward than the matmul on CPU (the same sums in another
order; vLLM made the same change for these towers). The weights stay the convolution's, so checkpoints,
state dicts and weight sync are unchanged.
"""

from __future__ import annotations

import types

import torch


def _linear_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    proj = self.proj
    if hasattr(proj.weight, "ds_id"):  # a ZeRO-3 partition: only the convolution's own hooks gather it
        return type(self).forward(self, hidden_states)
    weight = proj.weight.reshape(proj.out_channels, -1)
    return torch.nn.functional.linear(hidden_states.reshape(-1, weight.shape[1]).to(weight.dtype), weight, proj.bias)


def linear_patch_embed(model: torch.nn.Module) -> int:
    """Run every patch embedding of ``model`` whose ``proj`` is a convolution with kernel = stride (no
    padding, dilation or groups) as a matmul; returns how many were switched. Others are left alone."""
    switched = 0
    for module in model.modules():
        proj = getattr(module, "proj", None)
        if not type(module).__name__.endswith("PatchEmbed") or not isinstance(proj, torch.nn.Conv3d):
            continue
        pad = proj.padding
        plain = (
            tuple(proj.kernel_size) == tuple(proj.stride)
            and (pad == "valid" or (not isinstance(pad, str) and all(p == 0 for p in pad)))
            and all(d == 1 for d in proj.dilation)
            and proj.groups == 1
            and proj.padding_mode == "zeros"
        )
        if plain:
            module.forward = types.MethodType(_linear_forward, module)
            switched += 1
    return switched
