"""HTTP routers: one module per resource, HTTP in and HTTP out, nothing else."""

from fastapi import APIRouter

from app.routers import (
    contacts,
    conversations,
    docs,
    events,
    groups,
    health,
    me,
    messages,
    operator,
    organization,
    phone_numbers,
    routing,
    users,
)

# Routes are matched in this order: the busiest first (conversation reads, sends), so
# most requests stop looking early; the carrier webhooks, busier still, are matched
# before all of them (`main`: served lean, documented as webhooks). The docs group them
# by tag regardless.
ALL_ROUTERS: list[APIRouter] = [
    conversations.router,
    messages.router,
    contacts.router,
    health.router,
    operator.router,
    organization.router,
    users.router,
    groups.router,
    phone_numbers.router,
    routing.router,
    me.router,
    events.router,
    docs.router,
]
