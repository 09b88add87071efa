"""Local publish/subscribe between the components of one device (``PublishToTopic`` / ``SubscribeToTopic``).

Subscriptions may use MQTT wildcards (``+``, ``#``), as on nucleus ≥ 2.6. ``receiveMode``
``RECEIVE_MESSAGES_FROM_OTHERS`` keeps a component's own messages from coming back to it; it is the default
for a filter with a wildcard, ``RECEIVE_ALL_MESSAGES`` otherwise (``PubSubIPCEventStreamAgent``). Delivery is
in publish order per subscriber; nothing is kept for a component that is not subscribed (as in the nucleus).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["LocalBus", "topic_matches"]

Deliver = Callable[[dict[str, Any]], None]


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching: ``+`` one level, a trailing ``#`` any number (the parent included)."""
    want, have = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(want):
        if level == "#" and i == len(want) - 1:
            return True
        if i >= len(have) or (level != "+" and level != have[i]):
            return False
    return len(want) == len(have)


def has_wildcard(topic: str) -> bool:
    return "+" in topic.split("/") or "#" in topic.split("/")


@dataclass(eq=False)
class _Subscription:
    component: str
    topic_filter: str
    others_only: bool
    deliver: Deliver


class LocalBus:
    def __init__(self) -> None:
        self._subs: list[_Subscription] = []

    def subscribe(self, component: str, topic_filter: str, receive_mode: str | None, deliver: Deliver) -> Callable[[], None]:
        """Add a subscription; returns the function that removes it."""
        if receive_mode is None:
            receive_mode = "RECEIVE_MESSAGES_FROM_OTHERS" if has_wildcard(topic_filter) else "RECEIVE_ALL_MESSAGES"
        sub = _Subscription(component, topic_filter, receive_mode == "RECEIVE_MESSAGES_FROM_OTHERS", deliver)
        self._subs.append(sub)

        def remove() -> None:
            if sub in self._subs:
                self._subs.remove(sub)

        return remove

    def publish(self, component: str, topic: str, message: dict[str, Any]) -> int:
        """Deliver ``message`` (a ``SubscriptionResponseMessage``) to every matching subscriber; returns how many."""
        count = 0
        for sub in list(self._subs):
            if sub.others_only and sub.component == component:
                continue
            if topic_matches(sub.topic_filter, topic):
                sub.deliver(message)
                count += 1
        return count

    def __len__(self) -> int:
        return len(self._subs)
