"""Live tensor memory on any device, CPU included: the bytes of every tensor storage that exists,
and their peak — what `torch.cuda.max_memory_allocated` reports on a GPU, which CPUs have no
counterpart for.

`LiveTensorBytes` is a `TorchDispatchMode`: every operator's output passes through it, and each
storage it has not seen yet is counted once (views and tensors that share a storage count once)
with a weak reference whose callback takes the bytes off when the storage is freed. Storages
resized in place through `UntypedStorage.resize_` (FSDP2 frees and re-allocates its gathered
parameters that way, and the dispatcher does not see it) are followed by patching that method
while the tracker runs. Tensor subclasses (DTensor) are counted by the plain tensors inside them.

What it does not see: memory a kernel allocates for itself and frees before it returns
(workspaces), the buffers of communication libraries (gloo, NCCL), and tensors that existed
before the tracker started unless they are `adopt`ed.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_leaves


def _plain_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The tensors that own storage: a subclass such as DTensor holds them inside."""
    if is_traceable_wrapper_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()
        inner = [getattr(tensor, name) for name in names]
        return [plain for t in inner if isinstance(t, torch.Tensor) for plain in _plain_tensors(t)]
    return [tensor]


class LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of live tensor storages while active (`with LiveTensorBytes() as live:`).

    `current` is the bytes alive now, `peak` the most alive at once since the start or the last
    `reset_peak()`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        # id(storage) → (weak reference, bytes counted). The reference's callback removes the
        # entry when the storage dies, before its id can be reused.
        self._storages: dict[int, tuple[weakref.ref, int]] = {}
        self._original_resize = torch.UntypedStorage.resize_

    def __enter__(self) -> LiveTensorBytes:
        tracker = self
        original = self._original_resize

        def resize_(storage: torch.UntypedStorage, size: int) -> Any:
            result = original(storage, size)
            tracker._count(storage)
            return result

        torch.UntypedStorage.resize_ = resize_  # type: ignore[method-assign]
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        torch.UntypedStorage.resize_ = self._original_resize  # type: ignore[method-assign]
        super().__exit__(*exc)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        # Outputs include the tensor an in-place or out= operator wrote to, whose storage may
        # have grown (resize_).
        self.adopt(out)
        return out

    def adopt(self, *objects: Any) -> None:
        """Count the storages of tensors in any nesting of lists, tuples and dicts: every
        operator's output goes through here, and tensors made before the tracker started can."""
        for leaf in tree_leaves(objects):
            if isinstance(leaf, torch.Tensor):
                for tensor in _plain_tensors(leaf):
                    if tensor.device.type != "meta":
                        self._count(tensor.untyped_storage())

    def reset_peak(self) -> None:
        """Start a new peak from the bytes alive now."""
        self.peak = self.current

    def _count(self, storage: torch.UntypedStorage) -> None:
        size = storage.nbytes()
        key = id(storage)
        entry = self._storages.get(key)
        if entry is not None and entry[0]() is storage:
            if entry[1] == size:
                return
            self.current -= entry[1]
            reference = entry[0]
        else:
            reference = weakref.ref(storage, lambda _, key=key: self._forget(key))
        self._storages[key] = (reference, size)
        self.current += size
        self.peak = max(self.peak, self.current)

    def _forget(self, key: int) -> None:
        _, size = self._storages.pop(key)
        self.current -= size
