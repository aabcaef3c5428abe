"""Speed options for a score network: ``torch.compile``, mixed-precision autocast, channels-last memory.

``optimize(net, ...)`` returns a module that computes the same function as ``net`` (up to the precision
chosen) and shares its parameters. Use it where the network is only evaluated (sampling, likelihood,
evaluation); save checkpoints from the original ``net`` (``opt.net``), whose state-dict keys are unchanged.

Notes:

* ``compile``: the first call (and each new input shape) compiles, which takes seconds to minutes on a
  CPU; worthwhile for long sampling runs. ``compile_options`` go to ``torch.compile`` (``mode``,
  ``backend``, ``dynamic``, ...).
* ``autocast_dtype``: ``torch.bfloat16`` or ``torch.float16`` runs matrix products and convolutions in
  that precision (``torch.autocast`` on the input's device type) and returns the output in the input's
  dtype. Meant for GPUs: bf16 rounds to about 3 significant digits, which limits likelihood and ODE
  accuracy (keep float32 for ``log_likelihood``). On a CPU, bf16 autocast is usually slower.
* ``channels_last``: NHWC memory layout for 4-D inputs and the network's parameters (modified in
  place), which GPU convolution kernels (tensor cores) prefer; the output values are unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["OptimizedNet", "optimize", "AUTOCAST_DTYPES"]

AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)


class OptimizedNet(nn.Module):
    """A network evaluated through ``torch.compile``, autocast and/or channels-last memory.

    Args:
        net: module mapping ``(x, *args)`` (e.g. ``(x, t)``) to a tensor.
        compile: compile ``net.forward`` with ``torch.compile(**compile_options)``.
        autocast_dtype: None, ``torch.bfloat16`` or ``torch.float16``.
        channels_last: move ``net``'s parameters (in place) and 4-D inputs to channels-last memory.
        compile_options: keyword arguments of ``torch.compile``.

    Attributes not found on the wrapper (e.g. ``config``) are looked up on ``net``.

    Raises:
        TypeError: ``net`` is not an ``nn.Module``, or ``compile``/``channels_last`` are not bools.
        ValueError: ``autocast_dtype`` is not one of ``AUTOCAST_DTYPES``.
    """

    def __init__(
        self,
        net: nn.Module,
        compile: bool = False,
        autocast_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        compile_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        for name, flag in (("compile", compile), ("channels_last", channels_last)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        if autocast_dtype is not None and autocast_dtype not in AUTOCAST_DTYPES:
            raise ValueError(
                f"autocast_dtype must be None or one of {AUTOCAST_DTYPES}, got {autocast_dtype!r}"
            )
        self.net = net
        self.autocast_dtype = autocast_dtype
        self.channels_last = channels_last
        self.compiled = compile
        if channels_last:
            net.to(memory_format=torch.channels_last)
        # a plain function attribute, not a submodule: the state dict keeps only ``net.*`` keys
        self._forward = torch.compile(net.forward, **(compile_options or {})) if compile else net.forward

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.autocast_dtype is None:
            return self._forward(x, *args, **kwargs)
        with torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype):
            out = self._forward(x, *args, **kwargs)
        return out.to(x.dtype)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "net":
                raise
            return getattr(self.net, name)

    def extra_repr(self) -> str:
        dtype, layout = self.autocast_dtype, self.channels_last
        return f"compile={self.compiled}, autocast_dtype={dtype}, channels_last={layout}"


def optimize(
    net: nn.Module,
    compile: bool = False,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    compile_options: dict[str, Any] | None = None,
) -> nn.Module:
    """Wrap ``net`` for faster evaluation (see the module docstring); with no option set, ``net`` itself.

    Example: ``score = ds.ScoreModel(optimize(net, autocast_dtype=torch.bfloat16), sde)`` on a GPU.

    Raises:
        TypeError / ValueError: as :class:`OptimizedNet`.
    """
    if not (compile or autocast_dtype is not None or channels_last):
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        return net
    return OptimizedNet(net, compile, autocast_dtype, channels_last, compile_options)
