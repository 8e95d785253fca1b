"""What megatron-core 0.16 needs to run on a CPU with gloo, applied once by the CPU backend.

megatron-core is written for CUDA. It calls ``torch.cuda.*`` directly, creates tensors with a
literal ``device="cuda"`` and checks parameter type strings. torch_npu's ``transfer_to_npu``
solves the same class of problem for Ascend by redirecting ``torch.cuda`` to ``torch.npu``; this
module is that idea for CPU + gloo. Every redirection is listed in ``REDIRECTS`` with the upstream
object it relies on, and ``tests/test_cpu_redirects.py`` fails if an upgrade of megatron-core
removes or renames one of them (so the redirection is revisited, not silently skipped).

Nothing here is imported on a CUDA or NPU host: only ``CpuBackend.setup`` calls ``apply``.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable
from dataclasses import dataclass

import torch

from moetrain.device import cpu_rng

_APPLIED = False


@dataclass(frozen=True)
class Redirect:
    """One redirection: which upstream object it touches, why, and how."""

    target: str  # "module:attribute" that must exist upstream
    why: str
    apply: Callable[[], None]


def _resolve(target: str):
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    return module, attr


# ---------------------------------------------------------------- torch.cuda stand-ins
class _NullStream:
    """torch.cuda.Stream / Event stand-in: CPU work is synchronous, so waits are no-ops."""

    def __init__(self, *args, **kwargs):
        del args, kwargs

    def wait_stream(self, other) -> None:
        del other

    def wait_event(self, event) -> None:
        del event

    def record_event(self, event=None):
        return event or _NullStream()

    def record(self, stream=None) -> None:
        del stream

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def wait(self, stream=None) -> None:
        del stream

    def __eq__(self, other) -> bool:
        # Every CPU "stream" is the same stream: code that checks "am I on a side stream"
        # (the alltoall dispatcher) must conclude it is not.
        return isinstance(other, _NullStream)

    def __hash__(self) -> int:
        return 0

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        del exc


def _stream_context(stream=None):
    del stream
    return _NullStream()


def _patch_torch_cuda() -> None:
    cuda = torch.cuda
    # Factories receive ``device=torch.cuda.current_device()``: on CPU that must name the CPU.
    cuda.current_device = lambda: "cpu"
    cuda.set_device = lambda device: None
    cuda.device_count = lambda: 0
    cuda.synchronize = lambda device=None: None
    cuda.empty_cache = lambda: None
    cuda.Stream = _NullStream
    cuda.Event = _NullStream
    cuda.current_stream = lambda device=None: _NullStream()
    cuda.default_stream = lambda device=None: _NullStream()
    cuda.stream = _stream_context
    cuda.manual_seed = cpu_rng.device_manual_seed
    cuda.get_rng_state = cpu_rng.get_device_rng_state
    cuda.set_rng_state = cpu_rng.set_device_rng_state
    cuda.random.get_rng_state = cpu_rng.get_device_rng_state
    cuda.random.set_rng_state = cpu_rng.set_device_rng_state
    # Tensor.record_stream needs a real CUDA stream.
    torch.Tensor.record_stream = lambda self, stream: None


def _patch_tensor_cuda() -> None:
    # ``tensor.cuda()`` in megatron-core means "to the compute device", which is the CPU here.
    torch.Tensor.cuda = lambda self, *args, **kwargs: self


class _CpuTypeName(str):
    """``param.type()`` of a CPU tensor that also equals its ``torch.cuda.*`` spelling.

    megatron-core's optimizers accept only 'torch.cuda.FloatTensor' / Half / BFloat16 (six places in
    optimizer.py, distrib_optimizer.py, clip_grads.py). Equality here treats 'torch.X' and
    'torch.cuda.X' as the same type name, which is exactly the check those places mean.
    """

    def __eq__(self, other) -> bool:
        if isinstance(other, str):
            return str.__eq__(self, other.replace("torch.cuda.", "torch.", 1))
        return NotImplemented

    def __ne__(self, other) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    __hash__ = str.__hash__


def _patch_tensor_type() -> None:
    original = torch.Tensor.type

    def type_(self, dtype=None, non_blocking=False, **kwargs):
        if dtype is None and not kwargs:
            return _CpuTypeName(original(self))
        return original(self, dtype, non_blocking, **kwargs)

    torch.Tensor.type = type_


# ---------------------------------------------------------------- literal device="cuda"
class _CudaToCpuTorch(types.ModuleType):
    """A view of the ``torch`` module for upstream modules that build tensors on ``"cuda"``.

    Installed as the module-global ``torch`` of those modules only: factory functions see
    ``device="cuda"`` (or ``cuda:N``) turned into ``"cpu"``; every other attribute is torch's own.
    """

    _FACTORIES = ("zeros", "ones", "empty", "full", "tensor", "arange", "empty_like", "zeros_like",
                  "ones_like", "full_like", "rand", "randn", "randint")

    def __init__(self) -> None:
        super().__init__("torch")
        for name in self._FACTORIES:
            setattr(self, name, self._wrap(getattr(torch, name)))

    @staticmethod
    def _wrap(factory):
        def call(*args, **kwargs):
            device = kwargs.get("device")
            if device is not None and str(device).startswith("cuda"):
                kwargs["device"] = "cpu"
                kwargs.pop("pin_memory", None)
            return factory(*args, **kwargs)

        call.__name__ = factory.__name__
        return call

    def __getattr__(self, name):
        return getattr(torch, name)


_LITERAL_CUDA_MODULES = (
    "megatron.core.transformer.utils",  # causal / attention masks
    "megatron.core.transformer.moe.moe_utils",  # aux-loss tracker buffers
    "megatron.core.pipeline_parallel.schedules",  # total_num_tokens
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.optimizer.optimizer",  # found_inf, scale
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.grad_scaler",
    "megatron.core.dist_checkpointing.exchange_utils",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
    "megatron.core.tensor_parallel.data",
    "megatron.core.utils",
)


def _patch_literal_cuda_modules() -> None:
    proxy = _CudaToCpuTorch()
    for name in _LITERAL_CUDA_MODULES:
        module = importlib.import_module(name)
        module.torch = proxy


# ---------------------------------------------------------------- megatron-core specifics
def _patch_rng_tracker() -> None:
    random = importlib.import_module("megatron.core.tensor_parallel.random")
    random.CudaRNGStatesTracker = cpu_rng.make_cpu_tracker_class(random.CudaRNGStatesTracker)
    random._get_cuda_rng_state = cpu_rng.get_device_rng_state
    random._set_cuda_rng_state = cpu_rng.set_device_rng_state


def _patch_moe_utils() -> None:
    moe_utils = importlib.import_module("megatron.core.transformer.moe.moe_utils")
    # Referenced unconditionally by the router GEMM but defined only when TE imports.
    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None
    original = moe_utils.maybe_move_tensor_to_cpu

    def maybe_move_tensor_to_cpu(tensor, as_numpy=False, record_stream=False):
        # Upstream returns the CPU tensor itself (not numpy) when it is already on the CPU, and
        # gloo's all_to_all_single then rejects tensor split sizes: give it plain lists.
        if torch.is_tensor(tensor) and not tensor.is_cuda and as_numpy:
            return tensor.numpy()
        return original(tensor, as_numpy=as_numpy, record_stream=record_stream)

    moe_utils.maybe_move_tensor_to_cpu = maybe_move_tensor_to_cpu
    dispatcher = importlib.import_module("megatron.core.transformer.moe.token_dispatcher")
    dispatcher.maybe_move_tensor_to_cpu = maybe_move_tensor_to_cpu


REDIRECTS: tuple[Redirect, ...] = (
    Redirect("torch.cuda:current_device", "factories get device=torch.cuda.current_device()",
             _patch_torch_cuda),
    Redirect("torch:Tensor", "tensor.cuda() means 'to the compute device'", _patch_tensor_cuda),
    Redirect("torch:Tensor", "optimizers compare param.type() with 'torch.cuda.FloatTensor'",
             _patch_tensor_type),
    *(Redirect(f"{m}:torch", "tensors created with a literal device='cuda'", lambda: None)
      for m in _LITERAL_CUDA_MODULES),
    Redirect("megatron.core.transformer.utils:torch", "(applies the module list above)",
             _patch_literal_cuda_modules),
    Redirect("megatron.core.tensor_parallel.random:CudaRNGStatesTracker",
             "TP/EP replicas must be seeded through real CPU generator states", _patch_rng_tracker),
    Redirect("megatron.core.tensor_parallel.random:_get_cuda_rng_state",
             "activation recompute saves and restores the device RNG state", lambda: None),
    Redirect("megatron.core.transformer.moe.moe_utils:maybe_move_tensor_to_cpu",
             "gloo all_to_all_single needs list split sizes", _patch_moe_utils),
    Redirect("megatron.core.transformer.moe.token_dispatcher:maybe_move_tensor_to_cpu",
             "the dispatcher imported the function by name", lambda: None),
)


def missing_targets() -> list[str]:
    """Upstream objects a redirection relies on that no longer exist (empty when all is well)."""
    missing = []
    for redirect in REDIRECTS:
        module, attr = _resolve(redirect.target)
        if not hasattr(module, attr):
            missing.append(redirect.target)
    return missing


def apply() -> None:
    """Apply every redirection once per process (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    for redirect in REDIRECTS:
        redirect.apply()
    _APPLIED = True


def is_applied() -> bool:
    return _APPLIED
