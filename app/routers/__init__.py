"""HTTP routers: one module per resource, HTTP in and HTTP out, nothing else."""

from fastapi import APIRouter

from app.routers import (
    contacts,
    conversations,
    events,
    groups,
    health,
    me,
    messages,
    operator,
    phone_numbers,
    routing,
    users,
    webhooks,
)

# Routes are matched in this order: the busiest first (carrier webhooks, conversation
# reads), so most requests stop looking early. The docs group them by tag regardless.
ALL_ROUTERS: list[APIRouter] = [
    webhooks.router,
    conversations.router,
    contacts.router,
    health.router,
    operator.router,
    users.router,
    groups.router,
    phone_numbers.router,
    routing.router,
    me.router,
    messages.router,
    events.router,
]
