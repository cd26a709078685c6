"""The web channel: a WebSocket gateway onto the chat service, and the browser widget.

``web:`` in the config (off by default) serves, on its own listen address, the
WebSocket endpoint ``/ws`` (``ConverseRequest`` / ``ConverseResponse`` frames in
the proto3 JSON mapping, or binary protobuf with the ``talkwire.v1.proto``
subprotocol), the widget ``/widget.js`` and a demo page at ``/``. Every socket
is served by :meth:`talkwire.server.chat.ChatService.serve`, the same session
code path as gRPC ``Converse``.
"""

from talkwire.server.web.app import WebGateway
from talkwire.server.web.closecodes import close_code
from talkwire.server.web.settings import WebSettings

__all__ = ["WebGateway", "WebSettings", "close_code"]
