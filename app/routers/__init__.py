"""HTTP routers: one module per resource, HTTP in and HTTP out, nothing else."""

from fastapi import APIRouter

from app.routers import (
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

ALL_ROUTERS: list[APIRouter] = [
    health.router,
    operator.router,
    users.router,
    groups.router,
    phone_numbers.router,
    routing.router,
    me.router,
    messages.router,
    conversations.router,
    events.router,
    webhooks.router,
]
