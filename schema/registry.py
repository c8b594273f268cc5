"""The registry of every API message, filled as ``schema.api`` modules are imported."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from schema.api.base import ApiMessage


class MessageRegistry:
    def __init__(self) -> None:
        self._messages: dict[str, type[ApiMessage]] = {}

    def register(self, cls: type[ApiMessage]) -> None:
        name = cls.__name__
        existing = self._messages.get(name)
        if existing is not None and existing is not cls:
            raise TypeError(
                f"API message name {name} is taken by {existing.__module__}.{existing.__qualname__}"
            )
        self._messages[name] = cls

    def get(self, name: str) -> type[ApiMessage] | None:
        return self._messages.get(name)

    def names(self) -> list[str]:
        """Every API a client may call (internal messages between nodes are left out)."""
        return sorted(name for name, cls in self._messages.items() if not cls.internal)

    def __contains__(self, name: str) -> bool:
        return name in self._messages

    def json_schema(self) -> dict[str, Any]:
        """Every message's request and reply JSON Schema, keyed by message name."""
        return {
            name: {
                "service": cls.service,
                "mutating": cls.mutating,
                "resourceField": cls.resource_field,
                "request": cls.model_json_schema(by_alias=True),
                "reply": cls.reply.model_json_schema(by_alias=True),
            }
            for name, cls in sorted(self._messages.items())
            if not cls.internal
        }


REGISTRY = MessageRegistry()


def load_all() -> MessageRegistry:
    """Import every API module so the registry is complete."""
    import schema.api  # noqa: F401  (the import registers the messages)

    return REGISTRY
