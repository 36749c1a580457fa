"""Selecting the parameters to prune, writing pruned weights back, the masks (chita_core.torch)."""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _qualified(mod_name: str, attr: str) -> str:
    return f"{mod_name}.{attr}" if mod_name else attr


def _aliases(model: nn.Module) -> dict[int, list[tuple[str, nn.Module, str]]]:
    """id(tensor) -> every (qualified name, module, attribute) that holds that parameter or
    buffer, one per distinct module (a module reachable by two paths counts once). A tied tensor
    has several; the first is its name in ``model.named_parameters()`` / ``named_buffers()``."""
    out: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for mod_name, mod in model.named_modules():
        for attr, t in itertools.chain(mod._parameters.items(), mod._buffers.items()):
            if t is not None:
                out.setdefault(id(t), []).append((_qualified(mod_name, attr), mod, attr))
    return out


def _masked(mod: nn.Module, attr: str) -> bool:
    """Whether ``mod.attr`` is already reparametrised by a ``torch.nn.utils.prune`` mask."""
    return hasattr(mod, attr + "_mask") and attr + "_orig" in mod._parameters


def _already_masked(qual: str) -> ValueError:
    return ValueError(
        f"`params`: {qual} already carries a pruning mask; call "
        "chita_core.torch.remove_masks(model) first"
    )


def _select(model: nn.Module, params: Any) -> list[tuple[str, nn.Module, str, nn.Parameter]]:
    """The parameters to prune as (name, module, attribute, parameter), each parameter once.

    A parameter tied between modules (e.g. an embedding shared with the output layer) is one
    entry whatever alias selected it, named as in ``model.named_parameters()``; the module and
    attribute are its first alias (:func:`_aliases` lists them all)."""
    aliases = _aliases(model)
    by_id = {id(par): par for par in model.parameters()}
    by_name = dict(model.named_parameters(remove_duplicate=False))  # every alias's name
    module_names = {id(mod): name for name, mod in model.named_modules()}
    chosen: list[nn.Parameter] = []
    if params is None:
        for mod_name, mod in model.named_modules():
            if not isinstance(mod, _PRUNABLE):
                continue
            if _masked(mod, "weight"):  # pruned before
                raise _already_masked(_qualified(mod_name, "weight"))
            weight = mod._parameters.get("weight")
            if isinstance(weight, nn.Parameter) and weight.numel() > 0:  # empty: nothing to do
                chosen.append(weight)
        if not chosen:
            raise ValueError(
                "`model` has no Linear or Conv layer with a weight to prune; pass `params` "
                "(modules, parameters or parameter names)"
            )
    else:
        if isinstance(params, (str, nn.Module, nn.Parameter)):
            params = [params]
        try:
            items = list(params)
        except TypeError:
            raise TypeError(
                "`params` must be None or a list of modules, parameters or parameter names, got "
                f"{type(params).__name__}"
            ) from None
        if not items:
            raise ValueError(
                "`params` is empty: pass the modules, parameters or parameter names to prune, or "
                "None for the weights of every Linear and Conv layer"
            )
        for item in items:
            if isinstance(item, str):
                if item not in by_name:
                    mod_name, _, attr = item.rpartition(".")
                    try:
                        mod = model.get_submodule(mod_name)
                    except AttributeError:
                        mod = None
                    if mod is not None and _masked(mod, attr):
                        raise _already_masked(item)
                    raise ValueError(f"`params`: {item!r} is not a parameter of `model`")
                chosen.append(by_name[item])
            elif isinstance(item, nn.Parameter):
                if id(item) not in by_id:
                    raise ValueError(
                        f"`params`: a parameter of shape {tuple(item.shape)} is not in `model`"
                    )
                chosen.append(item)
            elif isinstance(item, nn.Module):
                mod_name = module_names.get(id(item))
                if mod_name is not None and _masked(item, "weight"):
                    raise _already_masked(_qualified(mod_name, "weight"))
                weight = getattr(item, "weight", None)
                if not isinstance(weight, nn.Parameter) or id(weight) not in by_id:
                    raise ValueError(
                        f"`params`: module {type(item).__name__} is not in `model` or has no "
                        "`weight` parameter"
                    )
                chosen.append(weight)
            else:
                raise TypeError(
                    "`params` entries must be modules, parameters or parameter names, got "
                    f"{type(item).__name__}"
                )
    out, seen = [], set()
    for par in chosen:
        if id(par) in seen:  # named twice, or through two aliases of a tied parameter
            continue
        seen.add(id(par))
        (qual, mod, attr), *_ = holders = aliases[id(par)]
        for q, m, a in holders:
            if a.endswith("_orig") and _masked(m, a[: -len("_orig")]):
                raise _already_masked(q[: -len("_orig")])
        if not par.is_floating_point():
            raise TypeError(f"`params`: {qual} is {par.dtype}, not floating point")
        if par.dtype not in (torch.float32, torch.float64):
            raise TypeError(
                f"`params`: {qual} is {par.dtype}; chita_core computes the gradients and solves "
                "in float32 or float64: prune a float32 copy of the model (`model.float()`, with "
                f"float32 inputs) and cast it back afterwards (`model.to({par.dtype})`)"
            )
        if par.numel() == 0:
            raise ValueError(f"`params`: {qual} has no elements, so nothing to prune")
        out.append((qual, mod, attr, par))
    return out


def _write_back(selected, w: torch.Tensor) -> None:
    off = 0
    with torch.no_grad():
        for _, _, _, par in selected:
            m = par.numel()
            par.copy_(w[off : off + m].view_as(par))
            off += m


def remove_masks(model: nn.Module) -> list[str]:
    """Makes every ``torch.nn.utils.prune`` mask in ``model`` permanent (the zeros stay, the
    masks and ``*_orig`` parameters go). Returns the names of the tensors unmasked (every
    module of a tied tensor: they end up holding the one Parameter again, still tied)."""
    done = []
    for mod_name, mod in model.named_modules():
        hooks = [
            h
            for h in mod._forward_pre_hooks.values()
            if isinstance(h, torch_prune.BasePruningMethod)
        ]
        for hook in hooks:
            names = [h._tensor_name for h in getattr(hook, "_pruning_methods", [hook])]
            for attr in dict.fromkeys(names):
                if hasattr(mod, attr + "_mask"):
                    torch_prune.remove(mod, attr)
                    done.append(f"{mod_name}.{attr}" if mod_name else attr)
    return done
