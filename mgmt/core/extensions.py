"""Extension points: typed hooks that plugins register into, in order, instead of editing the core.

    class MyHook(VmInstantiateExtension): ...
    extensions.register(VmInstantiateExtension, MyHook(), order=10)
    for hook in extensions.get(VmInstantiateExtension): ...

Network services (DHCP, DNS, SNAT, EIP, ...) hook VM instantiation this way; security groups will
observe NIC events. Removing a plugin removes its hooks and nothing else.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, TypeVar

T = TypeVar("T")


class ExtensionRegistry:
    def __init__(self) -> None:
        self._hooks: dict[type[Any], list[tuple[int, int, Any]]] = defaultdict(list)
        self._count = 0

    def register(self, point: type[T], hook: T, order: int = 100) -> None:
        self._count += 1  # ties keep registration order
        self._hooks[point].append((order, self._count, hook))
        self._hooks[point].sort(key=lambda entry: (entry[0], entry[1]))

    def get(self, point: type[T]) -> list[T]:
        return [hook for _, _, hook in self._hooks.get(point, [])]
