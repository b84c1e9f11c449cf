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
    organization,
    phone_numbers,
    routing,
    users,
    webhooks,
)

# Routes are matched in this order: the busiest first (carrier webhooks, conversation
# reads, sends), so most requests stop looking early. The docs group them by tag
# regardless.
ALL_ROUTERS: list[APIRouter] = [
    webhooks.router,
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
]
