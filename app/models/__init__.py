"""SQLAlchemy models: the data, and nothing that imports services or routers."""

from app.models.base import Base, utcnow
from app.models.contacts import Contact, ContactSearchTerm
from app.models.directory import (
    ApiToken,
    AuditEntry,
    Extension,
    Group,
    GroupMember,
    Organization,
    PhoneNumber,
    User,
)
from app.models.messaging import (
    Conversation,
    ConversationRead,
    DeliveryJob,
    IdempotencyRecord,
    Message,
    OptOut,
    UnroutedMessage,
)

__all__ = [
    "ApiToken",
    "AuditEntry",
    "Base",
    "Contact",
    "ContactSearchTerm",
    "Conversation",
    "ConversationRead",
    "DeliveryJob",
    "Extension",
    "Group",
    "GroupMember",
    "IdempotencyRecord",
    "Message",
    "OptOut",
    "Organization",
    "PhoneNumber",
    "UnroutedMessage",
    "User",
    "utcnow",
]
