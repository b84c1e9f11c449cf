"""SQLAlchemy models: the data, and nothing that imports services or routers."""

from app.models.base import Base, Draft, utcnow
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
    ConversationDraft,
    ConversationRead,
    DeliveryJob,
    DeliveryJobDraft,
    IdempotencyRecord,
    Message,
    MessageDraft,
    OptOut,
    UnroutedMessage,
)

__all__ = [
    "ApiToken",
    "AuditEntry",
    "Base",
    "Conversation",
    "ConversationDraft",
    "ConversationRead",
    "DeliveryJob",
    "DeliveryJobDraft",
    "Draft",
    "Extension",
    "Group",
    "GroupMember",
    "IdempotencyRecord",
    "Message",
    "MessageDraft",
    "OptOut",
    "Organization",
    "PhoneNumber",
    "UnroutedMessage",
    "User",
    "utcnow",
]
