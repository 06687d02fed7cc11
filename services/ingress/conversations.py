"""OpenAI's Conversations API (/v1/conversations): a conversation kept on the server, its items in order, which a
Responses API request names with ``conversation`` to read it first and add its input and output to it. OpenAI's
Agents SDK keeps its sessions there (OpenAIConversationsSession).

Items are those the Responses API reads as input (messages, function calls, their outputs, reasoning), kept in the
shape GET lists them (responses.stored_item). Kept only for a tenant that keeps text, each item for its
retention_days (adapters.ConversationStore); the handlers check."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.ingress.protocol import STRICT_INPUT
from services.ingress.responses import InputItem, ItemReference

MAX_ITEMS_PER_CALL = 20
"""OpenAI's limit on the items one call adds."""


class NewConversation(BaseModel):
    model_config = STRICT_INPUT | ConfigDict(extra="ignore")

    items: list[InputItem] | None = Field(
        None, max_length=MAX_ITEMS_PER_CALL, description="Its first items (messages, calls, their outputs)."
    )
    metadata: dict[str, str] | None = Field(None, max_length=16, description="Up to 16 keys, returned with it.")


class ConversationUpdate(BaseModel):
    model_config = STRICT_INPUT | ConfigDict(extra="ignore")

    metadata: dict[str, str] | None = Field(max_length=16, description="Replaces its metadata (null: none).")


class NewItems(BaseModel):
    model_config = STRICT_INPUT | ConfigDict(extra="ignore")

    items: list[InputItem] = Field(min_length=1, max_length=MAX_ITEMS_PER_CALL, description="Appended in order.")


class ConversationObject(BaseModel):
    """A conversation, as OpenAI's API gives it (its items are listed apart)."""

    id: str
    object: Literal["conversation"]
    created_at: int
    metadata: dict[str, str]


class ConversationDeleted(BaseModel):
    id: str
    object: Literal["conversation.deleted"]
    deleted: bool


def conversation_object(conversation_id: str, created_at: datetime, metadata: dict[str, str]) -> dict[str, Any]:
    return {
        "id": conversation_id,
        "object": "conversation",
        "created_at": int(created_at.timestamp()),
        "metadata": metadata,
    }


def reference_in(items: list[Any] | None) -> int | None:
    """The position of the first item_reference among items to add (a conversation keeps items, not pointers)."""
    return next((k for k, item in enumerate(items or []) if isinstance(item, ItemReference)), None)
