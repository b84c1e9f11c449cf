"""Operator endpoints: organizations and their first admin."""

from __future__ import annotations

from fastapi import APIRouter, status

from app.deps import Operator, SessionDep
from app.schemas.directory import OrganizationCreate, OrganizationCreated, UserRef
from app.services import organizations

router = APIRouter(prefix="/v1", tags=["operator"])


@router.post(
    "/organizations", status_code=status.HTTP_201_CREATED, response_model=OrganizationCreated
)
async def create_organization(
    body: OrganizationCreate, session: SessionDep, actor: Operator
) -> OrganizationCreated:
    """Create an organization with its first admin; the admin's token is shown once."""
    created = await organizations.create_organization(
        session, name=body.name, admin_username=body.admin_username, actor=actor
    )
    return OrganizationCreated(
        id=created.org.id,
        name=created.org.name,
        admin=UserRef(id=created.admin.id, username=created.admin.username),
        admin_token=created.admin_token,
    )
