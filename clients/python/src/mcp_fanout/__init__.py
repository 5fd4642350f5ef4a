"""mcp-fanout adapters for the official MCP Python SDK 2.x: `FanoutSubscriptionBus`, a
`SubscriptionBus` that fans `subscriptions/listen` events out across server replicas."""

from mcp_fanout.bus import FanoutSubscriptionBus, PublishError, event_to_message

__all__ = ["FanoutSubscriptionBus", "PublishError", "event_to_message"]
