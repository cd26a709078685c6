"""Held-out phrases for the demo bot's matcher accuracy test (none is a bot.yaml example)."""

HELDOUT: list[tuple[str, str]] = [
    # balance
    ("how much is left on my account", "balance"),
    ("could you tell me how much I currently owe", "balance"),
    ("what is the amount due on my account", "balance"),
    ("do I have any money on my account", "balance"),
    ("current account balance?", "balance"),
    ("how much credit remains", "balance"),
    ("balance check please", "balance"),
    # order status
    ("where's order 1001", "order_status"),
    ("I'd like to track order 1002", "order_status"),
    ("has order 2001 shipped", "order_status"),
    ("when is my package arriving", "order_status"),
    ("what's the eta on my order", "order_status"),
    ("is my parcel on its way", "order_status"),
    ("can you check the delivery of my order 1001", "order_status"),
    ("status for order number 55", "order_status"),
    # list orders
    ("show me everything I have ordered", "list_orders"),
    ("I want to see the orders I placed", "list_orders"),
    ("list all of my purchases", "list_orders"),
    ("what orders do I have with you", "list_orders"),
    ("give me my order list", "list_orders"),
    ("what have I bought so far", "list_orders"),
    ("orders history", "list_orders"),
    # open ticket
    ("open a ticket: printer broken", "open_ticket"),
    ("my printer is not working", "open_ticket"),
    ("I'd like to file a support ticket", "open_ticket"),
    ("please create a ticket for me", "open_ticket"),
    ("I want to report an issue with my laptop", "open_ticket"),
    ("the product I received is broken", "open_ticket"),
    ("raise a support case", "open_ticket"),
    ("I need to complain about a problem", "open_ticket"),
    # ticket status
    ("any news about ticket 9", "ticket_status"),
    ("what's the status of my support case", "ticket_status"),
    ("has ticket 4 been resolved", "ticket_status"),
    ("update on my ticket please", "ticket_status"),
    ("is ticket 12 still open", "ticket_status"),
    ("check the progress of my complaint", "ticket_status"),
    # help
    ("what can this bot do", "help"),
    ("what are you able to help me with", "help"),
    ("show me the options", "help"),
    ("how do I use this", "help"),
    ("I need help", "help"),
    # greet / thanks
    ("hello there", "greet"),
    ("hey", "greet"),
    ("good afternoon", "greet"),
    ("thank you very much", "thanks"),
    ("many thanks", "thanks"),
    ("thanks for your help", "thanks"),
]

# Phrases that belong to no intent: the matcher must not be confident about them.
OUT_OF_SCOPE: list[str] = [
    "blah blah xyz",
    "what is the capital of France",
    "sing me a song",
    "asdf qwer",
]
